# Copyright: contributors to the emergency-rollback runbook
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The rollback archives of each database, and their retention: list them (status.yml), purge the old ones.

An archive is what one rollback run copied before its downgrade removed rows: the tables
`rollback_archive."<run_id>__..."` listed in `rollback_archive.manifest` under that run id. It holds
customers' rows, possibly personal data, so it is kept only as long as it may be needed:

- restored (deploy.yml's schema_upgrade brought the rows back): purgeable whenever asked for by run id,
  and by age once older than the retention;
- not restored: purgeable only once older than the retention (`retention_days`, never less than
  MIN_RETENTION_DAYS); a purge that names a younger unrestored archive is refused, naming it, and
  purges nothing.

Purging drops the archive tables and keeps the manifest rows, marked `purged_at`, `purged_by`,
`purge_run_id` (columns added by schema_restore.ensure_manifest_columns): the record that the rows
existed, how many, and when they were erased, without the rows. It runs per database in one
transaction behind the runbook's advisory lock (never while a deployment restores or a rollback
archives), with SET LOCAL lock_timeout and statement_timeout. Ages come from the database's clock.
"""

from __future__ import annotations

import contextlib
import os
import time
from concurrent.futures import ThreadPoolExecutor

try:
    from psycopg2 import sql as pgsql
except ImportError:  # pragma: no cover - the module reports missing_required_lib
    pgsql = None

from ansible.module_utils.pg_locks import acquire_advisory_lock
from ansible.module_utils.pg_session import (
    APPLICATION_NAME,
    DSN_ENV_VAR,
    connect,
    first_line,
    pgcode_of,
    redact,
    resolve_dsn,
    set_local_timeouts,
)
from ansible.module_utils.restore_manifest import (
    ARCHIVE_SCHEMA,
    MANIFEST_TABLE,
    describe_entry,
    ensure_manifest_columns,
    read_manifest,
)
from ansible.module_utils.runbook_plugin import NO_LOG_VALUES_KEY
from ansible.module_utils.schema_errors import RefusedError, SchemaError

MIN_RETENTION_DAYS = 7
DAY = 86400.0
RUN_ID_LIMIT = 40


def group_archives(entries: list[dict]) -> list[dict]:
    """The manifest's entries grouped by run id (oldest archive first): one dict per rollback run."""
    runs: dict[str, dict] = {}
    for entry in entries:
        run = runs.setdefault(
            entry["run_id"],
            {
                "run_id": entry["run_id"],
                "archived_at": entry["archived_at"],
                "age_days": round((entry["age_seconds"] or 0.0) / DAY, 2),
                "from_revision": entry["from_revision"],
                "to_revision": entry["to_revision"],
                "tables": [],
                "rows": 0,
                "restored_rows": 0,
                "restore_conflict_rows": 0,
            },
        )
        run["age_days"] = max(run["age_days"], round((entry["age_seconds"] or 0.0) / DAY, 2))
        run["rows"] += entry["row_count"] or 0
        run["restored_rows"] += entry["restored_rows"] or 0
        run["restore_conflict_rows"] += entry["restore_conflict_rows"] or 0
        run["tables"].append(
            {
                "source": describe_entry(entry),
                "archive_table": f'{ARCHIVE_SCHEMA}."{entry["archive_table"]}"',
                "rows": entry["row_count"],
                "restored_at": entry["restored_at"],
                "restore_run_id": entry["restore_run_id"],
                "restored_rows": entry["restored_rows"],
                "restore_conflict_rows": entry["restore_conflict_rows"],
                "restore_outcome": entry["restore_outcome"],
                "purged_at": entry["purged_at"],
                "purge_run_id": entry["purge_run_id"],
            }
        )
    for run in runs.values():
        tables = run["tables"]
        restored = [t for t in tables if t["restored_at"]]
        run["restored"] = "yes" if len(restored) == len(tables) else ("partly" if restored else "no")
        run["restored_at"] = max((t["restored_at"] for t in restored), default=None)
        run["restore_run_ids"] = sorted({t["restore_run_id"] for t in restored if t["restore_run_id"]})
        purged = [t for t in tables if t["purged_at"]]
        run["purged"] = "yes" if len(purged) == len(tables) else ("partly" if purged else "no")
        run["purged_at"] = max((t["purged_at"] for t in purged), default=None)
    return sorted(runs.values(), key=lambda r: r["archived_at"])


