# Copyright: contributors to the emergency-rollback runbook
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The runbook's filters: the audit facts and the lines shown about each database, from a plugin's `databases`.

Thin: the logic is plain Python in plugins/module_utils/audit_facts.py and report_lines.py (unit
tests: tests/unit/test_report_filters.py). Each filter's documentation is the YAML file of its name
next to this one, as ansible-core documents its own filters (`ansible-doc -t filter <name>`).
"""

from __future__ import annotations

import runpy
from pathlib import Path

from ansible.errors import AnsibleFilterError

runpy.run_path(str(Path(__file__).resolve().parent.parent / "plugin_utils" / "module_utils_path.py"))[
    "add_module_utils_path"
]()
from ansible.module_utils import audit_facts, report_lines  # noqa: E402 - after the path is added


def rollback_audit_databases(databases, kind):
    """{name: facts} the audit keeps of each database of a plugin's result (kind: plan, revert, ...)."""
    try:
        return audit_facts.audit_databases(databases, kind)
    except audit_facts.UnknownAuditKind as exc:
        raise AnsibleFilterError(str(exc)) from None


class FilterModule:
    """The filters of plugins/filter/rollback_report.py."""

    def filters(self):
        return {
            "rollback_audit_databases": rollback_audit_databases,
            "rollback_audit_trail_warnings": report_lines.audit_warnings,
            "rollback_plan_lines": report_lines.plan_lines,
            "rollback_revision_lines": report_lines.revision_lines,
            "rollback_archive_lines": report_lines.archive_lines,
            "rollback_purge_lines": report_lines.purge_lines,
            "rollback_restore_refusals": report_lines.restore_refusals,
        }
