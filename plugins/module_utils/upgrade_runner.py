# Copyright: contributors to the emergency-rollback runbook
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The forward cutover's upgrade under the runbook's guards, the archived rows restored in its transaction.

`upgrade_database(job)` plans (check mode) or applies the upgrade of ONE database and returns a plain
dict; like alembic_runner.revert_database it is picklable and never raises, so that
`upgrade_databases(jobs, parallel)` runs it in worker processes (plugins/module_utils/worker_pool.py)
and reports every database. The guards are the rollback's, from the same code:

1. resolve the target in the script directory (`heads` by default; unknown or relative -> refused);
2. connect (application_name set; a failing DSN gives a message without its password);
3. take the runbook's session advisory lock (the revert's and the rollback point's: a deployment never
   races a rollback on the same database), waiting at most `advisory_lock_wait`; read the revision
   again under it;
4. refuse a database that is not below the target (schema_upgrade never downgrades: rollback.yml does);
5. attempts: BEGIN; SET LOCAL lock_timeout, statement_timeout; read the manifest's pending archives
   (FOR UPDATE); alembic upgrade on this connection, inside this transaction; check the revision
   reached; restore every archive whose `from_revision` the database is back at
   (plugins/module_utils/schema_restore.py), mark each restored; COMMIT. A lock timeout or deadlock
   rolls the attempt back, backs off and retries, at most `lock_attempts` times, every attempt with its
   timeout; on exhaustion the error names the blocking sessions. Any other error rolls back and fails.

Conflicts (archived rows whose key now exists with other data, and the like) roll the whole
transaction back, upgrade included, and fail naming them, unless the archive's rollback run id is in
`accept_conflicts`: then the other rows are restored, the conflicting ones stay in the archive, and
the manifest records the acceptance.

Check mode runs no upgrade and writes nothing: the steps, and what would be restored (a prediction
where the upgrade would create the table or column; see schema_restore).