def purge_selection(archives: list[dict], *, retention_days: int, run_ids: list[str]) -> tuple[list[dict], list[str]]:
    """(the runs to purge, the refusals: one sentence each). Without run_ids: every unpurged run older than
    the retention. Named runs: each must be restored or older than the retention."""
    if run_ids:
        chosen = [a for a in archives if a["run_id"] in run_ids and a["purged"] != "yes"]
    else:
        chosen = [a for a in archives if a["purged"] != "yes" and a["age_days"] >= retention_days]
    refusals = [
        f"the archive of rollback run {a['run_id']} is not restored and only {a['age_days']:g} day(s) old "
        f"(retention {retention_days} days): restore it with deploy.yml, or purge it after {retention_days} days"
        for a in chosen
        if a["restored"] != "yes" and a["age_days"] < retention_days
    ]
    return chosen, refusals


def archives_defaults() -> dict:
    return {
        "name": None,
        "dsn": None,
        "check_mode": False,
        "purge": False,
        "retention_days": 30,
        "run_ids": [],
        "purged_by": None,
        "run_id": None,
        "lock_timeout": 2.0,
        "statement_timeout": 60.0,
        "advisory_lock_wait": 30.0,
        "application_name": APPLICATION_NAME,
        "connect_timeout": 10,
        "require_verified_tls": False,  # a production-like environment: sslmode=verify-full or refuse
    }


def read_archives(job: dict) -> dict:
    """The archives of one database (read-only snapshot). Never raises."""
    job = {**archives_defaults(), **{k: v for k, v in job.items() if v is not None}}
    result = {"name": job["name"], "changed": False, "failed": False, "msg": "", "archives": []}
    dsn = job["dsn"]
    try:
        dsn = resolve_dsn(dsn)
        conn = connect(dsn, job["application_name"], int(job["connect_timeout"]), bool(job["require_verified_tls"]))
        try:
            conn.set_session(isolation_level="REPEATABLE READ", readonly=True)
            with conn.cursor() as cur:
                set_local_timeouts(cur, float(job["lock_timeout"]), float(job["statement_timeout"]))
                result["archives"] = group_archives(read_manifest(cur))
            conn.rollback()
        finally:
            conn.close()
    except SchemaError as exc:
        result.update(failed=True, msg=redact(str(exc), dsn))
    except Exception as exc:
        result.update(failed=True, msg=redact(f"Cannot read the rollback archives: {first_line(exc)}", dsn))
    if not result["failed"]:
        live = [a for a in result["archives"] if a["purged"] != "yes"]
        result["msg"] = (
            f"{len(live)} archive(s), {sum(a['rows'] for a in live)} row(s); "
            f"{sum(a['restored'] != 'yes' for a in live)} not restored."
        )
    return result


