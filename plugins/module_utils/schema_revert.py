# Copyright: contributors to the emergency-rollback runbook
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The schema revert of one database, whatever tool wrote the migrations (alembic, EF Core).

`revert_with(tools, job)` plans (check mode) or applies the downgrade of ONE database and returns a
plain, picklable dict; it never raises. The tool (alembic_runner.AlembicTool, efcore.EfCoreTool)
knows its revisions, renders the plan's SQL and runs the downgrade; everything else is here, the
same for every tool:

1. load the tool's inputs and resolve the target (unknown, relative, ambiguous -> refused);
2. connect (application_name set; a failing DSN gives a message without its password);
3. read the current revision (the tool's version table; missing -> refused);
4. apply only: take the runbook's session advisory lock, waiting at most `advisory_lock_wait` (the
   failure names the holder), then read the revision again: a run that waited finds nothing to do;
5. refuse a target that is not below the current revision; render the plan's SQL and compare its
   sha256 with `expected_sql_sha256`; check the plan (schema_guard.check_plan): every removal with
   its rows, every statement that removes rows by other means, refused unless archived or accepted;
6. apply: the tool's own last check before any DDL, then attempts of: BEGIN; SET LOCAL lock_timeout,
   statement_timeout; the downgrade, every statement through the guard (archive first); the
   reconciliation (schema_guard.Guard.reconcile); COMMIT. A lock timeout or deadlock rolls the
   attempt back, backs off (exponential, jittered, capped) and retries, at most `lock_attempts`
   times; on exhaustion the error names the blocking sessions. Any other error rolls back and fails:
   the database is exactly as before, with no archive.
"""

from __future__ import annotations

import contextlib
import os
import random
import time
from datetime import UTC, datetime

from ansible.module_utils.pg_session import (
    APPLICATION_NAME,
    DEADLOCK_DETECTED,
    QUERY_CANCELED,
    RETRYABLE_CODES,
    BlockerWatch,
    acquire_advisory_lock,
    describe_sessions,
    first_line,
    pgcode_of,
    redact,
    resolve_dsn,
    set_local_timeouts,
    sqlalchemy_connection,
)
from ansible.module_utils.schema_archive import RUN_ID_PATTERN, Archiver
from ansible.module_utils.schema_errors import LockTimeoutExhausted, MigrationFailed, RefusedError, SchemaError
from ansible.module_utils.schema_guard import Guard, Steps, check_plan, refusal_message

BASE = "base"
ACCEPT_PATTERN = r"^[^:\s]+:[0-9a-f]{64}$"


def job_defaults() -> dict:
    """Every key of a job, with its default (times in seconds)."""
    return {
        "name": None,  # how results and messages name the database
        "dsn": None,  # libpq URI; None: ROLLBACK_DB_DSN
        "tool": "alembic",  # alembic | efcore
        "config_file": None,  # alembic: alembic.ini or pyproject.toml ([tool.alembic])
        "script_location": "migrations",
        "version_locations": None,  # list of directories; None: <script_location>/versions
        "script": None,  # efcore: the down script of `dotnet ef migrations script <Current> <Previous>`
        "revision": None,  # the target (the rollback point)
        "check_mode": False,
        "archive": True,
        "accept_data_statements": (),  # "<revision>:<sha256 of the statement>", accepted by the operator
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
        # Blocking-session reports carry pid, role, application_name, state and age; the query's
        # text (which can hold customers' data) only with this opt-in.
        "report_query_text": False,
        "require_verified_tls": False,  # a production-like environment: sslmode=verify-full or refuse
        "database_timeout": None,  # the watchdog's budget with many databases; None: database_budget()
    }


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + os.urandom(2).hex()


def validate_job(job: dict) -> dict:
    """The job with defaults filled in; RefusedError (one sentence) for a value that cannot work."""
    import re  # noqa: PLC0415

    full = {**job_defaults(), **{k: v for k, v in job.items() if v is not None}}
    if not full["revision"]:
        raise RefusedError("No target revision given: set revision to the rollback point (e.g. 0001_legacy).")
    if full["tool"] not in ("alembic", "efcore"):
        raise RefusedError(f"tool {full['tool']!r} is not supported: use alembic or efcore.")
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
    accepted = full["accept_data_statements"] or ()
    if isinstance(accepted, str):
        accepted = [a for a in re.split(r"[,\s]+", accepted) if a]
    for item in accepted:
        if not re.match(ACCEPT_PATTERN, str(item).strip(), re.IGNORECASE):
            raise RefusedError(
                f"accept_data_statements entry {item!r} is not <revision>:<sha256>: copy it from the plan's refusal."
            )
    # The revision as written, the sha256 in lower case (as the plan prints it).
    full["accept_data_statements"] = sorted(
        {f"{str(a).strip().rsplit(':', 1)[0]}:{str(a).strip().rsplit(':', 1)[1].lower()}" for a in accepted}
    )
    return full


def backoff_seconds(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Wait after failed attempt `attempt` (1-based): base * 2^(attempt-1), capped, jittered by +-20%."""
    delay = min(cap, base * 2 ** (attempt - 1))
    return delay * (rng or random).uniform(0.8, 1.2)


def _revision_value(current: tuple[str, ...]) -> str | None:
    return ",".join(current) if current else None