Why a plugin of its own (schema_upgrade) and not an `upgrade` mode of schema_migration: the revert
refuses any target above the current revision ("a rollback never upgrades"), and preflight approves
its plan by the SQL's sha256; one option turning the rollback's module into an upgrader would make
that refusal a default instead of a property. The deployment also has inputs the rollback must never
take (accept_conflicts, restore). Both share the guards' code: alembic_runner (script directory,
targets, revisions, backoff, the watchdog's budget) and pg_session (connections, the advisory lock,
SET LOCAL timeouts, blocking sessions, redaction).
"""

from __future__ import annotations

import contextlib
import io
import time

from ansible.module_utils.pg_session import (
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
from ansible.module_utils.restore_catalog import target_exists
from ansible.module_utils.restore_manifest import RestoreConflicts, RestoreError, describe_conflicts, read_manifest
from ansible.module_utils.restore_transaction import after_upgrade, applicable, restore_in_transaction, restore_summary
from ansible.module_utils.schema_alembic import (
    BASE,
    _project,
    ancestors,
    read_revisions,
    version_table,
)
from ansible.module_utils.schema_errors import LockTimeoutExhausted, MigrationFailed, RefusedError, SchemaError
from ansible.module_utils.schema_revert import backoff_seconds, validate_job
from ansible.module_utils.upgrade_alembic import (
    _revision_value,
    _run_upgrade,
    check_env_py,
    check_upgrade,
    resolve_targets,
    upgrade_steps,
)


def upgrade_job_defaults() -> dict:
    """Every key of an upgrade job, with its default (times in seconds)."""
    return {
        "name": None,
        "dsn": None,
        "tool": "alembic",  # only alembic: an EF Core up script commits per migration (see _upgrade)
        "config_file": None,  # an alembic.ini or pyproject.toml ([tool.alembic]); else script_location
        "script_location": "migrations",
        "version_locations": None,
        "revision": "heads",
        "check_mode": False,
        "restore": True,
        "accept_conflicts": [],
        "restored_by": None,
        "run_id": None,
        "lock_timeout": 2.0,
        "lock_attempts": 5,
        "lock_backoff": 0.5,
        "lock_backoff_max": 5.0,
        "statement_timeout": 60.0,
        "advisory_lock_wait": 30.0,
        "application_name": "emergency-rollback",
        "connect_timeout": 10,
        "require_verified_tls": False,  # a production-like environment: sslmode=verify-full or refuse
        "database_timeout": None,
    }


# -- revisions -----------------------------------------------------------------------------------


# -- the restore's part ----------------------------------------------------------------------------


# -- one database ----------------------------------------------------------------------------------
def upgrade_database(job: dict) -> dict:
    """Plan or apply the upgrade and restore of one database. Never raises: failures are in `failed`/`msg`."""
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
        "attempts": 0,
        "attempt_log": [],
        "lock_wait_seconds": 0.0,
        "advisory_lock_wait_seconds": 0.0,
        "duration_seconds": 0.0,
        "run_id": job.get("run_id"),
        "blocking_sessions": [],
        "restore": None,
    }
    dsn = job.get("dsn")
    try:
        dsn = resolve_dsn(dsn)
        full = {**upgrade_job_defaults(), **{k: v for k, v in job.items() if v is not None}, "dsn": dsn}
        _upgrade({**upgrade_job_defaults(), **validate_job(full)}, result)
    except RestoreConflicts as exc:
        result.update(failed=True, msg=redact(str(exc), dsn), restore=exc.report)
    except SchemaError as exc:
        result.update(failed=True, msg=redact(str(exc), dsn))
        if isinstance(exc, LockTimeoutExhausted):
            result["blocking_sessions"] = exc.blocking_sessions
    except Exception as exc:  # an unexpected error still becomes one clean, redacted sentence
        result.update(
            failed=True,
            msg=redact(f"Cannot upgrade the schema: unexpected {type(exc).__name__}: {first_line(exc)}", dsn),
        )
    if result["failed"]:
        result["changed"] = False
    result["msg"] = result["msg"] or _summary(result)
    result["duration_seconds"] = round(time.monotonic() - started, 3)
    result["lock_wait_seconds"] = round(result["lock_wait_seconds"], 3)
    result["advisory_lock_wait_seconds"] = round(result["advisory_lock_wait_seconds"], 3)
    return result


def _summary(result: dict) -> str:
    restore = result.get("restore") or {}
    restored = restore.get("rows_restored", 0)
    archives = len(restore.get("archives") or [])
    check = result["check_mode"]
    parts = []
    if result["steps"]:
        verb = "Would upgrade" if check else "Upgraded"
        parts.append(
            f"{verb} {result['from_revision'] or BASE} -> {result['to_revision']} ({len(result['steps'])} step(s))"
        )
    if archives:
        verb = "would restore" if check else "restored"
        runs = ", ".join(restore["runs"])
        text = f"{verb} {restored} archived row(s) of rollback run {runs} ({archives} table(s)/column(s))"
        if restore.get("conflict_rows"):
            text += f"; {restore['conflict_rows']} conflicting row(s): {describe_conflicts(restore['archives'])}"
            if restore.get("accepted"):
                text += f" (accepted for {', '.join(restore['accepted'])}: left in the archive)"
        parts.append(text)
    if not parts:
        return f"Already at {result['to_revision']} with no archive to restore: nothing to do."
    message = "; ".join(parts)
    return message[0].upper() + message[1:] + "."


def _upgrade(job: dict, result: dict) -> None:
    result["run_id"] = job["run_id"]
    if job["tool"] != "alembic":
        raise RefusedError(
            "schema_upgrade upgrades alembic projects: an EF Core database is upgraded by its release's up script "
            "(deploy.yml with rollback_schema_tool efcore), which commits each migration itself, so the archive "
            "cannot be restored in its transaction; status.yml lists the archives."
        )
    project, script = _project(job["script_location"], job["version_locations"], job["config_file"])
    version = version_table(project, script)
    destination, targets = resolve_targets(script, job["revision"])
    result["to_revision"] = _revision_value(targets)
    engine, conn = sqlalchemy_connection(
        job["dsn"], job["application_name"], int(job["connect_timeout"]), bool(job["require_verified_tls"])
    )
    raw = conn.connection.driver_connection
    try:
        with raw.cursor() as cur:
            current = read_revisions(cur, version) or ()
            cur.execute("SELECT pg_backend_pid()")
            pid = cur.fetchone()[0]
        raw.rollback()
        if not job["check_mode"]:
            waited = acquire_advisory_lock(raw, float(job["advisory_lock_wait"]))
            result["advisory_lock_wait_seconds"] = result["lock_wait_seconds"] = waited
            with raw.cursor() as cur:
                current = read_revisions(cur, version) or ()  # again, under the lock
            raw.rollback()
        result["from_revision"] = _revision_value(current)
        check_upgrade(script, current, targets)
        steps = [] if set(current) == set(targets) else upgrade_steps(script, current, destination)
        result["steps"] = steps
        reached: set[str] = set()
        for target in targets:
            reached |= ancestors(script, target)
        # What is pending, and (check mode) what would be restored: one transaction, rolled back.
        try:
            with raw.cursor() as cur:
                set_local_timeouts(cur, float(job["lock_timeout"]), float(job["statement_timeout"]))
                pending = read_manifest(cur, pending_only=True) if job["restore"] else []
                ready, waiting = applicable(pending, reached)
                if job["check_mode"]:
                    summary = restore_in_transaction(cur, ready, fresh=set(), job=job, apply=False)
                    summary["waiting"] = restore_summary([], waiting, set())["waiting"]
                    result["restore"] = summary
        finally:
            raw.rollback()
        if result["restore"] is None:
            result["restore"] = restore_summary([], waiting, set())
        if job["check_mode"] or (not steps and not ready):
            result["changed"] = bool(steps or ready)
            return
        if steps:
            check_env_py(script)
        _apply(
            job,
            (project, script, version),
            conn,
            pid=pid,
            current=current,
            destination=destination,
            targets=targets,
            result=result,
        )
    finally:
        conn.close()  # also releases the session advisory lock
        engine.dispose()


def _attempt(job: dict, alembic, conn, *, destination: str, targets: tuple[str, ...], steps: bool) -> dict:
    """One attempt: BEGIN, timeouts, upgrade, restore, COMMIT; the restore's summary. Raises on failure."""
    project, script, version = alembic
    raw = conn.connection.driver_connection
    trans = conn.begin()
    try:
        with raw.cursor() as cur:
            set_local_timeouts(cur, float(job["lock_timeout"]), float(job["statement_timeout"]))
            pending = read_manifest(cur, pending_only=True, for_update=True) if job["restore"] else []
            before = {e["id"]: target_exists(cur, e) for e in pending}
        if steps:
            _run_upgrade(project, script, conn, destination)
        with raw.cursor() as cur:
            reached_now = read_revisions(cur, version) or ()
            if set(reached_now) != set(targets):
                raise MigrationFailed(
                    f"the upgrade ended at {_revision_value(reached_now) or BASE}, not {_revision_value(targets)}"
                )
            ready, waiting, fresh = after_upgrade(cur, script, pending, before, targets)
            summary = restore_in_transaction(cur, ready, fresh=fresh, job=job, apply=True)
            summary["waiting"] = restore_summary([], waiting, set())["waiting"]
        trans.commit()
        return summary
    except BaseException:
        with contextlib.suppress(Exception):
            trans.rollback()
        raise


