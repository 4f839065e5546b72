"""Locks: a blocked downgrade never queues live traffic for longer than lock_timeout, gives up after
its bounded attempts naming the blocker; concurrent rollbacks serialize on the advisory lock.

Durations are asserted only against bounds the behaviour itself sets (timeouts, attempts, backoff),
with generous slack: this machine is shared and noisy.
"""

import multiprocessing
import threading
import time

import psycopg2
import pytest
from ansible.module_utils.pg_session import ADVISORY_LOCK_KEY

from tests.fixtures.schema import HEAD, LEGACY, revert

pytestmark = pytest.mark.integration

LOCK_TIMEOUT = 1.0
ATTEMPTS = 3
BACKOFF, BACKOFF_MAX = 0.3, 1.0
SLACK = 3.0  # scheduling noise on a shared 2-core machine


class Blocker:
    """A session that holds ACCESS SHARE on `documents` in an open transaction (a long report, say)."""

    def __init__(self, dsn: str):
        self.conn = psycopg2.connect(dsn, application_name="nightly-report")
        with self.conn.cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            self.pid = cur.fetchone()[0]
            cur.execute("SELECT count(*) FROM documents /* nightly report */")

    def release(self) -> None:
        self.conn.rollback()
        self.conn.close()


class Reader(threading.Thread):
    """Live traffic: reads `documents` in a loop and records how long each read waited."""

    def __init__(self, dsn: str):
        super().__init__(daemon=True)
        self.conn = psycopg2.connect(dsn, application_name="live-traffic")
        self.conn.autocommit = True
        self.latencies: list[float] = []
        self.stop = threading.Event()

    def run(self) -> None:
        with self.conn.cursor() as cur:
            cur.execute("SET statement_timeout = '30s'")
            while not self.stop.is_set():
                started = time.monotonic()
                cur.execute("SELECT count(*) FROM documents")
                cur.fetchone()
                self.latencies.append(time.monotonic() - started)
                time.sleep(0.02)
        self.conn.close()


def test_a_blocked_downgrade_gives_up_naming_the_blocker_and_never_queues_traffic_long(app_db):
    before = app_db.fingerprint()
    blocker = Blocker(app_db.dsn)
    reader = Reader(app_db.dsn)
    reader.start()
    try:
        started = time.monotonic()
        result = revert(
            app_db,
            lock_timeout=LOCK_TIMEOUT,
            lock_attempts=ATTEMPTS,
            lock_backoff=BACKOFF,
            lock_backoff_max=BACKOFF_MAX,
        )
        elapsed = time.monotonic() - started
    finally:
        reader.stop.set()
        reader.join(timeout=30)
        blocker.release()

    assert result["failed"] and result["changed"] is False
    assert result["attempts"] == ATTEMPTS
    assert [a["outcome"] for a in result["attempt_log"]] == ["lock_timeout"] * ATTEMPTS
    # It waited lock_timeout per attempt plus the backoffs between them, and not much more.
    most_backoff = sum(min(BACKOFF_MAX, BACKOFF * 2**n) * 1.2 for n in range(ATTEMPTS - 1))
    assert ATTEMPTS * LOCK_TIMEOUT <= elapsed <= ATTEMPTS * LOCK_TIMEOUT + most_backoff + SLACK
    assert result["lock_wait_seconds"] >= ATTEMPTS * LOCK_TIMEOUT
    # The message names the blocking session: pid, state, application, query start, its query.
    message = result["msg"]
    assert "\n" not in message
    assert f"pid {blocker.pid} (idle in transaction" in message
    assert "application_name 'nightly-report'" in message
    assert "SELECT count(*) FROM documents /* nightly report */" in message
    assert "query since 20" in message
    assert [s["pid"] for s in result["blocking_sessions"]] == [blocker.pid]
    # Live traffic queued behind the downgrade's lock request, but never longer than lock_timeout.
    assert reader.latencies, "the reader never ran"
    assert max(reader.latencies) > LOCK_TIMEOUT / 2, "the reader was never queued: the test proves nothing"
    assert max(reader.latencies) < LOCK_TIMEOUT + 1.0
    # Nothing changed, nothing archived; once the blocker is gone the same call succeeds.
    assert app_db.fingerprint() == before and app_db.revision() == HEAD
    assert "rollback_archive" not in app_db.schemas()
    again = revert(app_db, lock_timeout=LOCK_TIMEOUT)
    assert again["changed"] and again["attempts"] == 1 and app_db.revision() == LEGACY


def test_a_blocker_that_lets_go_between_attempts_is_waited_out(app_db):
    blocker = Blocker(app_db.dsn)
    threading.Timer(LOCK_TIMEOUT * 1.5, blocker.release).start()
    result = revert(app_db, lock_timeout=LOCK_TIMEOUT, lock_attempts=5, lock_backoff=BACKOFF)
    assert not result["failed"], result["msg"]
    assert result["changed"] and result["attempts"] >= 2
    assert result["attempt_log"][0]["outcome"] == "lock_timeout"
    assert result["attempt_log"][-1]["outcome"] == "committed"
    assert result["attempt_log"][0]["blocking_sessions"][0]["pid"] == blocker.pid
    assert app_db.revision() == LEGACY and result["archive"]["rows"] == 60


def _revert_in_process(dsn: str, queue) -> None:
    queue.put(revert(None, dsn=dsn, lock_timeout=2, lock_attempts=5, lock_backoff=0.2))


def test_two_concurrent_rollbacks_end_with_one_change(app_db):
    """Both start while a reader blocks the downgrade: one waits on the advisory lock, then has nothing to do."""
    blocker = Blocker(app_db.dsn)
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    workers = [context.Process(target=_revert_in_process, args=(app_db.dsn, queue)) for _ in range(2)]
    for worker in workers:
        worker.start()
    time.sleep(1.0)
    blocker.release()
    results = [queue.get(timeout=60) for _ in workers]
    for worker in workers:
        worker.join(timeout=30)
    assert not any(r["failed"] for r in results), [r["msg"] for r in results]
    assert sorted(r["changed"] for r in results) == [False, True]
    waited = next(r for r in results if not r["changed"])
    assert waited["advisory_lock_wait_seconds"] > 0.5 and waited["from_revision"] == LEGACY
    assert app_db.revision() == LEGACY and app_db.fingerprint() == app_db.legacy_fingerprint
    assert app_db.query("SELECT count(DISTINCT run_id), count(*) FROM rollback_archive.manifest") == [(1, 2)]


def test_the_advisory_lock_wait_is_bounded_and_names_the_holder(app_db):
    holder = psycopg2.connect(app_db.dsn, application_name="other-rollback")
    try:
        with holder.cursor() as cur:
            cur.execute("SELECT pg_backend_pid(), pg_advisory_lock(%s)", (ADVISORY_LOCK_KEY,))
            pid = cur.fetchone()[0]
        holder.commit()
        started = time.monotonic()
        result = revert(app_db, advisory_lock_wait=1)
        elapsed = time.monotonic() - started
        assert result["failed"] and result["changed"] is False
        assert 1.0 <= elapsed <= 1.0 + SLACK
        assert f"pid {pid} (application_name 'other-rollback'" in result["msg"]
        assert "connected since 20" in result["msg"]
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
        seen.extend(
            app_db.query(
                "SELECT application_name FROM pg_stat_activity WHERE datname = current_database() "
                "AND application_name LIKE 'emergency-rollback%%'"
            )
        )
        blocker.release()

    threading.Timer(0.7, look).start()
    result = revert(app_db, lock_timeout=2, lock_attempts=2)
    assert not result["failed"], result["msg"]
    assert ("emergency-rollback",) in seen
