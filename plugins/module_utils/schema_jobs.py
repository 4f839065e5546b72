# Copyright: contributors to the emergency-rollback runbook
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The guarded schema change of one database, the revert's and the upgrade's: one code path.

The revert (schema_revert.revert_with) and the way forward's upgrade (upgrade_runner.upgrade_database)
differ in what one attempt does; everything around it is here, written once:

- `guarded_job_defaults()`: the keys every job has (connection, timeouts, attempts, backoff);
- `guarded_result()` and `finish()`: the result every database starts from, and the one sentence an
  error becomes (redacted; `LockTimeoutExhausted` names its blocking sessions; an error's `details`
  become result keys);
- `locked_session()`: connect (application_name set), read the current revision and the backend pid,
  and, when applying, take the runbook's session advisory lock (waiting at most `advisory_lock_wait`)
  and read the revision again under it; the connection closes (releasing the lock) on the way out;
- `rolled_back_cursor()`: a cursor in a transaction with the job's SET LOCAL timeouts, rolled back;
- `attempts()`: BEGIN; SET LOCAL lock_timeout, statement_timeout; the caller's attempt; COMMIT, under
  a BlockerWatch. A lock timeout or deadlock rolls the attempt back, backs off (exponential, jittered,
  capped) and retries, at most `lock_attempts` times; on exhaustion LockTimeoutExhausted names the
  blocking sessions; any other error rolls back and becomes the caller's failure sentence;
- `run_databases()` and `lost_result()`: many databases in worker processes, a lost one reported.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable

from ansible.module_utils.pg_locks import BlockerWatch, acquire_advisory_lock, describe_sessions
from ansible.module_utils.pg_session import (
    APPLICATION_NAME,
    DEADLOCK_DETECTED,
    QUERY_CANCELED,
    RETRYABLE_CODES,
    first_line,
    pgcode_of,
    redact,
    resolve_dsn,
    set_local_timeouts,
    sqlalchemy_connection,
)
from ansible.module_utils.schema_errors import LockTimeoutExhausted, SchemaError
from ansible.module_utils.worker_pool import run_jobs

BASE = "base"
# The task options every guarded job takes as they are (the plugins' job options name them once).
GUARDED_OPTIONS = (
    "tool",
    "config_file",
    "script_location",
    "version_locations",
    "revision",
    "lock_timeout",
    "lock_attempts",
    "lock_backoff",
    "lock_backoff_max",
    "statement_timeout",
    "advisory_lock_wait",
    "application_name",
    "connect_timeout",
    "require_verified_tls",
)


def guarded_job_defaults() -> dict:
    """The keys of every guarded job, revert or upgrade, with their defaults (times in seconds)."""
    return {
        "name": None,  # how results and messages name the database
        "dsn": None,  # libpq URI; None: ROLLBACK_DB_DSN
        "tool": "alembic",  # alembic | efcore (the upgrade: alembic only)
        "config_file": None,  # alembic: alembic.ini or pyproject.toml ([tool.alembic])
        "script_location": "migrations",
        "version_locations": None,  # list of directories; None: <script_location>/versions
        "check_mode": False,
        "run_id": None,
        "lock_timeout": 2.0,
        "lock_attempts": 5,
        "lock_backoff": 0.5,
        "lock_backoff_max": 5.0,
        "statement_timeout": 60.0,
        "advisory_lock_wait": 30.0,
        "application_name": APPLICATION_NAME,
        "connect_timeout": 10,
        "require_verified_tls": False,  # a production-like environment: sslmode=verify-full or refuse
        "database_timeout": None,  # the watchdog's budget with many databases; None: database_budget()
    }


def revision_value(revisions) -> str | None:
    """Revisions as results and messages name them: sorted, comma-separated; None for none (base)."""
    return ",".join(sorted(revisions)) if revisions else None


