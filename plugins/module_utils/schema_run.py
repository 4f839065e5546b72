"""The logic of the schema_migration and schema_state modules, as plain functions of their params.

`run_schema_migration(params, check_mode)` and `run_schema_state(params, check_mode)` take the
validated module params (pg_options' specs, defaults filled) and return the result dict
({"changed", "msg", ...}, and {"failed": True, "msg": <one sentence>} on failure). They never print
and never raise for expected failures, so that the module (AnsiballZ) and the action plugin
(in-process) return the same thing.
"""

from __future__ import annotations

import contextlib
import io
import os

try:
    from ansible.module_utils.alembic_runner import HAS_ALEMBIC, revert_database, revert_databases
    from ansible.module_utils.pg_session import DSN_ENV_VAR, HAS_PSYCOPG2
    from ansible.module_utils.schema_errors import SchemaError
    from ansible.module_utils.schema_revert import new_run_id
    from ansible.module_utils.sql_analysis import HAS_PGLAST

    IMPORT_ERROR = None if HAS_ALEMBIC and HAS_PSYCOPG2 and HAS_PGLAST else "alembic, psycopg2 or pglast is missing"
except ImportError as exc:  # pragma: no cover - the module reports missing_required_lib
    IMPORT_ERROR = str(exc)
    DSN_ENV_VAR = "ROLLBACK_DB_DSN"

MIGRATION_JOB_OPTIONS = (
    "tool",
    "config_file",
    "script_location",
    "version_locations",
    "script",
    "revision",
    "lock_timeout",
    "lock_attempts",
    "lock_backoff",
    "lock_backoff_max",
    "statement_timeout",
    "advisory_lock_wait",
    "archive",
    "accept_data_statements",
    "application_name",
    "connect_timeout",
)
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
)
REQUIRED_LIBS = "alembic, SQLAlchemy, psycopg2 and pglast"


def env_dsn(params: dict) -> str | None:
    """The DSN a single-database call uses (the option, else ROLLBACK_DB_DSN): callers mark it no_log."""
    return params.get("dsn") or os.environ.get(DSN_ENV_VAR)


def _expected_for(expected, name: str | None):
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


def _duplicates(databases: list[dict]) -> list[str]:
    names = [db["name"] for db in databases]
    return sorted({n for n in names if names.count(n) > 1})


def run_schema_migration(params: dict, check_mode: bool = False, diff: bool = False) -> dict:
    """schema_migration: plan (check mode) or revert one database or many (see the module's docs)."""
    if IMPORT_ERROR is not None:
        return {"failed": True, "changed": False, "msg": f"{REQUIRED_LIBS} must be installed: {IMPORT_ERROR}."}
    if params["parallel"] < 1:
        return {"failed": True, "changed": False, "msg": "parallel must be at least 1."}
    base = {key: params.get(key) for key in MIGRATION_JOB_OPTIONS}
    base.update(check_mode=check_mode, run_id=params.get("run_id") or new_run_id())
    if params.get("databases") is None:
        try:
            expected = _expected_for(params.get("expected_sql_sha256"), None)
        except ValueError as exc:
            return {"failed": True, "changed": False, "msg": str(exc)}
        with contextlib.redirect_stdout(io.StringIO()):
            result = revert_database({**base, "dsn": env_dsn(params), "expected_sql_sha256": expected})
        for key in ("name", "check_mode"):
            result.pop(key, None)
        return result
    return _many_databases(params, base, check_mode)


def _many_databases(params: dict, base: dict, check_mode: bool) -> dict:
    databases = params["databases"]
    if not databases:
        return {"failed": True, "changed": False, "msg": "databases is empty: list at least one {name, dsn}."}
    duplicates = _duplicates(databases)
    if duplicates:
        return {
            "failed": True,
            "changed": False,
            "msg": f"Database names must be unique in databases; repeated: {', '.join(duplicates)}.",
        }
    jobs, refused = [], {}
    for db in databases:
        try:
            expected = _expected_for(params.get("expected_sql_sha256"), db["name"])
        except ValueError as exc:
            refused[db["name"]] = str(exc)
            continue
        jobs.append({**base, "name": db["name"], "dsn": db["dsn"], "expected_sql_sha256": expected})
    with contextlib.redirect_stdout(io.StringIO()):
        done = {r["name"]: r for r in revert_databases(jobs, params["parallel"])} if jobs else {}
    results = [
        done.get(db["name"])
        or {"name": db["name"], "changed": False, "failed": True, "msg": refused[db["name"]], "run_id": base["run_id"]}
        for db in databases
    ]
    failed = [r for r in results if r["failed"]]
    summary = {
        "changed": any(r["changed"] for r in results),
        "databases": results,
        "run_id": base["run_id"],
        "to_revision": next((r.get("to_revision") for r in results if not r["failed"]), None),
        "accepted_data_statements": sorted(set(base.get("accept_data_statements") or [])),
    }
    if failed:
        return {
            **summary,
            "failed": True,
            "msg": f"Cannot revert {len(failed)} of {len(results)} database(s): "
            + "; ".join(f"{r['name']}: {r['msg']}" for r in failed),
        }
    verb = "would be reverted" if check_mode else "reverted"
    return {
        **summary,
        "failed": False,
        "msg": f"{sum(r['changed'] for r in results)} of {len(results)} database(s) {verb}; "
        f"{sum(not r['changed'] for r in results)} already at the target.",
    }


def run_schema_state(params: dict, check_mode: bool = False, diff: bool = False) -> dict:
    """schema_state: revision, fingerprint and rollback point of one database or many."""
    if IMPORT_ERROR is not None:
        return {"failed": True, "changed": False, "msg": f"{REQUIRED_LIBS} must be installed: {IMPORT_ERROR}."}
    from ansible.module_utils.schema_rollback_points import project_heads, read_state, read_states  # noqa: PLC0415

    try:
        script_heads, reader = project_heads(params)
    except SchemaError as exc:
        return {"failed": True, "changed": False, "msg": str(exc)}
    base = {key: params.get(key) for key in STATE_JOB_OPTIONS}
    base.update(check_mode=check_mode, reader=reader)
    if params.get("databases") is None:
        result = read_state({**base, "dsn": env_dsn(params)})
        result.pop("name", None)
        result["heads"] = script_heads
        return result
    duplicates = _duplicates(params["databases"])
    if duplicates:
        return {
            "failed": True,
            "changed": False,
            "msg": f"Database names must be unique in databases; repeated: {', '.join(duplicates)}.",
        }
    results = read_states([{**base, **db} for db in params["databases"]], max(1, params["parallel"]))
    failed = [r for r in results if r["failed"]]
    summary = {"changed": any(r["changed"] for r in results), "heads": script_heads, "databases": results}
    if failed:
        return {
            **summary,
            "failed": True,
            "msg": f"Cannot read {len(failed)} of {len(results)} database(s): "
            + "; ".join(f"{r['name']}: {r['msg']}" for r in failed),
        }
    return {**summary, "failed": False}
