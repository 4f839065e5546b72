# Copyright: contributors to the emergency-rollback runbook
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The argument spec of audit_verify (imports nothing optional)."""

from __future__ import annotations


def audit_verify_spec() -> dict:
    return {
        "argument_spec": {
            "path": {"type": "path", "required": True},
            "current_run_id": {"type": "str", "required": False},
        }
    }