def backoff_seconds(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Wait after failed attempt `attempt` (1-based): base * 2^(attempt-1), capped, jittered by +-20%."""
    delay = min(cap, base * 2 ** (attempt - 1))
    return delay * (rng or random).uniform(0.8, 1.2)


# -- one database's result -------------------------------------------------------------------------
def guarded_result(job: dict, **fields) -> dict:
    """The result a database starts from; `fields`: the change's own keys, with their starting values."""
    return {
        "name": job.get("name"),
        "changed": False,
        "failed": False,
        "msg": "",
        "check_mode": bool(job.get("check_mode")),
        "from_revision": None,
        "to_revision": None,
        "steps": [],
        "attempts": 0,
        "attempt_log": [],
        "lock_wait_seconds": 0.0,
        "advisory_lock_wait_seconds": 0.0,
        "duration_seconds": 0.0,
        "run_id": job.get("run_id"),
        "blocking_sessions": [],
        **fields,
    }


def finish(job: dict, result: dict, change: Callable[[str | None], None], verb: str, summary) -> dict:
    """Run `change(dsn)` (the DSN resolved) and complete `result`: never raises.

    A SchemaError becomes the result's one redacted sentence (its `details`, if any, result keys); any
    other error "Cannot <verb> the schema: unexpected ..."; a failure is never `changed`; without an
    error the message is `summary(result)`; seconds are rounded to milliseconds."""
    started = time.monotonic()
    dsn = job.get("dsn")
    try:
        dsn = resolve_dsn(dsn)
        change(dsn)
    except SchemaError as exc:
        result.update(failed=True, msg=redact(str(exc), dsn))
        if isinstance(exc, LockTimeoutExhausted):
            result["blocking_sessions"] = exc.blocking_sessions
        for key, value in getattr(exc, "details", {}).items():
            result[key] = value
    except Exception as exc:  # an unexpected error still becomes one clean, redacted sentence
        result.update(
            failed=True,
            msg=redact(f"Cannot {verb} the schema: unexpected {type(exc).__name__}: {first_line(exc)}", dsn),
        )
    if result["failed"]:
        result["changed"] = False
    result["msg"] = result["msg"] or summary(result)
    result["duration_seconds"] = round(time.monotonic() - started, 3)
    result["lock_wait_seconds"] = round(result["lock_wait_seconds"], 3)
    result["advisory_lock_wait_seconds"] = round(result["advisory_lock_wait_seconds"], 3)
    return result


# -- the session -----------------------------------------------------------------------------------
@contextlib.contextmanager
def locked_session(job: dict, result: dict, read_current: Callable):
    """(connection, backend pid, current revisions): see the module docstring. The advisory lock is
    taken only when applying; its wait is the result's `advisory_lock_wait_seconds` and the start of
    its `lock_wait_seconds`."""
    engine, conn = sqlalchemy_connection(
        job["dsn"], job["application_name"], int(job["connect_timeout"]), bool(job["require_verified_tls"])
    )
    raw = conn.connection.driver_connection
    try:
        with raw.cursor() as cur:
            current = read_current(cur)
            cur.execute("SELECT pg_backend_pid()")
            pid = cur.fetchone()[0]
        raw.rollback()
        if not job["check_mode"]:
            waited = acquire_advisory_lock(raw, float(job["advisory_lock_wait"]))
            result["advisory_lock_wait_seconds"] = result["lock_wait_seconds"] = waited
            with raw.cursor() as cur:
                current = read_current(cur)  # again, under the lock: a run we waited for may have done it
            raw.rollback()
        yield conn, pid, current
    finally:
        conn.close()  # also releases the session advisory lock
        engine.dispose()


@contextlib.contextmanager
def rolled_back_cursor(conn, job: dict):
    """A cursor in a transaction with the job's SET LOCAL timeouts, rolled back on the way out."""
    raw = conn.connection.driver_connection
    try:
        with raw.cursor() as cur:
            set_local_timeouts(cur, float(job["lock_timeout"]), float(job["statement_timeout"]))
            yield cur
    finally:
        raw.rollback()


# -- the attempts ----------------------------------------------------------------------------------
def failure_cause(exc: BaseException, code: str | None, job: dict, advice: str) -> str:
    """What made an attempt fail, for the caller's sentence: a SchemaError's own text, a statement
    timeout with `advice`, or the error's first line."""
    if isinstance(exc, SchemaError):
        return str(exc)
    if code == QUERY_CANCELED:
        return f"a statement ran longer than statement_timeout ({float(job['statement_timeout']):g} s); {advice}"
    return first_line(exc)


def attempts(job: dict, session: tuple, result: dict, attempt: Callable, *, change: str, unchanged: str, **failing):
    """`attempt()` in one transaction, retried on lock timeouts: see the module docstring; its value.

    `session`: (connection, backend pid). On exhaustion: "Cannot <change>: every one of ... rolled back
    (<unchanged>). Blocking: ...". `failing["failure"](exc, code)`: the SchemaError any other error
    becomes, except the error types in `failing["keep"]`, raised as they are. The result records every
    attempt (`attempt_log`), the seconds waited for locks and backoff (`lock_wait_seconds`),
    `attempts`, and on success `changed`."""
    conn, pid = session
    raw = conn.connection.driver_connection
    lock_timeout, count = float(job["lock_timeout"]), int(job["lock_attempts"])
    for number in range(1, count + 1):
        started = time.monotonic()
        result["attempts"] = number
        watch = BlockerWatch(
            job["dsn"],
            pid,
            delay=lock_timeout * 0.5,
            application_name=job["application_name"],
            include_query=bool(job.get("report_query_text")),
            require_verified_tls=bool(job["require_verified_tls"]),
        )
        try:
            with watch:
                trans = conn.begin()
                try:
                    with raw.cursor() as cur:
                        set_local_timeouts(cur, lock_timeout, float(job["statement_timeout"]))
                    value = attempt()
                    trans.commit()
                except BaseException:
                    with contextlib.suppress(Exception):
                        trans.rollback()
                    raise
        except Exception as exc:
            seconds = time.monotonic() - started
            code = pgcode_of(exc)
            if code not in RETRYABLE_CODES:
                result["attempt_log"].append({"attempt": number, "outcome": "failed", "seconds": round(seconds, 3)})
                if isinstance(exc, failing.get("keep", ())):
                    raise
                raise failing["failure"](exc, code) from None
            result["attempt_log"].append(
                {
                    "attempt": number,
                    "outcome": "deadlock" if code == DEADLOCK_DETECTED else "lock_timeout",
                    "seconds": round(seconds, 3),
                    "statement": first_line(exc)[:200],
                    "blocking_sessions": watch.sessions,
                }
            )
            result["lock_wait_seconds"] += seconds
            if number == count:
                raise LockTimeoutExhausted(
                    f"Cannot {change}: every one of {count} attempt(s) timed out after lock_timeout {lock_timeout:g} s "
                    f"waiting for a table lock, and each was rolled back ({unchanged}). Blocking: "
                    f"{describe_sessions(watch.sessions)}. End or wait for those sessions, then run again.",
                    blocking_sessions=watch.sessions,
                    attempts=number,
                ) from None
            pause = backoff_seconds(number, float(job["lock_backoff"]), float(job["lock_backoff_max"]))
            time.sleep(pause)
            result["lock_wait_seconds"] += pause
            continue
        result["attempt_log"].append(
            {"attempt": number, "outcome": "committed", "seconds": round(time.monotonic() - started, 3)}
        )
        result["changed"] = True
        return value
    return None  # pragma: no cover - lock_attempts >= 1 (validated)


# -- many databases --------------------------------------------------------------------------------
def database_budget(job: dict) -> float:
    """Seconds one database may take before the watchdog stops its worker: `database_timeout`, else
    the longest a healthy run can take with the job's settings (connection, advisory lock, every
    attempt at its statement timeout with backoff), plus a minute."""
    if job.get("database_timeout"):
        return float(job["database_timeout"])
    full = {**guarded_job_defaults(), **{k: v for k, v in job.items() if v is not None}}
    attempts = int(full["lock_attempts"])
    per_attempt = float(full["statement_timeout"]) + float(full["lock_backoff_max"])
    return float(full["connect_timeout"]) + float(full["advisory_lock_wait"]) + attempts * per_attempt + 60.0


def lost_result(job: dict, reason: str, noun: str, **fields) -> dict:
    """The result of a database whose worker hung or died: failed, with the state to check."""
    return {
        "name": job.get("name"),
        "changed": False,
        "failed": True,
        "check_mode": bool(job.get("check_mode")),
        "run_id": job.get("run_id"),
        "to_revision": None,
        "attempts": 0,
        "attempt_log": [],
        "lock_wait_seconds": 0.0,
        **fields,
        "msg": redact(
            f"Cannot tell whether the {noun} finished: {reason}. Its transaction was not committed by this run "
            "unless the database now reports the target revision: read its state (status.yml) before running again.",
            job.get("dsn"),
        ),
    }


def run_databases(
    target: str, one: Callable, jobs: list[dict], *, parallel: int, database_timeout: float | None, lost: Callable
) -> list[dict]:
    """`one(job)` for every job, at most `parallel` at a time, results in job order.

    With more than one worker, each is a new interpreter running `target` ("module:function", the same
    function as `one`; plugins/module_utils/worker_pool.py: no fork of this process, whose threads' locks
    a forked child would inherit), with a watchdog per database: a database that takes longer than its
    budget (`database_timeout`, or database_budget()) is reported by `lost(job, reason)`, and every other
    database is still run and reported."""
    if database_timeout:
        jobs = [{**job, "database_timeout": database_timeout} for job in jobs]
    workers = max(1, min(int(parallel), len(jobs)))
    if workers == 1:
        return [one(job) for job in jobs]
    return run_jobs(target, jobs, workers, database_budget, lost)
