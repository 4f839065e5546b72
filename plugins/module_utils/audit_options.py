# Copyright: contributors to the emergency-rollback runbook
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The argument specs of audit_verify and audit_schema (import nothing optional)."""

from __future__ import annotations

from ansible.module_utils.basic import env_fallback

PG_DSN_ENV = "ROLLBACK_AUDIT_PG_DSN"
ADMIN_DSN_ENV = "ROLLBACK_AUDIT_ADMIN_DSN"


def audit_verify_spec() -> dict:
    return {
        "argument_spec": {
            "path": {"type": "path", "required": False},
            "pg_dsn": {"type": "str", "required": False, "no_log": True, "fallback": (env_fallback, [PG_DSN_ENV])},
            "current_run_id": {"type": "str", "required": False},
        },
        "required_one_of": [["path", "pg_dsn"]],
    }


def audit_schema_spec() -> dict:
    return {
        "argument_spec": {
            "writer_role": {"type": "str", "required": True},
            "dsn": {"type": "str", "required": False, "no_log": True, "fallback": (env_fallback, [ADMIN_DSN_ENV])},
            "connect_timeout": {"type": "int", "default": 10},
        },
    }
