#!/usr/bin/python
# Copyright: contributors to the emergency-rollback runbook
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Ansible module: create and migrate the audit's tables in the audit database."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: audit_schema
short_description: Create and migrate the rollback audit's append-only tables in the audit database
description:
  - Applies, in one transaction and under an advisory lock, the migrations of the runbook's own
    C(runbook) schema in the audit database that are not applied yet (C(runbook.audit_migrations)
    lists those that are) - C(runbook.audit_log) (one sealed record line per row, chained across every
    run), C(runbook.audit_head) (the chain's last seq and sha256), and their triggers, which refuse
    UPDATE, DELETE and TRUNCATE of the log and any change of the head other than by an append.
  - Then grants the writer role (the one in C(ROLLBACK_AUDIT_PG_DSN)) exactly USAGE on the schema,
    SELECT and INSERT on the log and SELECT on the head, and revokes anything more.
  - Run it as the audit database's owner (C(playbooks/audit_setup.yml)); the rollback never creates tables.
  - Refuses a writer role that is a superuser or a member of the owner (either could drop the triggers).
version_added: "0.1.0"
author:
  - Emergency rollback runbook maintainers (!UNKNOWN)
attributes:
  check_mode:
    support: full
    description: Reports the migrations and grants it would apply, changing nothing.
  diff_mode:
    support: none
    description: Nothing to show a difference of.
options:
  writer_role:
    description: The role the rollback's audit callback connects as; it must exist and must not be a superuser.
    type: str
    required: true
  dsn:
    description:
      - A libpq DSN of the audit database, as its owner. A secret, never logged.
      - Defaults to the environment variable C(ROLLBACK_AUDIT_ADMIN_DSN).
    type: str
    required: false
  connect_timeout:
    description: Seconds to wait for the connection.
    type: int
    default: 10
requirements:
  - psycopg2
notes:
  - The migrations are in C(plugins/module_utils/audit_pg_schema.py); the logic in C(audit_schema_run.py).
"""

EXAMPLES = r"""
- name: Create or migrate the audit tables (ROLLBACK_AUDIT_ADMIN_DSN in the environment)
  audit_schema:
    writer_role: rollback_audit
"""

RETURN = r"""
msg:
  description: What was applied.
  returned: always
  type: str
  sample: "audit schema at version 1: applied migrations 1 (audit log ...), 4 grant change(s)"
version:
  description: The schema version after the run (before it, in check mode).
  returned: success
  type: int
applied:
  description: The migrations applied (or that would be), C({version, name}) each.
  returned: success
  type: list
  elements: dict
grants:
  description: The GRANT and REVOKE statements applied (or that would be).
  returned: success
  type: list
  elements: str
"""

from ansible.module_utils.audit_options import audit_schema_spec
from ansible.module_utils.audit_schema_run import run_audit_schema
from ansible.module_utils.runbook_plugin import Plugin

# The plugin, once: this module's main() and the action plugins/action/audit_schema.py both run it.
PLUGIN = Plugin("audit_schema", audit_schema_spec, run_audit_schema)


def main() -> None:
    PLUGIN.main()


if __name__ == "__main__":
    main()
