"""Locks: a blocked downgrade never queues live traffic for longer than lock_timeout, gives up after
its bounded attempts naming the blocker; concurrent rollbacks serialize on the advisory lock.

No wall-clock bound of the test's own: the one timing promise (live queries never wait longer than
lock_timeout) is measured by PostgreSQL (log_lock_waits, see locking.py); everything else is counted
(attempts, outcomes) or synchronised on what pg_stat_activity and pg_locks show.
"""

import json
import re
import threading

import psycopg2
import pytest
from ansible.module_utils.pg_session import ADVISORY_LOCK_KEY

from tests.fixtures.schema import HEAD, LEGACY, revert
from tests.integration.locking import (
    LOCK_WAIT_MARGIN,
    Blocker,
    LockWaitLog,
    Reader,
    log_lock_waits,
    module_sessions,
    two_racing_runs,
    wait_for,
)

pytestmark = pytest.mark.integration

LOCK_TIMEOUT = 1.0
ATTEMPTS = 3
BACKOFF, BACKOFF_MAX = 0.3, 1.0


def test_a_blocked_downgrade_gives_up_naming_the_blocker_and_never_queues_traffic_long(app_db, pg_cluster):
    log_lock_waits(pg_cluster, app_db.name)
    before = app_db.fingerprint()
    blocker = Blocker(app_db.dsn)
    reader = Reader(app_db.dsn)
    waits = LockWaitLog(pg_cluster)
    reader.start()
    try:
        result = revert(
            app_db,
            lock_timeout=LOCK_TIMEOUT,
            lock_attempts=ATTEMPTS,
            lock_backoff=BACKOFF,
            lock_backoff_max=BACKOFF_MAX,
        )
    finally:
        reader.stop.set()
        reader.join(timeout=30)
        blocker.release()

    assert result["failed"] and result["changed"] is False, result["msg"]
    assert result["attempts"] == ATTEMPTS, result["msg"]
    assert [a["outcome"] for a in result["attempt_log"]] == ["lock_timeout"] * ATTEMPTS
    assert result["lock_wait_seconds"] >= ATTEMPTS * LOCK_TIMEOUT
    # The message names the blocking session: pid, state and age, role, application; never its query.
    message = result["msg"]
    assert "\n" not in message
    assert message.startswith(
        f"Cannot revert {HEAD} -> {LEGACY}: every one of {ATTEMPTS} attempt(s) timed out after lock_timeout "
        f"{LOCK_TIMEOUT:g} s waiting for a table lock, and each was rolled back (the database is unchanged). Blocking: "
    )
    assert message.endswith(". End or wait for those sessions, then run again.")
    assert f"pid {blocker.pid} (idle in transaction for " in message
    assert "application_name 'nightly-report'" in message
    assert f"role {blocker.role}, " in message
    [session] = result["blocking_sessions"]
    assert set(session) == {"pid", "role", "application_name", "state", "age_seconds"}
    assert (session["pid"], session["state"]) == (blocker.pid, "idle in transaction")
    assert session["age_seconds"] >= LOCK_TIMEOUT
    assert blocker.canary not in json.dumps(result), "a blocking session's query text reached the result"
    assert "nightly report" not in json.dumps(result)
    # Live traffic queued behind the downgrade's lock request (PostgreSQL logged its waits), and
    # never for longer than lock_timeout: each wait as PostgreSQL measured it.
    reader_waits = waits.waits(reader.pid)
    assert reader_waits, "the reader never queued behind the downgrade: the test proves nothing"
    assert max(reader_waits) <= LOCK_TIMEOUT + LOCK_WAIT_MARGIN, reader_waits
    # Nothing changed, nothing archived; once the blocker is gone the same call succeeds.
    assert app_db.fingerprint() == before and app_db.revision() == HEAD
    assert "rollback_archive" not in app_db.schemas()
    again = revert(app_db, lock_timeout=LOCK_TIMEOUT)
    assert again["changed"] and again["attempts"] == 1 and app_db.revision() == LEGACY


