"""Sessions that get in the schema revert's way, and lock waits measured by PostgreSQL itself.

Live traffic must never wait behind the revert's lock request for longer than lock_timeout. The wait
is measured by PostgreSQL, not by the test's clock: with `log_lock_waits` on, a backend that waited
longer than `deadlock_timeout` logs, when it finally gets the lock, "process <pid> acquired <mode> on
<object> after <ms> ms", the time from the start of its wait (rehearsal.lockwaits reads it, for the
drills too). That duration does not include the test process's scheduling, so the margin only covers
PostgreSQL cancelling the timed-out request and waking the next waiter.
"""

from __future__ import annotations

import multiprocessing
import secrets
import threading
import time

import psycopg2

from rehearsal.lockwaits import LOCK_WAIT_MARGIN, SETTINGS, LockWaitLog

__all__ = [
    "LOCK_WAIT_MARGIN",
    "Blocker",
    "LockWaitLog",
    "Reader",
    "log_lock_waits",
    "module_sessions",
    "two_racing_runs",
    "wait_for",
]


def log_lock_waits(cluster, dbname: str) -> None:
    """Every session of `dbname` logs its long lock waits (rehearsal.lockwaits: deadlock_timeout 20 ms)."""
    for name in ("log_lock_waits", "deadlock_timeout"):
        cluster.execute(f"ALTER DATABASE \"{dbname}\" SET {name} = '{SETTINGS[name]}'")


class Blocker:
    """A session that holds ACCESS SHARE on `table` in an open transaction (a long report, say).

    Its last query names a customer (a canary): the report of who blocks must never carry it
    unless report_query_text asks for it.
    """

    def __init__(self, dsn: str, table: str = "documents"):
        self.canary = f"customer-{secrets.token_hex(8)}@example.com"
        self.conn = psycopg2.connect(dsn, application_name="nightly-report")
        with self.conn.cursor() as cur:
            cur.execute("SELECT pg_backend_pid(), current_user")
            self.pid, self.role = cur.fetchone()
            query = f"SELECT count(*) FROM {table} WHERE %s IS NOT NULL /* nightly report */"  # noqa: S608 - test constant
            cur.execute(query, (self.canary,))

    def release(self) -> None:
        self.conn.rollback()
        self.conn.close()


class Reader(threading.Thread):
    """Live traffic: reads `table` in a loop, from its own backend (`pid`)."""

    def __init__(self, dsn: str, table: str = "documents"):
        super().__init__(daemon=True)
        self.conn = psycopg2.connect(dsn, application_name="live-traffic")
        self.conn.autocommit = True
        self.table = table
        self.reads = 0
        self.stop = threading.Event()
        with self.conn.cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            self.pid = cur.fetchone()[0]

    def run(self) -> None:
        with self.conn.cursor() as cur:
            cur.execute("SET statement_timeout = '30s'")
            while not self.stop.is_set():
                cur.execute(f"SELECT count(*) FROM {self.table}")  # noqa: S608 - test constant
                cur.fetchone()
                self.reads += 1
                self.stop.wait(0.02)
        self.conn.close()


def wait_for(condition, what: str, timeout: float = 120.0, interval: float = 0.05):
    """Poll `condition()` until it returns something true (a test's synchronisation, not a timing bound)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"gave up waiting for {what}")


def module_sessions(db, waiting_on: str | None = None) -> list[tuple]:
    """(pid, wait_event_type, locktype) of the revert's sessions (application_name emergency-rollback)."""
    rows = db.query(
        """SELECT a.pid, a.wait_event_type, l.locktype FROM pg_stat_activity a
           LEFT JOIN pg_locks l ON l.pid = a.pid AND NOT l.granted
           WHERE a.datname = current_database() AND a.application_name = 'emergency-rollback'"""
    )
    if waiting_on is None:
        return rows
    return [r for r in rows if r[1] == "Lock" and r[2] == waiting_on]


def two_racing_runs(db, target, blocker: Blocker) -> list[dict]:
    """`target(dsn, queue)` twice, each in its own process, while `blocker` holds the table the change needs.

    Once PostgreSQL shows one of them waiting for the runbook's advisory lock (the other holds it), the
    blocker lets go; returns both results. (Forked from pytest's own process, which has no threads.)
    """
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    workers = [context.Process(target=target, args=(db.dsn, queue)) for _ in range(2)]
    for worker in workers:
        worker.start()
    wait_for(lambda: module_sessions(db, waiting_on="advisory"), "a run waiting on the advisory lock")
    blocker.release()
    results = [queue.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(timeout=30)
    return results