def _apply(job, alembic, conn, *, pid, current, destination, targets, result) -> None:
    lock_timeout, attempts = float(job["lock_timeout"]), int(job["lock_attempts"])
    for attempt in range(1, attempts + 1):
        attempt_started = time.monotonic()
        result["attempts"] = attempt
        watch = BlockerWatch(
            job["dsn"],
            pid,
            delay=lock_timeout * 0.5,
            application_name=job["application_name"],
            require_verified_tls=bool(job["require_verified_tls"]),
        )
        try:
            with watch, contextlib.redirect_stdout(io.StringIO()):
                summary = _attempt(
                    job, alembic, conn, destination=destination, targets=targets, steps=bool(result["steps"])
                )
        except Exception as exc:
            seconds = time.monotonic() - attempt_started
            code = pgcode_of(exc)
            if code not in RETRYABLE_CODES:
                result["attempt_log"].append({"attempt": attempt, "outcome": "failed", "seconds": round(seconds, 3)})
                if isinstance(exc, RestoreConflicts):
                    raise
                raise _failure(exc, code, current, targets, job) from None
            result["attempt_log"].append(
                {
                    "attempt": attempt,
                    "outcome": "deadlock" if code == "40P01" else "lock_timeout",
                    "seconds": round(seconds, 3),
                    "statement": first_line(exc)[:200],
                    "blocking_sessions": watch.sessions,
                }
            )
            result["lock_wait_seconds"] += seconds
            if attempt == attempts:
                raise LockTimeoutExhausted(
                    f"Cannot upgrade {_revision_value(current) or BASE} -> {_revision_value(targets)}: every one of "
                    f"{attempts} attempt(s) timed out after lock_timeout {lock_timeout:g} s waiting for a table lock, "
                    f"and each was rolled back (the database is unchanged, nothing restored). Blocking: "
                    f"{describe_sessions(watch.sessions)}. End or wait for those sessions, then run again.",
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
        result["restore"] = summary
        return


def _failure(exc: BaseException, code: str | None, current, targets, job: dict) -> SchemaError:
    if isinstance(exc, RestoreError):
        cause = str(exc)
    elif isinstance(exc, SchemaError):
        cause = str(exc)
    elif code == QUERY_CANCELED:
        cause = (
            f"a statement ran longer than statement_timeout ({float(job['statement_timeout']):g} s); raise it for "
            "a large upgrade or restore"
        )
    else:
        cause = first_line(exc)
    start = _revision_value(current) or BASE
    return MigrationFailed(
        f"Cannot upgrade {start} -> {_revision_value(targets)}: {cause}; the transaction was rolled back, the "
        f"database is still at {start}, no archived row restored. Fix the cause and run again."
    )


# -- many databases --------------------------------------------------------------------------------


# -- the plugin ------------------------------------------------------------------------------------