def new_result(job: dict) -> dict:
    return {
        "name": job.get("name"),
        "changed": False,
        "failed": False,
        "msg": "",
        "check_mode": bool(job.get("check_mode")),
        "tool": job.get("tool") or "alembic",
        "from_revision": None,
        "to_revision": None,
        "steps": [],
        "sql": "",
        "sql_sha256": None,
        "drops": [],
        "data_statements": [],
        "accepted_data_statements": [],
        "accepted_effects": [],
        "attempts": 0,
        "attempt_log": [],
        "lock_wait_seconds": 0.0,
        "advisory_lock_wait_seconds": 0.0,
        "duration_seconds": 0.0,
        "archive": None,
        "run_id": job.get("run_id"),
        "blocking_sessions": [],
    }


def revert_with(tools: dict, job: dict) -> dict:
    """Plan or apply the downgrade of one database with the job's tool. Never raises."""
    started = time.monotonic()
    result = new_result(job)
    dsn = job.get("dsn")
    try:
        dsn = resolve_dsn(dsn)
        full = validate_job({**job, "dsn": dsn})
        result["accepted_data_statements"] = full["accept_data_statements"]
        _revert(tools[full["tool"]](full), full, result)
    except SchemaError as exc:
        result.update(failed=True, msg=redact(str(exc), dsn))
        if isinstance(exc, LockTimeoutExhausted):
            result["blocking_sessions"] = exc.blocking_sessions
        for key, value in getattr(exc, "details", {}).items():
            result[key] = value
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


def _revert(tool, job: dict, result: dict) -> None:
    result["run_id"] = job["run_id"]
    target = tool.load()
    result["to_revision"] = None if target == BASE else target
    engine, conn = sqlalchemy_connection(
        job["dsn"], job["application_name"], int(job["connect_timeout"]), bool(job["require_verified_tls"])
    )
    raw = conn.connection.driver_connection
    try:
        with raw.cursor() as cur:
            current = tool.read_current(cur)
            cur.execute("SELECT pg_backend_pid()")
            pid = cur.fetchone()[0]
        raw.rollback()
        if not job["check_mode"]:
            waited = acquire_advisory_lock(raw, float(job["advisory_lock_wait"]))
            result["advisory_lock_wait_seconds"] = result["lock_wait_seconds"] = waited
            with raw.cursor() as cur:
                current = tool.read_current(cur)  # again, under the lock: a run we waited for may have done it
            raw.rollback()
        result["from_revision"] = _revision_value(current)
        if tool.at_target(current):
            return
        tool.check_downgrade(current)
        plan = tool.plan(current)
        result.update(steps=plan["steps"], sql=plan["sql"], sql_sha256=plan["sql_sha256"])
        expected = job["expected_sql_sha256"]
        if expected and expected.strip().lower() != plan["sql_sha256"]:
            raise RefusedError(
                f"The downgrade SQL changed since it was approved (sha256 {plan['sql_sha256']}, approved "
                f"{expected.strip()}): review the new plan in check mode and approve its sha256."
            )
        accepted = set(job["accept_data_statements"])
        try:
            with raw.cursor() as cur:
                set_local_timeouts(cur, float(job["lock_timeout"]), float(job["statement_timeout"]))
                checked = check_plan(
                    cur, plan["statements"], Steps(plan["revisions"], plan["version"]), accepted, job["check_mode"]
                )
        finally:
            raw.rollback()
        result.update(drops=checked["drops"], data_statements=checked["data_statements"])
        if checked["refusals"]:
            raise RefusedError(refusal_message(checked["refusals"]))
        if job["check_mode"]:
            result["changed"] = True
            return
        tool.check_apply()
        _apply(job, tool, conn, pid=pid, current=current[0], target=target, plan=plan, result=result)
    finally:
        conn.close()  # also releases the session advisory lock
        engine.dispose()


def _apply(job, tool, conn, *, pid, current, target, plan, result) -> None:
    raw = conn.connection.driver_connection
    lock_timeout, attempts = float(job["lock_timeout"]), int(job["lock_attempts"])
    accepted = set(job["accept_data_statements"])
    for attempt in range(1, attempts + 1):
        attempt_started = time.monotonic()
        result["attempts"] = attempt
        archiver = Archiver(raw, job["run_id"], current, result["to_revision"], enabled=bool(job["archive"]))
        guard = Guard(raw, archiver, Steps(plan["revisions"], plan["version"]), accepted, plan["statements"])
        watch = BlockerWatch(
            job["dsn"],
            pid,
            delay=lock_timeout * 0.5,
            application_name=job["application_name"],
            include_query=bool(job["report_query_text"]),
            require_verified_tls=bool(job["require_verified_tls"]),
        )
        try:
            with watch:
                trans = conn.begin()
                try:
                    with raw.cursor() as cur:
                        set_local_timeouts(cur, lock_timeout, float(job["statement_timeout"]))
                    guard.begin()
                    tool.run(conn, guard)
                    with raw.cursor() as cur:
                        reached = tool.read_current(cur)
                    if not tool.at_target(reached):
                        raise MigrationFailed(
                            f"the downgrade ended at {_revision_value(reached) or BASE}, not {target}"
                        )
                    guard.reconcile()
                    trans.commit()
                except BaseException:
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
        result["drops"] = [{k: v for k, v in e.items() if k != "oid"} for e in archiver.entries]
        result["archive"] = archiver.summary()
        result.update(guard.result())
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
    cause = cause.rstrip(".")
    if isinstance(exc, RefusedError):
        cause = cause.removeprefix("Refused: ").removesuffix("; nothing was changed")
    return MigrationFailed(
        f"Cannot revert {current} -> {target}: {cause}; the transaction was rolled back, the database is still "
        f"at {current} with no archive left behind. A failed downgrade needs a DBA: see the runbook."
    )
