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
take (accept_conflicts, restore). Both share the guards' code: schema_jobs (the session and its
advisory lock, the attempts with their timeouts, retries, backoff and blocking sessions, the result's
bookkeeping, many databases), schema_alembic (script directory, targets, revisions) and pg_session
(connections, redaction).
"""

from __future__ import annotations

import contextlib
import io

from ansible.module_utils.restore_catalog import target_exists
from ansible.module_utils.restore_manifest import RestoreConflicts, describe_conflicts, read_manifest
from ansible.module_utils.restore_transaction import after_upgrade, applicable, restore_in_transaction, restore_summary
from ansible.module_utils.schema_alembic import BASE, ancestors, load_project, read_revisions, version_table
from ansible.module_utils.schema_errors import MigrationFailed, RefusedError, SchemaError
from ansible.module_utils.schema_jobs import (
    attempts,
    failure_cause,
    finish,
    guarded_job_defaults,
    guarded_result,
    locked_session,
    revision_value,
    rolled_back_cursor,
)
from ansible.module_utils.schema_revert import validate_job
from ansible.module_utils.upgrade_alembic import (
    check_env_py,
    check_upgrade,
    resolve_targets,
    run_upgrade,
    upgrade_steps,
)


def upgrade_job_defaults() -> dict:
    """Every key of an upgrade job, with its default (times in seconds): schema_jobs.guarded_job_defaults()
    and these."""
    return {
        **guarded_job_defaults(),
        "tool": "alembic",  # only alembic: an EF Core up script commits per migration (see _upgrade)
        "revision": "heads",
        "restore": True,
        "accept_conflicts": [],
        "restored_by": None,
    }


# -- one database ----------------------------------------------------------------------------------
def upgrade_database(job: dict) -> dict:
    """Plan or apply the upgrade and restore of one database. Never raises: failures are in `failed`/`msg`."""
    result = guarded_result(job, restore=None)

    def change(dsn: str) -> None:
        full = {**upgrade_job_defaults(), **{k: v for k, v in job.items() if v is not None}, "dsn": dsn}
        _upgrade({**upgrade_job_defaults(), **validate_job(full)}, result)

    return finish(job, result, change, "upgrade", _summary)


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
    project, script = load_project(job["script_location"], job["version_locations"], job["config_file"])
    version = version_table(project, script)
    destination, targets = resolve_targets(script, job["revision"])
    result["to_revision"] = revision_value(targets)

    def read_current(cur) -> tuple[str, ...]:
        return read_revisions(cur, version) or ()

    with locked_session(job, result, read_current) as (conn, pid, current):
        result["from_revision"] = revision_value(current)
        check_upgrade(script, current, targets)
        steps = [] if set(current) == set(targets) else upgrade_steps(script, current, destination)
        result["steps"] = steps
        reached: set[str] = set()
        for target in targets:
            reached |= ancestors(script, target)
        # What is pending, and (check mode) what would be restored: one transaction, rolled back.
        with rolled_back_cursor(conn, job) as cur:
            pending = read_manifest(cur, pending_only=True) if job["restore"] else []
            ready, waiting = applicable(pending, reached)
            if job["check_mode"]:
                summary = restore_in_transaction(cur, ready, fresh=set(), job=job, apply=False)
                summary["waiting"] = restore_summary([], waiting, set())["waiting"]
                result["restore"] = summary
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


def _apply(job, alembic, conn, *, pid, current, destination, targets, result) -> None:
    """The attempts (schema_jobs.attempts) of: the pending archives (FOR UPDATE), the upgrade, the
    revision reached, the restore."""
    project, script, version = alembic
    raw = conn.connection.driver_connection
    start, end = revision_value(current) or BASE, revision_value(targets)

    def attempt() -> dict:
        with contextlib.redirect_stdout(io.StringIO()):  # a migration's print() is not our result
            with raw.cursor() as cur:
                pending = read_manifest(cur, pending_only=True, for_update=True) if job["restore"] else []
                before = {e["id"]: target_exists(cur, e) for e in pending}
            if result["steps"]:
                run_upgrade(project, script, conn, destination)
            with raw.cursor() as cur:
                reached_now = read_revisions(cur, version) or ()
                if set(reached_now) != set(targets):
                    raise MigrationFailed(f"the upgrade ended at {revision_value(reached_now) or BASE}, not {end}")
                ready, waiting, fresh = after_upgrade(cur, script, pending, before, targets)
                summary = restore_in_transaction(cur, ready, fresh=fresh, job=job, apply=True)
                summary["waiting"] = restore_summary([], waiting, set())["waiting"]
            return summary

    failure = lambda exc, code: _failure(exc, code, start, end, job)  # noqa: E731
    change, unchanged = f"upgrade {start} -> {end}", "the database is unchanged, nothing restored"
    result["restore"] = attempts(
        job, (conn, pid), result, attempt, change=change, unchanged=unchanged, failure=failure, keep=(RestoreConflicts,)
    )


def _failure(exc: BaseException, code: str | None, start: str, end: str, job: dict) -> SchemaError:
    cause = failure_cause(exc, code, job, "raise it for a large upgrade or restore")
    return MigrationFailed(
        f"Cannot upgrade {start} -> {end}: {cause}; the transaction was rolled back, the "
        f"database is still at {start}, no archived row restored. Fix the cause and run again."
    )
