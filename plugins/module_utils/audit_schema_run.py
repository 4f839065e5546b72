# Copyright: contributors to the emergency-rollback runbook
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The logic of the `audit_schema` module: migrate the audit database's `runbook` schema."""

from __future__ import annotations

from ansible.module_utils.audit_pg_schema import MigrationError, migrate
from ansible.module_utils.pg_session import first_line, redact

try:
    import psycopg2

    HAS_PSYCOPG2 = True
except ImportError:  # pragma: no cover - reported as a failure below
    HAS_PSYCOPG2 = False


def _failed(msg: str) -> dict:
    return {"changed": False, "failed": True, "msg": msg}


def run_audit_schema(params: dict, check_mode: bool = False, diff: bool = False) -> dict:
    """Apply the audit schema's migrations and the writer's grants; the module's result."""
    dsn = params.get("dsn")
    if not dsn:
        return _failed("No audit database given: set dsn or ROLLBACK_AUDIT_ADMIN_DSN.")
    if not HAS_PSYCOPG2:
        return _failed("audit_schema needs psycopg2 on the host that runs it.")
    try:
        timeout = params.get("connect_timeout") or 10
        conn = psycopg2.connect(dsn, connect_timeout=timeout, application_name="rollback_audit")
        try:
            done = migrate(conn, params["writer_role"], check_mode=check_mode)
        finally:
            conn.close()
    except MigrationError as exc:
        return _failed(f"Cannot migrate the audit schema: {exc}.")
    except psycopg2.Error as exc:
        return _failed(redact(f"Cannot migrate the audit schema: {first_line(exc)}", dsn))
    applied = ", ".join(f"{m['version']} ({m['name']})" for m in done["applied"]) or "none"
    verb = "would apply" if check_mode else "applied"
    grants = len(done["grants"])
    return {**done, "msg": f"audit schema at version {done['version']}: {verb} migrations {applied}, {grants} grant(s)"}
