# Copyright: contributors to the emergency-rollback runbook
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The schema revert: alembic downgrades through alembic's Python API, one transaction per database.

`revert_database(job)` plans (check mode) or applies the downgrade of ONE database and returns a
plain dict; it is picklable and never raises, so that `revert_databases(jobs, parallel)` can run
it in worker processes (alembic's `op`/`context` are process-wide: no threads) and still report
every database. A job is a dict; `job_defaults()` lists its keys.

Apply, in this order (each step refuses or fails before anything is written):
1. resolve the target in the script directory (unknown, relative or ambiguous -> refused);
2. connect (application_name set; a failing DSN gives a message without its password);
3. read alembic_version (missing -> refused);
4. take the runbook's session advisory lock, waiting at most `advisory_lock_wait` (the failure
   names the holder), then read the revision again: a run that waited finds nothing to do;
5. refuse a target that is not an ancestor of the current revision, render the plan's SQL offline
   and compare its sha256 with `expected_sql_sha256` if given;
6. attempts: BEGIN; SET LOCAL lock_timeout, statement_timeout; the downgrade (every revision of the
   range, with the archive hook before each drop); COMMIT. A lock timeout or deadlock rolls the
   attempt back, backs off (exponential, jittered, capped) and retries, at most `lock_attempts`
   times, every attempt with its timeout; on exhaustion the error names the blocking sessions.
   Any other error rolls back and fails: the database is exactly as before, with no archive.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import random
import re
import time
from datetime import UTC, datetime

try:
    import alembic.ddl.postgresql  # noqa: F401 - loaded once, before worker processes fork
    import sqlalchemy.dialects.postgresql.psycopg2  # noqa: F401
    from alembic.config import Config
    from alembic.runtime.environment import EnvironmentContext
    from alembic.script import ScriptDirectory
    from alembic.script.revision import RevisionError
    from alembic.util import CommandError
    from sqlalchemy import event

    HAS_ALEMBIC = True
except ImportError:  # pragma: no cover - the module reports missing_required_lib
    HAS_ALEMBIC = False

from ansible.module_utils.pg_session import (
    APPLICATION_NAME,
    DEADLOCK_DETECTED,
    QUERY_CANCELED,
    RETRYABLE_CODES,
    BlockerWatch,
    acquire_advisory_lock,
    connect,
    describe_sessions,
    first_line,
    pgcode_of,
    redact,
    resolve_dsn,
    set_local_timeouts,
    sqlalchemy_connection,
)
from ansible.module_utils.schema_archive import RUN_ID_PATTERN, Archiver, count_drops, drops_in_script
from ansible.module_utils.schema_errors import (
    LockTimeoutExhausted,
    MigrationFailed,
    RefusedError,
    SchemaError,
)
from ansible.module_utils.worker_pool import run_jobs

BASE = "base"


def job_defaults() -> dict:
    """Every key of a job, with its default (times in seconds)."""
    return {
        "name": None,  # how results and messages name the database
        "dsn": None,  # libpq URI; None: ROLLBACK_DB_DSN
        "script_location": "migrations",
        "version_locations": None,  # list of directories; None: <script_location>/versions
        "revision": None,  # the target (the rollback point)
        "check_mode": False,
        "archive": True,
        "run_id": None,
        "lock_timeout": 2.0,
        "lock_attempts": 5,
        "lock_backoff": 0.5,
        "lock_backoff_max": 5.0,
        "statement_timeout": 60.0,
        "advisory_lock_wait": 30.0,
        "expected_sql_sha256": None,
        "application_name": APPLICATION_NAME,
        "connect_timeout": 10,
        "require_verified_tls": False,  # a production-like environment: sslmode=verify-full or refuse
        "database_timeout": None,  # the watchdog's budget with many databases; None: database_budget()
    }


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + os.urandom(2).hex()


