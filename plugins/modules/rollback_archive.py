#!/usr/bin/python
# Copyright: contributors to the emergency-rollback runbook
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Ansible module: list the rollback archives of each database, and purge them after their retention."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: rollback_archive
short_description: List the rows a rollback archived, per database and run, and purge them after their retention
description:
  - "Reads C(rollback_archive.manifest) of one database (I(dsn)) or many (I(databases)) and returns each
    archive - the rows one rollback run copied before its downgrade removed them - grouped by run id:
    when it was taken and its age (the database's clock), the revisions, each table or column with
    its rows, whether the forward deployment restored it (M(schema_upgrade)) and whether it was purged.
    Read-only unless I(purge=true) (status.yml)."
  - "With I(purge=true) (archive_purge.yml) it drops archive tables and marks their manifest rows
    C(purged_at), C(purged_by), C(purge_run_id), keeping the record that the rows existed: every
    archive older than I(retention_days), or those of I(run_ids). An archive that is not restored and
    younger than I(retention_days) is never purged: naming one refuses the whole purge, with one
    sentence, and nothing is purged. I(retention_days) below 7 is refused."
  - "Each database is purged in one transaction behind the runbook's advisory lock (never while a
    rollback archives or a deployment restores there), with C(SET LOCAL lock_timeout) and
    C(statement_timeout); the selection is checked again under the lock."
version_added: "0.2.0"
author:
  - Emergency rollback runbook maintainers (!UNKNOWN)
attributes:
  check_mode:
    support: full
    description: With I(purge), returns C(would_purge) per database (and the refusals) and purges nothing.
  diff_mode:
    support: none
    description: No diff; the result lists what changed.
extends_documentation_fragment:
  - rollback_database
options:
  parallel:
    description: Databases read at the same time with O(databases).
    type: int
    default: 4
  purge:
    description: Purge the archives selected by I(retention_days) or I(run_ids).
    type: bool
    default: false
  retention_days:
    description:
      - Days an archive is kept. Older archives are purged by I(purge) (restored or not); a younger one
        only when restored and named in I(run_ids). At least 7.
    type: int
    default: 30
  run_ids:
    description:
      - With I(purge), purge exactly these rollback runs' archives (each restored, or older than
        I(retention_days)) instead of every archive older than I(retention_days). A run id no database
        has is refused.
    type: list
    elements: str
    default: []
  purged_by:
    description: Who purges (operator and its source), stored in the manifest. Required with I(purge).
    type: str
  run_id:
    description: The purge run's id (the audit's), stored in the manifest's C(purge_run_id).
    type: str
  lock_timeout:
    description: Seconds to wait for any lock (C(SET LOCAL lock_timeout)).
    type: float
    default: 2
  statement_timeout:
    description: Seconds any one statement may run.
    type: float
    default: 60
seealso:
  - module: schema_upgrade
  - module: schema_migration
"""

EXAMPLES = r"""
- name: Read every database's archives (status.yml)
  rollback_archive:
    databases: "{{ databases }}"
  register: archives

- name: Purge the archives older than the retention (archive_purge.yml)
  rollback_archive:
    databases: "{{ databases }}"
    purge: true
    retention_days: 30
    purged_by: "{{ operator }}"
    run_id: "{{ lookup('ansible.builtin.env', 'ROLLBACK_AUDIT_RUN_ID') }}"

- name: Purge one restored archive now
  rollback_archive:
    dsn: "{{ db_dsn }}"
    purge: true
    run_ids: [20261128T000000Z-1a2b]
    purged_by: "{{ operator }}"
"""

RETURN = r"""
changed:
  description: Whether archives were (in check mode, would be) purged.
  returned: always
  type: bool
archives:
  description:
    - The archives of the database, oldest first, one per rollback run - C(run_id), C(archived_at),
      C(age_days), C(from_revision), C(to_revision), C(rows), C(restored) (C(yes), C(no), C(partly)),
      C(restored_at), C(restore_run_ids), C(restored_rows), C(restore_conflict_rows), C(purged)
      (C(yes), C(no), C(partly)), C(purged_at), and C(tables) (C(source), C(archive_table), C(rows),
      C(restored_at), C(restore_outcome), C(purged_at), ...). Single database only, as are the keys below.
  returned: when the database was read
  type: list
  elements: dict
would_purge:
  description: With I(purge), the runs selected (C(run_id), C(age_days), C(rows), C(restored)).
  returned: with purge
  type: list
  elements: dict
purged:
  description:
    - With I(purge) applied, each archive table dropped (C(run_id), C(source), C(archive_table), C(rows),
      C(restored)).
  returned: with purge, not in check mode
  type: list
  elements: dict
msg:
  description: One sentence on what was found or done, or why not.
  returned: always
  type: str
databases:
  description: With I(databases), one entry per database, in order, with C(name), C(failed), C(msg) and the keys above.
  returned: with I(databases)
  type: list
  elements: dict
"""

from ansible.module_utils.pg_options import rollback_archive_spec
from ansible.module_utils.runbook_plugin import Plugin

try:
    from ansible.module_utils.archive_retention import run_rollback_archive
except ImportError as exc:  # psycopg2 is missing on the controller
    run_rollback_archive, IMPORT_ERROR = None, exc
else:
    IMPORT_ERROR = None

# The plugin, once: this module's main() and the action plugins/action/rollback_archive.py both run it.
PLUGIN = Plugin(
    "rollback_archive",
    rollback_archive_spec,
    run_rollback_archive,
    requires="psycopg2",
    import_error=IMPORT_ERROR,
)


def main() -> None:
    PLUGIN.main()


if __name__ == "__main__":
    main()
