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
import os
import time

try:
    from alembic.config import Config
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    HAS_ALEMBIC = True
except ImportError:  # pragma: no cover - the module reports missing_required_lib
    HAS_ALEMBIC = False

from ansible.module_utils.alembic_runner import ForeignConnection, database_budget
from ansible.module_utils.pg_session import (
    DSN_ENV_VAR,
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
from ansible.module_utils.runbook_plugin import NO_LOG_VALUES_KEY
from ansible.module_utils.schema_alembic import (
    BASE,
    ENV_PY_FIX,
    _escape,
    _project,
    _run_env,
    ancestors,
    env_py_reads_connection,
    heads,
    read_revisions,
    resolve_target,
    version_table,
)
from ansible.module_utils.schema_errors import LockTimeoutExhausted, MigrationFailed, RefusedError, SchemaError
from ansible.module_utils.schema_restore import (
    RestoreConflicts,
    RestoreError,
    describe_conflicts,
    ensure_manifest_columns,
    mark_restored,
    outcome_of,
    read_manifest,
    restore_entry,
    restore_order,
    target_exists,
)
from ansible.module_utils.schema_revert import backoff_seconds, new_run_id, validate_job
from ansible.module_utils.schema_tasks import duplicate_names
from ansible.module_utils.worker_pool import run_jobs


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
def resolve_targets(script, revision: str) -> tuple[str, tuple[str, ...]]:
    """(alembic's destination, the revisions the database must be at afterwards)."""
    revision = str(revision or "heads").strip()
    if revision in ("heads", "head"):
        found = tuple(heads(script))
        if revision == "head" and len(found) != 1:
            raise RefusedError(
                f"The script directory has multiple heads ({', '.join(found)}), so 'head' is ambiguous: "
                "give 'heads' or one revision id."
            )
        return "heads", found
    target = resolve_target(script, revision)
    if target == BASE:
        raise RefusedError("revision base would remove every migration: schema_upgrade only upgrades.")
    return target, (target,)


def check_upgrade(script, current: tuple[str, ...], targets: tuple[str, ...]) -> None:
    """Refuse (RefusedError) unless every current revision is at or below a target: never a downgrade."""
    below: set[str] = set()
    for target in targets:
        below |= ancestors(script, target)
    for rev in current:
        try:
            script.get_revision(rev)
        except Exception:
            raise RefusedError(
                f"The database is at revision {rev}, which the script directory does not contain: deploy with "
                "the migrations of a release that knows it."
            ) from None
        if rev not in below:
            raise RefusedError(
                f"The database is at {rev}, which is not below the target {', '.join(targets)}: schema_upgrade "
                "never downgrades (rollback.yml does); choose a later revision."
            )


def upgrade_steps(script, current: tuple[str, ...], destination: str) -> list[dict]:
    steps = script._upgrade_revs(destination, current or None)
    return [
        {"revision": s.revision.revision, "down_revision": s.revision.down_revision, "doc": s.revision.doc}
        for s in steps
    ]


def _revision_value(revisions) -> str | None:
    return ",".join(sorted(revisions)) if revisions else None


def _run_upgrade(project, script, conn, destination: str) -> None:
    """alembic's `upgrade` on the caller's connection, inside the caller's transaction, the way the revert runs
    its downgrade (alembic_runner.AlembicTool.run): env.py gets the connection in config.attributes, and any
    connection of its own is refused before its first statement."""
    cfg = Config(file_=project.config_file_name, toml_file=project.toml_file_name)
    for key, value in project.get_section(project.config_ini_section, {}).items():
        cfg.set_main_option(key, _escape(value))
    cfg.attributes.update(connection=conn, configure_logger=False)
    own = conn.engine

    def refuse_foreign(connection, *_args) -> None:
        if connection.engine is not own:
            raise ForeignConnection(
                f"{os.path.join(script.dir, 'env.py')} opened a database connection of its own; the upgrade runs "
                "only on the module's connection (config.attributes['connection'], see env_py_fix)"
            )

    event.listen(Engine, "engine_connect", refuse_foreign)
    try:
        _run_env(
            cfg,
            script,
            fn=lambda rev, _ctx: script._upgrade_revs(destination, rev),
            as_sql=False,
            destination_rev=destination,
        )
    finally:
        event.remove(Engine, "engine_connect", refuse_foreign)


def check_env_py(script) -> None:
    """Refuse (before any DDL) an env.py that ignores the connection handed to it: its upgrade would run on a
    connection without the advisory lock and timeouts, and outside the restore's transaction."""
    env_py = os.path.join(script.dir, "env.py")
    if not env_py_reads_connection(env_py):
        error = RefusedError(
            f"{env_py} ignores the connection the module hands it (config.attributes['connection']), so its upgrade "
            "would run outside the runbook's guards and the restore's transaction: refused before any DDL; add the "
            "lines of env_py_fix at the top of run_migrations_online(), then run again."
        )
        error.details = {"env_py": env_py, "env_py_fix": ENV_PY_FIX}
        raise error


# -- the restore's part ----------------------------------------------------------------------------
def applicable(entries: list[dict], reached: set[str]) -> tuple[list[dict], list[dict]]:
    """(entries whose from_revision the database is back at or beyond, the others: waiting)."""
    ready = [e for e in entries if e.get("from_revision") in reached]
    waiting = [e for e in entries if e.get("from_revision") not in reached]
    return ready, waiting


def after_upgrade(cursor, script, pending: list[dict], before: dict, targets) -> tuple[list, list, set]:
    """(entries to restore now, entries waiting, the columns this transaction created), after the upgrade.

    An entry is restored when the database is back at (or beyond) its from_revision, or when this
    transaction (re)created its table or column, at whatever revision: a later upgrade would find the
    column holding the upgrade's defaults, or values written since, and could no longer tell them apart.
    A column this transaction created holds the upgrade's defaults: the archived values replace them."""
    reached: set[str] = set()
    for target in targets:
        reached |= ancestors(script, target)
    ready, waiting, fresh = [], [], set()
    for entry in pending:
        level = 1 if entry.get("source_column") else 0
        created = target_exists(cursor, entry)[level] and not before[entry["id"]][level]
        if entry.get("from_revision") in reached or created:
            ready.append(entry)
            if created and level:
                fresh.add((entry["source_schema"], entry["source_table"], entry["source_column"]))
        else:
            waiting.append(entry)
    return ready, waiting, fresh


def restore_summary(reports: list[dict], waiting: list[dict], accepted: set[str]) -> dict:
    runs = sorted({r["run_id"] for r in reports})
    return {
        "archives": reports,
        "runs": runs,
        "rows_restored": sum(r["restored"] for r in reports),
        "already_present": sum(r["already_present"] for r in reports),
        "conflict_rows": sum(r["conflict_rows"] for r in reports),
        "conflicting_runs": sorted({r["run_id"] for r in reports if r["conflict_rows"]}),
        "accepted": sorted({r["run_id"] for r in reports if r["conflict_rows"] and r["run_id"] in accepted}),
        "predicted": any(r["predicted"] for r in reports),
        "waiting": [
            {"run_id": e["run_id"], "source": _source(e), "from_revision": e.get("from_revision")} for e in waiting
        ],
    }


def _source(entry: dict) -> str:
    what = f"{entry['source_schema']}.{entry['source_table']}"
    return what + (f".{entry['source_column']}" if entry.get("source_column") else "")


def conflicts_message(summary: dict, unaccepted: list[str]) -> str:
    reports = [r for r in summary["archives"] if r["run_id"] in unaccepted and r["conflict_rows"]]
    rows = sum(r["conflict_rows"] for r in reports)
    runs = ", ".join(unaccepted)
    return (
        f"{rows} archived row(s) of rollback run {runs} cannot be restored without overwriting or losing data "
        f"({describe_conflicts(reports)}): nothing was changed, the upgrade was rolled back with the restore; "
        f"review them (check mode lists them), then accept with accept_conflicts [{runs}] "
        "(deploy.yml: -e deploy_accept_restore_conflicts=<run id>) to restore the other rows and keep these in "
        "the archive."
    )


def restore_in_transaction(cursor, entries: list[dict], *, fresh: set, job: dict, apply: bool) -> dict:
    """Restore (or analyse) `entries` in the caller's transaction; mark them when applying.

    Raises RestoreConflicts (applying) when an entry of a run not in accept_conflicts has conflicts."""
    accepted = set(job.get("accept_conflicts") or [])
    if apply and entries:
        ensure_manifest_columns(cursor)
    reports = [restore_entry(cursor, e, apply=apply, fresh_columns=fresh) for e in restore_order(cursor, entries)]
    summary = restore_summary(reports, [], accepted)
    unaccepted = [run for run in summary["conflicting_runs"] if run not in accepted]
    for report in reports:
        report["accepted"] = report["run_id"] in accepted and bool(report["conflict_rows"])
        report["outcome"] = outcome_of(report, report["accepted"])
    if apply and unaccepted:
        raise RestoreConflicts(conflicts_message(summary, unaccepted), summary)
    if apply:
        by_id = {e["id"]: e for e in entries}
        for report in reports:
            mark_restored(
                cursor, by_id[report["id"]], run_id=job["run_id"], restored_by=job["restored_by"], report=report
            )
    return summary


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
def _lost_database(job: dict, reason: str) -> dict:
    return {
        "name": job.get("name"),
        "changed": False,
        "failed": True,
        "check_mode": bool(job.get("check_mode")),
        "run_id": job.get("run_id"),
        "from_revision": None,
        "to_revision": None,
        "steps": [],
        "attempts": 0,
        "attempt_log": [],
        "lock_wait_seconds": 0.0,
        "restore": None,
        "msg": redact(
            f"Cannot tell whether the upgrade finished: {reason}. Its transaction was not committed by this run "
            "unless the database now reports the target revision: read its state (status.yml) before running again.",
            job.get("dsn"),
        ),
    }


def upgrade_databases(jobs: list[dict], parallel: int = 2, database_timeout: float | None = None) -> list[dict]:
    """upgrade_database() for every job, at most `parallel` at a time (new interpreters), results in job order."""
    if database_timeout:
        jobs = [{**job, "database_timeout": database_timeout} for job in jobs]
    workers = max(1, min(int(parallel), len(jobs)))
    if workers == 1:
        return [upgrade_database(job) for job in jobs]
    return run_jobs(
        "ansible.module_utils.upgrade_runner:upgrade_database", jobs, workers, database_budget, _lost_database
    )


# -- the plugin ------------------------------------------------------------------------------------
JOB_OPTIONS = (
    "tool",
    "config_file",
    "script_location",
    "version_locations",
    "revision",
    "restore",
    "accept_conflicts",
    "restored_by",
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


def run_schema_upgrade(params: dict, check_mode: bool = False, diff: bool = False) -> dict:
    """The schema_upgrade plugin (see plugins/modules/schema_upgrade.py)."""
    if params["parallel"] < 1:
        return {"changed": False, "failed": True, "msg": "parallel must be at least 1."}
    base = {key: params[key] for key in JOB_OPTIONS}
    base.update(check_mode=check_mode, run_id=params["run_id"] or new_run_id())
    base["accept_conflicts"] = [str(r).strip() for r in base["accept_conflicts"] or [] if str(r).strip()]
    if params["databases"] is None:
        dsn = params["dsn"] or os.environ.get(DSN_ENV_VAR)
        result = upgrade_database({**base, "dsn": dsn})
        for key in ("name", "check_mode"):
            result.pop(key, None)
        if dsn:
            result[NO_LOG_VALUES_KEY] = [dsn]
        return result
    problem = duplicate_names(params["databases"])
    if problem:
        return {"changed": False, "failed": True, "msg": problem}
    jobs = [{**base, "name": db["name"], "dsn": db["dsn"]} for db in params["databases"]]
    results = upgrade_databases(jobs, params["parallel"], params["database_timeout"])
    failed = [r for r in results if r["failed"]]
    restored = sum((r.get("restore") or {}).get("rows_restored", 0) for r in results if not r["failed"])
    summary = {
        "changed": any(r["changed"] for r in results),
        "databases": results,
        "run_id": base["run_id"],
        "rows_restored": restored,
    }
    if failed:
        return {
            **summary,
            "failed": True,
            "msg": f"Cannot upgrade {len(failed)} of {len(results)} database(s): "
            + "; ".join(f"{r['name']}: {r['msg']}" for r in failed),
        }
    verb = ("would be upgraded", "would be restored") if check_mode else ("upgraded", "restored")
    summary["msg"] = (
        f"{sum(bool(r['steps']) for r in results)} of {len(results)} database(s) {verb[0]}; "
        f"{restored} archived row(s) {verb[1]}."
    )
    return summary
