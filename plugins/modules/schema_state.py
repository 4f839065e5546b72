#!/usr/bin/python
# Copyright: contributors to the emergency-rollback runbook
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Ansible module: read a database's revision, schema fingerprint and rollback point (and record one)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: schema_state
short_description: Read an application database's alembic revision, schema fingerprint and rollback point
description:
  - Read-only by default. For one database (I(dsn)) or many (I(databases)), returns the current
    alembic C(revision), the C(heads) of the script directory, the schema C(fingerprint) and the newest
    recorded C(rollback_point). All values of one database come from one snapshot (a READ ONLY,
    REPEATABLE READ transaction).
  - "The fingerprint is a sha256 of the schema read from the catalogs: schemas, tables, columns with
    types, defaults and nullability, constraints, indexes, ENUM types and their labels, domains,
    sequences, views, triggers, functions, extensions. It excludes C(alembic_version) and the
    runbook's own schemas C(runbook) and C(rollback_archive), ownership, grants and all row data:
    stable across runs, and any schema difference changes it."
  - "With I(record_rollback_point=true) (deploy.yml, BEFORE its upgrade) it records the current
    revision and fingerprint into C(runbook.rollback_points), creating the schema and table if
    missing (never touched by alembic), under the runbook's advisory lock (so it waits for a running
    schema revert, at most I(advisory_lock_wait) seconds)."
version_added: "0.1.0"
author:
  - Emergency rollback runbook maintainers (!UNKNOWN)
attributes:
  check_mode:
    support: full
    description: Reads everything; with I(record_rollback_point) returns C(would_record) and writes nothing.
  diff_mode:
    support: none
    description: No diff; what it reads or records is in its result.
extends_documentation_fragment:
  - rollback_database
options:
  parallel:
    description: Databases read at the same time with I(databases).
    type: int
    default: 4
  script:
    description:
      - EF Core (O(tool=efcore)), an up or down script of C(dotnet ef migrations script) (see
        M(schema_migration)); RV(heads) is the newest migration it names. Without it RV(heads) is empty.
    type: path
  record_rollback_point:
    description: Record the current revision and fingerprint as a rollback point first.
    type: bool
    default: false
  error_rate_baseline:
    description: The application's 5xx rate before the deployment, stored with the rollback point.
    type: float
  recorded_by:
    description: Who records the rollback point (operator or CI actor). Required with I(record_rollback_point).
    type: str
  run_id:
    description: The deployment run's id, stored with the rollback point.
    type: str
  note:
    description: Free text stored with the rollback point (e.g. the release or ticket).
    type: str
  include_objects:
    description: Also return C(objects), the catalog entries the fingerprint is computed from (to see what differs).
    type: bool
    default: false
  fingerprint:
    description:
      - Compute the schema fingerprint (it reads the whole catalog). C(false) returns C(fingerprint) null,
        for a caller that needs only the revision and the rollback point; recording always computes it.
    type: bool
    default: true
seealso:
  - module: schema_migration
"""

EXAMPLES = r"""
- name: Record the rollback point before the upgrade (deploy.yml)
  schema_state:
    dsn: "{{ db_dsn }}"
    script_location: "{{ playbook_dir }}/../migrations"
    record_rollback_point: true
    error_rate_baseline: "{{ baseline_5xx_rate | float }}"
    recorded_by: "{{ operator }}"
    run_id: "{{ audit_run_id }}"
    note: "release 2.4.0"

- name: Read where the database is and where to roll back to
  schema_state:
    dsn: "{{ db_dsn }}"
    script_location: "{{ playbook_dir }}/../migrations"
  register: db_state

- name: Verify the schema is back to the recorded one
  ansible.builtin.assert:
    that:
      - db_state.revision == db_state.rollback_point.revision
      - db_state.fingerprint == db_state.rollback_point.fingerprint
    fail_msg: The schema differs from the one recorded before the deployment.
"""

RETURN = r"""
changed:
  description: True when a rollback point was (or in check mode would be) recorded.
  returned: always
  type: bool
revision:
  description:
    - The current revision (alembic, several joined with a comma; EF Core, the newest applied MigrationId);
      null at base or without a version table.
  returned: single database
  type: str
  sample: 0002_data_transformation
revisions:
  description: The current alembic revisions as a list.
  returned: single database
  type: list
  elements: str
heads:
  description: The head revision(s) of the alembic project; for EF Core, the newest migration O(script) names.
  returned: always
  type: list
  elements: str
  sample: [0002_data_transformation]
fingerprint:
  description: sha256 (hex) of the schema.
  returned: single database
  type: str
rollback_point:
  description:
    - The newest rollback point, C({revision, fingerprint, error_rate_baseline, recorded_at (UTC, ISO 8601),
      recorded_by, run_id, note}); after recording, the new one. Null when none was recorded.
  returned: single database
  type: dict
would_record:
  description: In check mode with I(record_rollback_point), the row that would be written.
  returned: check mode with record_rollback_point
  type: dict
objects:
  description: With I(include_objects), the catalog entries by kind.
  returned: with include_objects
  type: dict
databases:
  description: With I(databases), one entry per database with C(name), C(failed), C(msg) and the keys above.
  returned: with databases
  type: list
  elements: dict
"""

from ansible.module_utils.pg_options import schema_state_spec
from ansible.module_utils.runbook_plugin import Plugin

try:
    from ansible.module_utils.schema_tasks import run_schema_state
except ImportError as exc:  # alembic, SQLAlchemy or psycopg2 is missing on the controller
    run_schema_state, IMPORT_ERROR = None, exc
else:
    IMPORT_ERROR = None

# The plugin, once: this module's main() and the action plugins/action/schema_state.py both run it.
PLUGIN = Plugin(
    "schema_state",
    schema_state_spec,
    run_schema_state,
    requires="alembic, SQLAlchemy, psycopg2 and pglast",
    import_error=IMPORT_ERROR,
)


def main() -> None:
    PLUGIN.main()


if __name__ == "__main__":
    main()
