# Copyright: contributors to the emergency-rollback runbook
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The argument specs of the plugins that work on the application databases (schema_migration,
schema_state), as AnsibleModule's keyword arguments.

Kept apart from pg_session and the migration tools (which need psycopg2, alembic, pglast) and
importing nothing optional, so that a plugin can always build its spec and then say which library is
missing, on a controller without the database libraries.
"""

from __future__ import annotations

TOOLS = ["alembic", "efcore"]


def database_argument_spec(parallel: int) -> dict:
    """One database (`dsn`) or many (`databases`), the script directory, and connection settings."""
    return {
        "dsn": {"type": "str", "no_log": True},
        "databases": {
            "type": "list",
            "elements": "dict",
            "options": {
                "name": {"type": "str", "required": True},
                "dsn": {"type": "str", "required": True, "no_log": True},
            },
        },
        "parallel": {"type": "int", "default": parallel},
        "tool": {"type": "str", "default": "alembic", "choices": TOOLS},
        "config_file": {"type": "path"},
        "script_location": {"type": "path", "default": "migrations"},
        "version_locations": {"type": "list", "elements": "path"},
        "advisory_lock_wait": {"type": "float", "default": 30.0},
        "run_id": {"type": "str"},
        "application_name": {"type": "str", "default": "emergency-rollback"},
        "connect_timeout": {"type": "int", "default": 10},
        # A production-like environment: refuse any connection but sslmode=verify-full with a CA.
        "require_verified_tls": {"type": "bool", "default": False},
    }


def attempts_argument_spec() -> dict:
    """The options of the guarded attempts (schema_jobs.attempts), with their defaults."""
    return {
        "lock_timeout": {"type": "float", "default": 2.0},
        "lock_attempts": {"type": "int", "default": 5},
        "lock_backoff": {"type": "float", "default": 0.5},
        "lock_backoff_max": {"type": "float", "default": 5.0},
        "statement_timeout": {"type": "float", "default": 60.0},
        "database_timeout": {"type": "float"},
    }


def schema_migration_spec() -> dict:
    """schema_migration's AnsibleModule arguments (documented in plugins/modules/schema_migration.py)."""
    spec = {**database_argument_spec(parallel=2), **attempts_argument_spec()}
    spec.update(
        revision={"type": "str", "required": True},
        script={"type": "path"},
        expected_sql_sha256={"type": "raw"},
        archive={"type": "bool", "default": True},
        accept_data_statements={"type": "list", "elements": "str", "default": []},
        report_query_text={"type": "bool", "default": False},
    )
    return {
        "argument_spec": spec,
        "mutually_exclusive": [("dsn", "databases"), ("config_file", "script")],
        "required_if": [("tool", "efcore", ("script",))],
    }


def schema_state_spec() -> dict:
    """schema_state's AnsibleModule arguments (documented in plugins/modules/schema_state.py)."""
    spec = database_argument_spec(parallel=4)
    spec.update(
        script={"type": "path"},
        record_rollback_point={"type": "bool", "default": False},
        error_rate_baseline={"type": "float"},
        recorded_by={"type": "str"},
        note={"type": "str"},
        include_objects={"type": "bool", "default": False},
        fingerprint={"type": "bool", "default": True},
    )
    return {
        "argument_spec": spec,
        "mutually_exclusive": [("dsn", "databases")],
        "required_if": [("record_rollback_point", True, ("recorded_by",))],
    }


def schema_upgrade_spec() -> dict:
    """schema_upgrade's AnsibleModule arguments (documented in plugins/modules/schema_upgrade.py)."""
    spec = {**database_argument_spec(parallel=2), **attempts_argument_spec()}
    spec.update(
        revision={"type": "str", "default": "heads"},
        restore={"type": "bool", "default": True},
        accept_conflicts={"type": "list", "elements": "str", "default": []},
        restored_by={"type": "str"},
    )
    return {"argument_spec": spec, "mutually_exclusive": [("dsn", "databases")]}


def rollback_archive_spec() -> dict:
    """rollback_archive's AnsibleModule arguments (documented in plugins/modules/rollback_archive.py)."""
    spec = database_argument_spec(parallel=4)
    spec.update(
        purge={"type": "bool", "default": False},
        retention_days={"type": "int", "default": 30},
        run_ids={"type": "list", "elements": "str", "default": []},
        purged_by={"type": "str"},
        lock_timeout={"type": "float", "default": 2.0},
        statement_timeout={"type": "float", "default": 60.0},
    )
    return {
        "argument_spec": spec,
        "mutually_exclusive": [("dsn", "databases")],
        "required_if": [("purge", True, ("purged_by",))],
    }