def validate_job(job: dict) -> dict:
    """The job with defaults filled in; RefusedError (one sentence) for a value that cannot work."""
    full = {**job_defaults(), **{k: v for k, v in job.items() if v is not None}}
    if not full["revision"]:
        raise RefusedError("No target revision given: set revision to the rollback point (e.g. 0001_legacy).")
    for key in ("lock_timeout", "statement_timeout"):
        if not float(full[key]) > 0:
            raise RefusedError(f"{key} must be more than 0 seconds (0 would mean no timeout at all).")
    if float(full["statement_timeout"]) < float(full["lock_timeout"]):
        raise RefusedError(
            "statement_timeout must be at least lock_timeout: otherwise a lock wait ends as a statement timeout, "
            "which is not retried."
        )
    if int(full["lock_attempts"]) < 1:
        raise RefusedError("lock_attempts must be at least 1.")
    for key in ("lock_backoff", "lock_backoff_max", "advisory_lock_wait"):
        if float(full[key]) < 0:
            raise RefusedError(f"{key} must not be negative.")
    full["run_id"] = full["run_id"] or new_run_id()
    if not RUN_ID_PATTERN.match(full["run_id"]):
        raise RefusedError(
            f"run_id {full['run_id']!r} is not usable in archive table names: use 1 to 40 letters, digits, "
            "'_', '.', ':' or '-', starting with a letter or digit."
        )
    return full


# -- the script directory ------------------------------------------------------------------------
_SCRIPTS: dict[tuple, ScriptDirectory] = {}
_PLANS: dict[tuple, dict] = {}


def load_script(script_location: str, version_locations: list[str] | None = None) -> ScriptDirectory:
    """The alembic script directory (cached per process, revisions loaded once)."""
    location = os.path.abspath(script_location)
    versions = tuple(os.path.abspath(v) for v in version_locations or ())
    key = (location, versions)
    if key not in _SCRIPTS:
        if not os.path.isfile(os.path.join(location, "env.py")):
            raise RefusedError(
                f"script_location {script_location} is not an alembic script directory (no env.py): "
                "point it at the repository's migrations/ directory."
            )
        for path in versions:
            if not os.path.isdir(path):
                raise RefusedError(f"version_locations entry {path} is not a directory.")
        script = ScriptDirectory(location, version_locations=list(versions) or None)
        try:
            script.get_heads()  # loads and checks every revision file now
        except (CommandError, RevisionError) as exc:
            raise RefusedError(f"Cannot read the revisions in {script_location}: {first_line(exc)}") from None
        _SCRIPTS[key] = script
    return _SCRIPTS[key]


def heads(script: ScriptDirectory) -> list[str]:
    return sorted(script.get_heads())


def resolve_target(script: ScriptDirectory, revision: str) -> str:
    """A revision id (or 'base'). Refuses unknown, relative, and with multiple heads symbolic targets."""
    revision = str(revision).strip()
    if revision == BASE:
        return BASE
    if re.fullmatch(r"[+-]\d+", revision) or "@" in revision or ":" in revision:
        raise RefusedError(
            f"revision {revision!r} is relative or a range: give the rollback point's revision id (e.g. 0001_legacy)."
        )
    if revision in ("head", "heads"):
        found = heads(script)
        if len(found) != 1:
            raise RefusedError(
                f"The script directory has multiple heads ({', '.join(found)}), so {revision!r} is ambiguous: "
                "give the target's revision id."
            )
        return found[0]
    try:
        resolved = script.get_revision(revision)
    except (CommandError, RevisionError) as exc:
        raise RefusedError(
            f"Unknown revision {revision!r}: {first_line(exc)}; the script directory has {', '.join(_all_ids(script))}."
        ) from None
    if resolved is None:
        raise RefusedError(f"Unknown revision {revision!r}.")
    return resolved.revision


def _all_ids(script: ScriptDirectory) -> list[str]:
    return [s.revision for s in reversed(list(script.walk_revisions()))]


def ancestors(script: ScriptDirectory, revision: str) -> set[str]:
    """`revision` and every revision below it."""
    return {s.revision for s in script.revision_map.iterate_revisions(revision, BASE)}


def check_downgrade(script: ScriptDirectory, current: tuple[str, ...], target: str) -> None:
    """Refuse (RefusedError) unless `target` is reached from `current` by downgrades only."""
    for rev in current:
        try:
            script.get_revision(rev)
        except (CommandError, RevisionError):
            raise RefusedError(
                f"The database is at revision {rev}, which the script directory does not contain: "
                "run the rollback with the migrations of the release that is deployed."
            ) from None
    if len(current) > 1:
        raise RefusedError(
            f"The database is at several revisions ({', '.join(current)}) of a branched history, so a downgrade "
            "to one target is ambiguous: revert each branch by hand, or merge the heads first."
        )
    if not current:
        raise RefusedError(f"The database is at base (no revision applied): reaching {target} would be an upgrade.")
    if target == BASE:
        return
    if target not in ancestors(script, current[0]):
        if current[0] in ancestors(script, target):
            raise RefusedError(
                f"Target {target} is newer than the current revision {current[0]}: that would be an upgrade, "
                "which a rollback never does."
            )
        raise RefusedError(
            f"Target {target} is not an ancestor of the current revision {current[0]} (another branch): "
            "choose a revision below the current one."
        )