def purge_database(job: dict, run_ids: list[str]) -> dict:
    """Purge the archives of `run_ids` in one database: one transaction, behind the advisory lock. Never raises."""
    job = {**archives_defaults(), **{k: v for k, v in job.items() if v is not None}}
    result = {"name": job["name"], "changed": False, "failed": False, "msg": "", "purged": []}
    dsn = job["dsn"]
    try:
        dsn = resolve_dsn(dsn)
        conn = connect(dsn, job["application_name"], int(job["connect_timeout"]), bool(job["require_verified_tls"]))
        try:
            acquire_advisory_lock(conn, float(job["advisory_lock_wait"]))
            with conn.cursor() as cur:
                set_local_timeouts(cur, float(job["lock_timeout"]), float(job["statement_timeout"]))
                ensure_manifest_columns(cur)
                entries = read_manifest(cur, for_update=True)
                # Checked again under the lock: what was selected may have changed since the plan.
                _chosen, refusals = purge_selection(
                    group_archives(entries), retention_days=int(job["retention_days"]), run_ids=run_ids
                )
                if refusals:
                    raise RefusedError(refusals[0][0].upper() + refusals[0][1:] + "; nothing was purged.")
                for entry in entries:
                    if entry["run_id"] not in run_ids or entry["purged_at"]:
                        continue
                    cur.execute(
                        pgsql.SQL("DROP TABLE IF EXISTS {}").format(
                            pgsql.Identifier(ARCHIVE_SCHEMA, entry["archive_table"])
                        )
                    )
                    cur.execute(
                        pgsql.SQL(
                            "UPDATE {} SET purged_at = now(), purged_by = %s, purge_run_id = %s WHERE id = %s"
                        ).format(pgsql.Identifier(ARCHIVE_SCHEMA, MANIFEST_TABLE)),
                        (job["purged_by"], job["run_id"], entry["id"]),
                    )
                    result["purged"].append(
                        {
                            "run_id": entry["run_id"],
                            "source": describe_entry(entry),
                            "archive_table": f'{ARCHIVE_SCHEMA}."{entry["archive_table"]}"',
                            "rows": entry["row_count"],
                            "restored": bool(entry["restored_at"]),
                        }
                    )
            conn.commit()
        except BaseException:
            with contextlib.suppress(Exception):
                conn.rollback()
            raise
        finally:
            conn.close()
    except SchemaError as exc:
        result.update(failed=True, msg=redact(str(exc), dsn))
    except Exception as exc:
        cause = first_line(exc)
        if pgcode_of(exc) == "55P03":
            cause = f"a lock was not granted within lock_timeout ({float(job['lock_timeout']):g} s): {cause}"
        result.update(failed=True, msg=redact(f"Cannot purge: {cause}; nothing was purged.", dsn))
    result["changed"] = bool(result["purged"]) and not result["failed"]
    if not result["failed"]:
        result["msg"] = (
            f"Purged {len(result['purged'])} archive table(s), {sum(p['rows'] for p in result['purged'])} row(s)."
        )
    return result


# -- the plugin ------------------------------------------------------------------------------------
def duplicate_names(databases: list[dict]) -> str | None:
    """One sentence if `databases` is empty or repeats a name (as schema_tasks says it; without its alembic)."""
    names = [db["name"] for db in databases]
    if not names:
        return "databases is empty: list at least one {name, dsn}."
    repeated = sorted({n for n in names if names.count(n) > 1})
    return f"Database names must be unique in databases; repeated: {', '.join(repeated)}." if repeated else None


def _each(function, jobs: list[dict], parallel: int) -> list[dict]:
    if len(jobs) <= 1 or parallel <= 1:
        return [function(job) for job in jobs]
    with ThreadPoolExecutor(max_workers=min(parallel, len(jobs))) as pool:  # psycopg2 only: threads are fine
        return list(pool.map(function, jobs))


def _check_params(params: dict) -> str | None:
    if params["parallel"] < 1:
        return "parallel must be at least 1."
    if params["retention_days"] < MIN_RETENTION_DAYS:
        return (
            f"retention_days {params['retention_days']} is below the minimum of {MIN_RETENTION_DAYS}: an archive "
            "is the only copy of the rows a rollback removed; give at least "
            f"{MIN_RETENTION_DAYS} (the environment's rollback_archive_retention_days)."
        )
    bad = [r for r in params["run_ids"] or [] if not r or len(r) > RUN_ID_LIMIT]
    if bad:
        return f"run_ids holds {bad[0]!r}, which is not a rollback run id: copy the run id status.yml shows."
    if params["run_ids"] and not params["purge"]:
        return "run_ids selects archives to purge: set purge true, or drop run_ids to list every archive."
    return None


