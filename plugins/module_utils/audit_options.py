"""The argument spec of audit_verify (imports nothing optional)."""

from __future__ import annotations


def audit_verify_spec() -> dict:
    return {
        "argument_spec": {
            "path": {"type": "path", "required": True},
            "current_run_id": {"type": "str", "required": False},
        }
    }
