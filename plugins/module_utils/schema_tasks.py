# Copyright: contributors to the emergency-rollback runbook
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The logic of the schema plugins (schema_migration, schema_state) over one database or many.

`run_schema_migration(params, check_mode, diff)` and `run_schema_state(params, check_mode, diff)`
take the validated task options (plugins/module_utils/pg_options.py) and return the task's result
(plugins/module_utils/runbook_plugin.py): with `dsn` (or ROLLBACK_DB_DSN) the keys of one database
at the top level; with `databases`, one entry per database in `databases`, in order, and a failure
naming every database that failed after all of them were tried.
"""

from __future__ import annotations

import contextlib
import io
import os

from ansible.module_utils.alembic_runner import HAS_ALEMBIC, new_run_id, revert_database, revert_databases
from ansible.module_utils.pg_session import DSN_ENV_VAR, HAS_PSYCOPG2
from ansible.module_utils.runbook_plugin import NO_LOG_VALUES_KEY
from ansible.module_utils.schema_errors import SchemaError
from ansible.module_utils.schema_jobs import GUARDED_OPTIONS
from ansible.module_utils.schema_rollback_points import project_heads, read_state, read_states
from ansible.module_utils.sql_analysis import HAS_PGLAST

if not (HAS_ALEMBIC and HAS_PSYCOPG2 and HAS_PGLAST):  # the plugin then says which library is missing
    raise ImportError("alembic, SQLAlchemy, psycopg2 or pglast is not installed")

REQUIRES = "alembic, SQLAlchemy, psycopg2 and pglast"
MIGRATION_JOB_OPTIONS = (*GUARDED_OPTIONS, "script", "archive", "accept_data_statements", "report_query_text")
STATE_JOB_OPTIONS = (
    "tool",
    "record_rollback_point",
    "fingerprint",
    "error_rate_baseline",
    "recorded_by",
    "run_id",
    "note",
    "include_objects",
    "advisory_lock_wait",
    "application_name",
    "connect_timeout",
    "require_verified_tls",
)


def expected_for(expected, name: str | None) -> str | None:
    """The approved sha256 for one database (None: no check); ValueError for a bad shape."""
    if expected is None or expected == "":
        return None
    if isinstance(expected, str):
        return expected
    if isinstance(expected, dict) and name is not None:
        if name not in expected:
            raise ValueError(f"expected_sql_sha256 has no entry for database {name}: approve its plan too.")
        value = expected[name]
        # None: the approved plan had nothing to do; if there is something now, that is a change.
        return "none (nothing to do when approved)" if value in (None, "") else str(value)
    raise ValueError("expected_sql_sha256 must be a string (or, with databases, a dict of database name to sha256).")


def duplicate_names(databases: list[dict]) -> str | None:
    """One sentence if `databases` is empty or repeats a name, else None."""
    names = [db["name"] for db in databases]
    if not names:
        return "databases is empty: list at least one {name, dsn}."
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        return f"Database names must be unique in databases; repeated: {', '.join(repeated)}."
    return None


def single_result(result: dict, dsn: str | None) -> dict:
    """One database's result as the task's (`dsn` kept out of the log)."""
    for key in ("name", "check_mode"):
        result.pop(key, None)
    if dsn:
        result[NO_LOG_VALUES_KEY] = [dsn]
    return result


def databases_result(results: list[dict], verb: str, extra: dict) -> dict:
    """Many databases' results as the task's, failed naming every database that failed."""
    failed = [r for r in results if r["failed"]]
    summary = {"changed": any(r["changed"] for r in results), "databases": results, **extra}
    if failed:
        return {
            **summary,
            "failed": True,
            "msg": f"Cannot {verb} {len(failed)} of {len(results)} database(s): "
            + "; ".join(f"{r['name']}: {r['msg']}" for r in failed),
        }
    return summary


def run_schema_migration(params: dict, check_mode: bool = False, diff: bool = False) -> dict:
    """The schema_migration plugin (see its documentation)."""
    if params["parallel"] < 1:
        return {"changed": False, "failed": True, "msg": "parallel must be at least 1."}
    base = {key: params[key] for key in MIGRATION_JOB_OPTIONS}
    base.update(check_mode=check_mode, run_id=params["run_id"] or new_run_id())
    if params["databases"] is None:
        dsn = params["dsn"] or os.environ.get(DSN_ENV_VAR)
        try:
            expected = expected_for(params["expected_sql_sha256"], None)
        except ValueError as exc:
            return {"changed": False, "failed": True, "msg": str(exc)}
        with contextlib.redirect_stdout(io.StringIO()):  # a migration's print() is not our result
            result = revert_database({**base, "dsn": dsn, "expected_sql_sha256": expected})
        return single_result(result, dsn)
    problem = duplicate_names(params["databases"])
    if problem:
        return {"changed": False, "failed": True, "msg": problem}
    jobs, refused = [], {}
    for db in params["databases"]:
        try:
            expected = expected_for(params["expected_sql_sha256"], db["name"])
        except ValueError as exc:
            refused[db["name"]] = str(exc)
            continue
        jobs.append({**base, "name": db["name"], "dsn": db["dsn"], "expected_sql_sha256": expected})
    with contextlib.redirect_stdout(io.StringIO()):
        done = {r["name"]: r for r in revert_databases(jobs, params["parallel"], params["database_timeout"])}
    results = [
        done.get(db["name"])
        or {"name": db["name"], "changed": False, "failed": True, "msg": refused[db["name"]], "run_id": base["run_id"]}
        for db in params["databases"]
    ]
    extra = {
        "run_id": base["run_id"],
        "to_revision": next((r.get("to_revision") for r in results if not r["failed"]), None),
        "accepted_data_statements": sorted(set(base.get("accept_data_statements") or [])),
    }
    summary = databases_result(results, "revert", extra)
    if not summary.get("failed"):
        verb = "would be reverted" if check_mode else "reverted"
        summary["msg"] = (
            f"{sum(r['changed'] for r in results)} of {len(results)} database(s) {verb}; "
            f"{sum(not r['changed'] for r in results)} already at the target."
        )
    return summary


def run_schema_state(params: dict, check_mode: bool = False, diff: bool = False) -> dict:
    """The schema_state plugin (see its documentation)."""
    try:
        script_heads, reader = project_heads(params)
    except SchemaError as exc:
        return {"changed": False, "failed": True, "msg": str(exc)}
    base = {key: params[key] for key in STATE_JOB_OPTIONS}
    base.update(check_mode=check_mode, reader=reader)
    if params["databases"] is None:
        dsn = params["dsn"] or os.environ.get(DSN_ENV_VAR)
        result = single_result(read_state({**base, "dsn": dsn}), dsn)
        result["heads"] = script_heads
        return result
    problem = duplicate_names(params["databases"])
    if problem:
        return {"changed": False, "failed": True, "msg": problem}
    results = read_states([{**base, **db} for db in params["databases"]], max(1, params["parallel"]))
    return databases_result(results, "read", {"heads": script_heads})
