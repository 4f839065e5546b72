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

import os
import re
from datetime import UTC, datetime

from ansible.module_utils.schema_archive import RUN_ID_PATTERN, Archiver
from ansible.module_utils.schema_errors import MigrationFailed, RefusedError, SchemaError
from ansible.module_utils.schema_guard import Guard, Steps, check_plan, refusal_message
from ansible.module_utils.schema_jobs import (
    BASE,
    attempts,
    backoff_seconds,
    failure_cause,
    finish,
    guarded_job_defaults,
    guarded_result,
    locked_session,
    revision_value,
    rolled_back_cursor,
)

ACCEPT_PATTERN = r"^[^:\s]+:[0-9a-f]{64}$"
__all__ = ["BASE", "backoff_seconds", "job_defaults", "new_result", "new_run_id", "revert_with", "validate_job"]


def job_defaults() -> dict:
    """Every key of a job, with its default (times in seconds): schema_jobs.guarded_job_defaults() and these."""
    return {
        **guarded_job_defaults(),
        "script": None,  # efcore: the down script of `dotnet ef migrations script <Current> <Previous>`
        "revision": None,  # the target (the rollback point)
        "archive": True,
        "accept_data_statements": (),  # "<revision>:<sha256 of the statement>", accepted by the operator
        "expected_sql_sha256": None,
        # Blocking-session reports carry pid, role, application_name, state and age; the query's
        # text (which can hold customers' data) only with this opt-in.
        "report_query_text": False,
    }


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + os.urandom(2).hex()


def validate_job(job: dict) -> dict:
    """The job with defaults filled in; RefusedError (one sentence) for a value that cannot work."""
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


def new_result(job: dict) -> dict:
    return guarded_result(
        job,
        tool=job.get("tool") or "alembic",
        sql="",
        sql_sha256=None,
        drops=[],
        data_statements=[],
        accepted_data_statements=[],
        accepted_effects=[],
        archive=None,
    )


def revert_with(tools: dict, job: dict) -> dict:
    """Plan or apply the downgrade of one database with the job's tool. Never raises."""
    result = new_result(job)

    def change(dsn: str) -> None:
        full = validate_job({**job, "dsn": dsn})
        result["accepted_data_statements"] = full["accept_data_statements"]
        _revert(tools[full["tool"]](full), full, result)

    return finish(job, result, change, "revert", _summary)


def _summary(result: dict) -> str:
    if not result["changed"]:
        return f"Already at {result['to_revision'] or BASE}: nothing to do."
    verb = "Would revert" if result["check_mode"] else "Reverted"
    return f"{verb} {result['from_revision']} -> {result['to_revision'] or BASE} ({len(result['steps'])} step(s))."


def _revert(tool, job: dict, result: dict) -> None:
    result["run_id"] = job["run_id"]
    target = tool.load()
    result["to_revision"] = None if target == BASE else target
    with locked_session(job, result, tool.read_current) as (conn, pid, current):
        result["from_revision"] = revision_value(current)
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
        with rolled_back_cursor(conn, job) as cur:
            checked = check_plan(
                cur, plan["statements"], Steps(plan["revisions"], plan["version"]), accepted, job["check_mode"]
            )
        result.update(drops=checked["drops"], data_statements=checked["data_statements"])
        if checked["refusals"]:
            raise RefusedError(refusal_message(checked["refusals"]))
        if job["check_mode"]:
            result["changed"] = True
            return
        tool.check_apply()
        _apply(job, tool, conn, pid=pid, current=current[0], target=target, plan=plan, result=result)


def _apply(job, tool, conn, *, pid, current, target, plan, result) -> None:
    raw = conn.connection.driver_connection
    accepted = set(job["accept_data_statements"])

    def attempt() -> tuple:
        archiver = Archiver(raw, job["run_id"], current, result["to_revision"], enabled=bool(job["archive"]))
        guard = Guard(raw, archiver, Steps(plan["revisions"], plan["version"]), accepted, plan["statements"])
        guard.begin()
        tool.run(conn, guard)
        with raw.cursor() as cur:
            reached = tool.read_current(cur)
        if not tool.at_target(reached):
            raise MigrationFailed(f"the downgrade ended at {revision_value(reached) or BASE}, not {target}")
        guard.reconcile()
        return archiver, guard

    failure = lambda exc, code: _failure(exc, code, current, target, job)  # noqa: E731
    change, unchanged = f"revert {current} -> {target}", "the database is unchanged"
    archiver, guard = attempts(job, (conn, pid), result, attempt, change=change, unchanged=unchanged, failure=failure)
    result["drops"] = [{k: v for k, v in e.items() if k != "oid"} for e in archiver.entries]
    result["archive"] = archiver.summary()
    result.update(guard.result())


def _failure(exc: BaseException, code: str | None, current: str, target: str, job: dict) -> SchemaError:
    advice = "raise it, or archive large tables beforehand and run with archive false"
    cause = failure_cause(exc, code, job, advice).rstrip(".")
    if isinstance(exc, RefusedError):
        cause = cause.removeprefix("Refused: ").removesuffix("; nothing was changed")
    return MigrationFailed(
        f"Cannot revert {current} -> {target}: {cause}; the transaction was rolled back, the database is still "
        f"at {current} with no archive left behind. A failed downgrade needs a DBA: see the runbook."
    )