# -- the database's revision ---------------------------------------------------------------------
def read_revisions(cursor) -> tuple[str, ...] | None:
    """The revisions in alembic_version (empty at base), or None without that table."""
    cursor.execute("SELECT to_regclass('alembic_version') IS NOT NULL")
    if not cursor.fetchone()[0]:
        return None
    cursor.execute("SELECT version_num FROM alembic_version ORDER BY version_num")
    return tuple(row[0] for row in cursor.fetchall())


def current_revisions(cursor) -> tuple[str, ...]:
    """The revisions in alembic_version; RefusedError if the table is missing."""
    found = read_revisions(cursor)
    if found is None:
        raise RefusedError(
            "The database has no alembic_version table: it is not managed by these migrations "
            "(wrong database, or never deployed); nothing to revert."
        )
    return found


def _revision_value(current: tuple[str, ...]) -> str | None:
    return ",".join(current) if current else None


# -- the plan ------------------------------------------------------------------------------------
def _config(script: ScriptDirectory, **attributes) -> Config:
    buffer = io.StringIO()
    cfg = Config(output_buffer=buffer, stdout=buffer)
    cfg.set_main_option("script_location", script.dir)
    cfg.attributes["configure_logger"] = False
    cfg.attributes.update(attributes)
    return cfg


def plan(script: ScriptDirectory, current: str, target: str) -> dict:
    """steps, the exact SQL alembic renders for the range (offline mode), and its sha256. Cached."""
    key = (id(script), current, target)
    if key not in _PLANS:
        steps = [
            {"revision": s.revision.revision, "down_revision": s.revision.down_revision, "doc": s.doc}
            for s in script._downgrade_revs(target, current)
        ]
        cfg = _config(script)
        with EnvironmentContext(
            cfg,
            script,
            fn=lambda rev, _ctx: script._downgrade_revs(target, rev),
            as_sql=True,
            starting_rev=current,
            destination_rev=target,
        ):
            script.run_env()
        sql = cfg.output_buffer.getvalue()
        _PLANS[key] = {"steps": steps, "sql": sql, "sql_sha256": hashlib.sha256(sql.encode()).hexdigest()}
    return dict(_PLANS[key])