def _release_after_one_timed_out_attempt(db, blocker: Blocker) -> threading.Thread:
    """Release the blocker once PostgreSQL shows the revert waited on it and stopped waiting (timed out)."""

    def run() -> None:
        wait_for(lambda: module_sessions(db, waiting_on="relation"), "the revert to wait for the table lock")
        wait_for(lambda: not module_sessions(db, waiting_on="relation"), "the first attempt to time out")
        blocker.release()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_a_blocker_that_lets_go_between_attempts_is_waited_out(app_db):
    blocker = Blocker(app_db.dsn)
    releaser = _release_after_one_timed_out_attempt(app_db, blocker)
    result = revert(app_db, lock_timeout=LOCK_TIMEOUT, lock_attempts=5, lock_backoff=BACKOFF)
    releaser.join(timeout=30)
    assert not result["failed"], result["msg"]
    assert result["changed"] and result["attempts"] >= 2
    assert result["attempt_log"][0]["outcome"] == "lock_timeout"
    assert result["attempt_log"][-1]["outcome"] == "committed"
    assert result["attempt_log"][0]["blocking_sessions"][0]["pid"] == blocker.pid
    assert blocker.canary not in json.dumps(result)
    assert app_db.revision() == LEGACY and result["archive"]["rows"] == 60


def test_the_query_text_is_reported_only_on_explicit_opt_in(app_db):
    blocker = Blocker(app_db.dsn)
    try:
        result = revert(app_db, lock_timeout=0.5, lock_attempts=1, report_query_text=True)
    finally:
        blocker.release()
    assert result["failed"] and app_db.revision() == HEAD
    [session] = result["blocking_sessions"]
    assert blocker.canary in session["query"] and "nightly report" in session["query"]
    assert blocker.canary in result["msg"]


def _revert_in_process(dsn: str, queue) -> None:
    queue.put(revert(None, dsn=dsn, lock_timeout=2, lock_attempts=30, lock_backoff=0.2, lock_backoff_max=0.5))


def test_two_concurrent_rollbacks_end_with_one_change(app_db):
    """Both start while a reader blocks the downgrade: one waits on the advisory lock, then has nothing to do."""
    results = two_racing_runs(app_db, _revert_in_process, Blocker(app_db.dsn))
    assert not any(r["failed"] for r in results), [r["msg"] for r in results]
    assert sorted(r["changed"] for r in results) == [False, True]
    waited = next(r for r in results if not r["changed"])
    assert waited["advisory_lock_wait_seconds"] > 0 and waited["from_revision"] == LEGACY
    assert app_db.revision() == LEGACY and app_db.fingerprint() == app_db.legacy_fingerprint
    assert app_db.query("SELECT count(DISTINCT run_id), count(*) FROM rollback_archive.manifest") == [(1, 2)]


def test_the_advisory_lock_wait_is_bounded_and_names_the_holder(app_db):
    holder = psycopg2.connect(app_db.dsn, application_name="other-rollback")
    try:
        with holder.cursor() as cur:
            cur.execute("SELECT pg_backend_pid(), pg_advisory_lock(%s)", (ADVISORY_LOCK_KEY,))
            pid = cur.fetchone()[0]
        holder.commit()
        result = revert(app_db, advisory_lock_wait=1)
        assert result["failed"] and result["changed"] is False
        # It gave up after waiting advisory_lock_wait (PostgreSQL's lock_timeout ended the wait).
        assert float(re.search(r"waited ([0-9.]+) s \(advisory_lock_wait 1 s\)", result["msg"]).group(1)) >= 1.0
        assert f"pid {pid} (idle for " in result["msg"] and "application_name 'other-rollback')" in result["msg"]
        assert ", role " in result["msg"]
        assert result["attempts"] == 0 and app_db.revision() == HEAD
        # Check mode takes no advisory lock: the plan is still available.
        assert revert(app_db, check_mode=True)["changed"] is True
    finally:
        holder.close()


@pytest.mark.parametrize("wait", [0])
def test_advisory_lock_wait_zero_tries_once(app_db, wait):
    holder = psycopg2.connect(app_db.dsn)
    try:
        with holder.cursor() as cur:
            cur.execute("SELECT pg_advisory_lock(%s)", (ADVISORY_LOCK_KEY,))
        holder.commit()
        result = revert(app_db, advisory_lock_wait=wait)
        assert result["failed"] and "advisory lock" in result["msg"]
    finally:
        holder.close()
    assert revert(app_db, advisory_lock_wait=wait)["changed"] is True


def test_the_module_sessions_carry_an_application_name(app_db):
    seen = []
    blocker = Blocker(app_db.dsn)

    def look() -> None:
        seen.extend(wait_for(lambda: module_sessions(app_db, waiting_on="relation"), "the revert's session"))
        blocker.release()

    watcher = threading.Thread(target=look, daemon=True)
    watcher.start()
    result = revert(app_db, lock_timeout=2, lock_attempts=30, lock_backoff=0.2, lock_backoff_max=0.5)
    watcher.join(timeout=30)
    assert not result["failed"], result["msg"]
    assert seen, "PostgreSQL never showed a session named emergency-rollback"