def run_rollback_archive(params: dict, check_mode: bool = False, diff: bool = False) -> dict:
    """The rollback_archive plugin (see plugins/modules/rollback_archive.py)."""
    problem = _check_params(params)
    if problem:
        return {"changed": False, "failed": True, "msg": problem}
    base = {
        key: params[key]
        for key in (
            "retention_days",
            "purged_by",
            "run_id",
            "lock_timeout",
            "statement_timeout",
            "advisory_lock_wait",
            "application_name",
            "connect_timeout",
            "require_verified_tls",
        )
    }
    base["run_id"] = base["run_id"] or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    single = params["databases"] is None
    if single:
        dsn = params["dsn"] or os.environ.get(DSN_ENV_VAR)
        databases = [{"name": None, "dsn": dsn}]
    else:
        problem = duplicate_names(params["databases"])
        if problem:
            return {"changed": False, "failed": True, "msg": problem}
        databases = params["databases"]
    jobs = [{**base, "name": db["name"], "dsn": db["dsn"]} for db in databases]
    results = _each(read_archives, jobs, params["parallel"])
    outcome = _purge(params, check_mode, jobs, results) if params["purge"] else _listing(results)
    if single:
        only = outcome.pop("databases")[0]
        only.pop("name", None)
        # The overall changed/failed/msg win over the database's, except a listing's own sentence.
        outcome = {**only, **outcome} if params["purge"] or outcome.get("failed") else {**outcome, **only}
        if databases[0]["dsn"]:
            outcome[NO_LOG_VALUES_KEY] = [databases[0]["dsn"]]
    return outcome


def _labelled(result: dict) -> str:
    return f"{result['name']}: {result['msg']}" if result["name"] else result["msg"]


def _listing(results: list[dict]) -> dict:
    failed = [r for r in results if r["failed"]]
    if failed:
        return {
            "changed": False,
            "failed": True,
            "databases": results,
            "msg": f"Cannot read the archives of {len(failed)} of {len(results)} database(s): "
            + "; ".join(_labelled(r) for r in failed),
        }
    live = [a for r in results for a in r["archives"] if a["purged"] != "yes"]
    return {
        "changed": False,
        "databases": results,
        "msg": f"{len(live)} archive(s) in {len(results)} database(s), {sum(a['rows'] for a in live)} row(s); "
        f"{sum(a['restored'] != 'yes' for a in live)} not restored.",
    }


def _purge(params: dict, check_mode: bool, jobs: list[dict], results: list[dict]) -> dict:
    listing = _listing(results)
    if listing.get("failed"):
        return listing
    retention = int(params["retention_days"])
    wanted = [str(r) for r in params["run_ids"] or []]
    known = {a["run_id"] for r in results for a in r["archives"]}
    unknown = [r for r in wanted if r not in known]
    if unknown:
        return {
            **listing,
            "failed": True,
            "msg": f"No database has an archive of rollback run {', '.join(unknown)}: copy the run id from "
            "status.yml; nothing was purged.",
        }
    plans, refusals = [], []
    for result in results:
        chosen, refused = purge_selection(result["archives"], retention_days=retention, run_ids=wanted)
        result["would_purge"] = [
            {"run_id": a["run_id"], "age_days": a["age_days"], "rows": a["rows"], "restored": a["restored"]}
            for a in chosen
        ]
        plans.append(chosen)
        refusals += [f"{result['name']}: {r}" if result["name"] else r for r in refused]
    if refusals:
        return {**listing, "failed": True, "msg": f"Refused: {'; '.join(refusals)}; nothing was purged."}
    total_rows = sum(a["rows"] for chosen in plans for a in chosen)
    total_runs = sum(len(chosen) for chosen in plans)
    if check_mode or not total_runs:
        verb = "Would purge" if check_mode else "Purged"
        return {
            **listing,
            "changed": bool(total_runs),
            "msg": f"{verb} {total_runs} archive(s), {total_rows} row(s) (retention {retention} days).",
        }
    done = []
    for job, result, chosen in zip(jobs, results, plans, strict=True):
        if not chosen:
            done.append({**result, "purged": []})
            continue
        purged = purge_database(job, [a["run_id"] for a in chosen])
        done.append({**result, **{k: purged[k] for k in ("changed", "failed", "msg", "purged")}})
    failed = [r for r in done if r["failed"]]
    rows = sum(p["rows"] for r in done for p in r.get("purged", []))
    summary = {"changed": any(r["changed"] for r in done), "databases": done}
    if failed:
        return {
            **summary,
            "failed": True,
            "msg": f"Cannot purge {len(failed)} of {len(done)} database(s): " + "; ".join(_labelled(r) for r in failed),
        }
    return {**summary, "msg": f"Purged {total_runs} archive(s), {rows} row(s) (retention {retention} days)."}