def backoff_seconds(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Wait after failed attempt `attempt` (1-based): base * 2^(attempt-1), capped, jittered by +-20%."""
    delay = min(cap, base * 2 ** (attempt - 1))
    return delay * (rng or random).uniform(0.8, 1.2)


# -- one database ----------------------------------------------------------------------------------
def revert_database(job: dict) -> dict:
    """Plan or apply the downgrade of one database. Never raises: failures are in `failed`/`msg`."""
    started = time.monotonic()
    result = {
        "name": job.get("name"),
        "changed": False,
        "failed": False,
        "msg": "",
        "check_mode": bool(job.get("check_mode")),
        "from_revision": None,
        "to_revision": None,
        "steps": [],
        "sql": "",
        "sql_sha256": None,
        "drops": [],
        "attempts": 0,
        "attempt_log": [],
        "lock_wait_seconds": 0.0,
        "advisory_lock_wait_seconds": 0.0,
        "duration_seconds": 0.0,
        "archive": None,
        "run_id": job.get("run_id"),
        "blocking_sessions": [],
    }
    dsn = job.get("dsn")
    try:
        dsn = resolve_dsn(dsn)
        _revert(validate_job({**job, "dsn": dsn}), result)
    except SchemaError as exc:
        result.update(failed=True, msg=redact(str(exc), dsn))
        if isinstance(exc, LockTimeoutExhausted):
            result["blocking_sessions"] = exc.blocking_sessions
    except Exception as exc:  # an unexpected error still becomes one clean, redacted sentence
        result.update(
            failed=True,
            msg=redact(f"Cannot revert the schema: unexpected {type(exc).__name__}: {first_line(exc)}", dsn),
        )
    result["msg"] = result["msg"] or _summary(result)
    result["duration_seconds"] = round(time.monotonic() - started, 3)
    result["lock_wait_seconds"] = round(result["lock_wait_seconds"], 3)
    result["advisory_lock_wait_seconds"] = round(result["advisory_lock_wait_seconds"], 3)
    return result


def _summary(result: dict) -> str:
    if not result["changed"]:
        return f"Already at {result['to_revision'] or BASE}: nothing to do."
    verb = "Would revert" if result["check_mode"] else "Reverted"
    return f"{verb} {result['from_revision']} -> {result['to_revision'] or BASE} ({len(result['steps'])} step(s))."


def _revert(job: dict, result: dict) -> None:
    result["run_id"] = job["run_id"]
    script = load_script(job["script_location"], job["version_locations"])
    target = resolve_target(script, job["revision"])
    result["to_revision"] = None if target == BASE else target
    engine, conn = sqlalchemy_connection(
        job["dsn"], job["application_name"], int(job["connect_timeout"]), bool(job["require_verified_tls"])
    )
    raw = conn.connection.driver_connection
    try:
        with raw.cursor() as cur:
            current = current_revisions(cur)
            cur.execute("SELECT pg_backend_pid()")
            pid = cur.fetchone()[0]
        raw.rollback()
        if not job["check_mode"]:
            waited = acquire_advisory_lock(raw, float(job["advisory_lock_wait"]))
            result["advisory_lock_wait_seconds"] = result["lock_wait_seconds"] = waited
            with raw.cursor() as cur:
                current = current_revisions(cur)  # again, under the lock: a run we waited for may have done it
            raw.rollback()
        result["from_revision"] = _revision_value(current)
        if (not current and target == BASE) or current == (target,):
            return
        check_downgrade(script, current, target)
        the_plan = plan(script, current[0], target)
        result.update(the_plan)
        expected = job["expected_sql_sha256"]
        if expected and expected.strip().lower() != the_plan["sql_sha256"]:
            raise RefusedError(
                f"The downgrade SQL changed since it was approved (sha256 {the_plan['sql_sha256']}, approved "
                f"{expected.strip()}): review the new plan in check mode and approve its sha256."
            )
        if job["check_mode"]:
            try:
                with raw.cursor() as cur:
                    set_local_timeouts(cur, float(job["lock_timeout"]), float(job["statement_timeout"]))
                    result["drops"] = count_drops(cur, drops_in_script(the_plan["sql"]))
            finally:
                raw.rollback()
            result["changed"] = True
            return
        _apply(job, script, engine, conn, pid=pid, current=current[0], target=target, result=result)
    finally:
        conn.close()  # also releases the session advisory lock
        engine.dispose()


def _apply(job, script, engine, conn, *, pid, current, target, result) -> None:
    raw = conn.connection.driver_connection
    state: dict = {"archiver": None}

    def before_cursor_execute(_conn, _cursor, statement, _parameters, _context, _executemany):
        if state["archiver"] is not None:
            state["archiver"].before_statement(statement)

    event.listen(engine, "before_cursor_execute", before_cursor_execute)
    lock_timeout, attempts = float(job["lock_timeout"]), int(job["lock_attempts"])
    for attempt in range(1, attempts + 1):
        attempt_started = time.monotonic()
        result["attempts"] = attempt
        archiver = Archiver(raw, job["run_id"], current, result["to_revision"], enabled=bool(job["archive"]))
        watch = BlockerWatch(
            job["dsn"],
            pid,
            delay=lock_timeout * 0.5,
            application_name=job["application_name"],
            require_verified_tls=bool(job["require_verified_tls"]),
        )
        try:
            with watch:
                trans = conn.begin()
                try:
                    with raw.cursor() as cur:
                        set_local_timeouts(cur, lock_timeout, float(job["statement_timeout"]))
                    state["archiver"] = archiver
                    _run_downgrade(script, conn, target)
                    state["archiver"] = None
                    with raw.cursor() as cur:
                        reached = current_revisions(cur)
                    if reached != (() if target == BASE else (target,)):
                        raise MigrationFailed(
                            f"the downgrade ended at {_revision_value(reached) or BASE}, not {target}"
                        )
                    trans.commit()
                except BaseException:
                    state["archiver"] = None
                    with contextlib.suppress(Exception):
                        trans.rollback()
                    raise
        except Exception as exc:
            seconds = time.monotonic() - attempt_started
            code = pgcode_of(exc)
            if code not in RETRYABLE_CODES:
                result["attempt_log"].append({"attempt": attempt, "outcome": "failed", "seconds": round(seconds, 3)})
                raise _failure(exc, code, current, target, job) from None
            outcome = "deadlock" if code == DEADLOCK_DETECTED else "lock_timeout"
            result["attempt_log"].append(
                {
                    "attempt": attempt,
                    "outcome": outcome,
                    "seconds": round(seconds, 3),
                    "statement": first_line(exc)[:200],
                    "blocking_sessions": watch.sessions,
                }
            )
            result["lock_wait_seconds"] += seconds
            if attempt == attempts:
                raise LockTimeoutExhausted(
                    f"Cannot revert {current} -> {target}: every one of {attempts} attempt(s) timed out after "
                    f"lock_timeout {lock_timeout:g} s waiting for a table lock, and each was rolled back (the "
                    f"database is unchanged). Blocking: {describe_sessions(watch.sessions)}. End or wait for "
                    "those sessions, then run again.",
                    blocking_sessions=watch.sessions,
                    attempts=attempt,
                ) from None
            pause = backoff_seconds(attempt, float(job["lock_backoff"]), float(job["lock_backoff_max"]))
            time.sleep(pause)
            result["lock_wait_seconds"] += pause
            continue
        result["attempt_log"].append(
            {"attempt": attempt, "outcome": "committed", "seconds": round(time.monotonic() - attempt_started, 3)}
        )
        result["changed"] = True
        result["drops"] = archiver.drops
        result["archive"] = archiver.summary()
        return


def _failure(exc: BaseException, code: str | None, current: str, target: str, job: dict) -> SchemaError:
    if isinstance(exc, SchemaError):
        cause = str(exc)
    elif code == QUERY_CANCELED:
        cause = (
            f"a statement ran longer than statement_timeout ({float(job['statement_timeout']):g} s); raise it, "
            "or archive large tables beforehand and run with archive false"
        )
    else:
        cause = first_line(exc)
    return MigrationFailed(
        f"Cannot revert {current} -> {target}: {cause}; the transaction was rolled back, the database is still "
        f"at {current} with no archive left behind. A failed downgrade needs a DBA: see the runbook."
    )


def _run_downgrade(script: ScriptDirectory, conn, target: str) -> None:
    """alembic's `downgrade` on the caller's connection, inside the caller's transaction."""
    cfg = _config(script, connection=conn)
    with EnvironmentContext(
        cfg,
        script,
        fn=lambda rev, _ctx: script._downgrade_revs(target, rev),
        as_sql=False,
        destination_rev=target,
    ):
        script.run_env()


# -- many databases --------------------------------------------------------------------------------
def database_budget(job: dict) -> float:
    """Seconds one database may take before the watchdog stops its worker: `database_timeout`, else
    the longest a healthy revert can take with the job's settings (connection, advisory lock, every
    attempt at its statement timeout with backoff), plus a minute."""
    if job.get("database_timeout"):
        return float(job["database_timeout"])
    full = {**job_defaults(), **{k: v for k, v in job.items() if v is not None}}
    attempts = int(full["lock_attempts"])
    per_attempt = float(full["statement_timeout"]) + float(full["lock_backoff_max"])
    return float(full["connect_timeout"]) + float(full["advisory_lock_wait"]) + attempts * per_attempt + 60.0


def _lost_database(job: dict, reason: str) -> dict:
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
        "msg": redact(
            f"Cannot tell whether the revert finished: {reason}. Its transaction was not committed by this run "
            "unless the database now reports the target revision: read its state (status.yml) before running again.",
            job.get("dsn"),
        ),
    }


def revert_databases(jobs: list[dict], parallel: int = 2, database_timeout: float | None = None) -> list[dict]:
    """revert_database() for every job, at most `parallel` at a time, results in job order.

    With more than one worker, each is a new interpreter (plugins/module_utils/worker_pool.py: no
    fork of this process, whose threads' locks a forked child would inherit), with a watchdog per
    database: a database that takes longer than its budget (`database_timeout`, or
    database_budget()) is reported failed, and every other database is still reverted and reported.
    """
    if database_timeout:
        jobs = [{**job, "database_timeout": database_timeout} for job in jobs]
    workers = max(1, min(int(parallel), len(jobs)))
    if workers == 1:
        return [revert_database(job) for job in jobs]
    return run_jobs(
        "ansible.module_utils.alembic_runner:revert_database", jobs, workers, database_budget, _lost_database
    )


__all__ = [
    "BASE",
    "HAS_ALEMBIC",
    "connect",
    "heads",
    "job_defaults",
    "load_script",
    "new_run_id",
    "plan",
    "resolve_target",
    "revert_database",
    "revert_databases",
]
