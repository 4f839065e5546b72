"""rehearsal.lockwaits reads PostgreSQL's own measure of lock waits out of the server log.

The lines below are PostgreSQL 16's, copied from the rehearsal stack's log during the lock-contention
drill (log_line_prefix of rehearsal.lockwaits.SETTINGS), and one from a test cluster without `app=`.
The integration tests (tests/integration/test_schema_locks.py) and the drill read a live server's log.
"""

from __future__ import annotations

from rehearsal.lockwaits import SETTINGS, LockWait, LockWaitLog, parse

PREFIX = "2026-11-29 21:01:54.597 UTC"
LOG = f"""\
{PREFIX} [3480] migrator@transformation app=emergency-rollback LOG:  process 3480 still waiting for \
AccessExclusiveLock on relation 16399 of database 16389 after 20.154 ms
{PREFIX} [3480] migrator@transformation app=emergency-rollback DETAIL:  Process holding the lock: 3243. \
Wait queue: 3480.
{PREFIX} [3480] migrator@transformation app=emergency-rollback STATEMENT:  LOCK TABLE "public"."documents" \
IN ACCESS EXCLUSIVE MODE
{PREFIX} [2323] app_rw@transformation app=transformation-engine LOG:  process 2323 still waiting for \
RowExclusiveLock on relation 16399 of database 16389 after 20.334 ms at character 13
{PREFIX} [2323] app_rw@transformation app=transformation-engine DETAIL:  Process holding the lock: 3243. \
Wait queue: 3480, 2323.
{PREFIX} [3480] migrator@transformation app=emergency-rollback ERROR:  canceling statement due to lock timeout
{PREFIX} [2323] app_rw@transformation app=transformation-engine LOG:  process 2323 acquired RowExclusiveLock \
on relation 16399 of database 16389 after 972.679 ms at character 13
{PREFIX} [2323] app_rw@transformation app=transformation-engine LOG:  process 2323 still waiting for \
RowExclusiveLock on relation 16399 of database 16389 after 20.071 ms at character 13
{PREFIX} [2323] app_rw@transformation app=transformation-engine DETAIL:  Processes holding the lock: 3243, 3250. \
Wait queue: 3481, 2323.
{PREFIX} [777] postgres@t_1 LOG:  process 777 acquired AccessShareLock on relation 1 of database 2 after 512.000 ms
"""


def test_each_wait_is_read_with_who_waited_how_long_and_behind_whom():
    assert parse(LOG) == [
        LockWait(
            3480,
            "emergency-rollback",
            "AccessExclusiveLock",
            "relation 16399 of database 16389",
            still_waiting_ms=20.154,
            holders=[3243],
            wait_queue=[3480],
        ),
        LockWait(
            2323,
            "transformation-engine",
            "RowExclusiveLock",
            "relation 16399 of database 16389",
            still_waiting_ms=20.334,
            acquired_ms=972.679,
            holders=[3243],
            wait_queue=[3480, 2323],
        ),
        # A second wait of the same backend, not yet over (or cancelled): no acquired_ms.
        LockWait(
            2323,
            "transformation-engine",
            "RowExclusiveLock",
            "relation 16399 of database 16389",
            still_waiting_ms=20.071,
            holders=[3243, 3250],
            wait_queue=[3481, 2323],
        ),
        # Its "still waiting" line fell before the part read: the wait is still measured.
        LockWait(777, None, "AccessShareLock", "relation 1 of database 2", acquired_ms=512.0),
    ]


def test_the_log_is_read_from_where_it_stood(tmp_path):
    class Cluster:
        logfile = tmp_path / "postgres.log"

    Cluster.logfile.write_text(LOG)
    waits = LockWaitLog(Cluster)
    assert waits.read() == [] and waits.waits(2323) == []
    with Cluster.logfile.open("a") as log:
        log.write(LOG)
    assert waits.waits(2323) == [0.972679] and waits.waits(777) == [0.512]
    assert len(waits.read()) == 4


def test_the_prefix_names_the_application():
    assert SETTINGS["log_line_prefix"].endswith(" app=%a ") and SETTINGS["log_lock_waits"] == "on"
