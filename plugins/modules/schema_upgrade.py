#!/usr/bin/python
# Copyright: contributors to the emergency-rollback runbook
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Ansible module: upgrade an application database with alembic and restore the archived rows, in one transaction."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: schema_upgrade
short_description: Upgrade an application database and bring back the rows a rollback archived, in one transaction
description:
  - "The way forward (deploy.yml). Runs alembic's upgrade through its Python API from the database's
    current revision to I(revision), for one database (I(dsn)) or many (I(databases)), each in ONE
    PostgreSQL transaction, under the guards of the rollback's revert (M(schema_migration)) - the
    same code: the runbook's session advisory lock (so a deployment and a rollback never run on
    the same database at once), C(SET LOCAL lock_timeout) and C(statement_timeout) on every attempt,
    bounded retries with backoff on lock timeouts and deadlocks, the blocking sessions named on
    exhaustion."
  - "In the same transaction, after the upgrade (I(restore=true)): every archive of
    C(rollback_archive.manifest) not yet restored whose C(from_revision) the database is back at or
    beyond comes back by primary key - a dropped table's rows are inserted where their key is absent;
    a dropped column's values are written back with C(UPDATE ... FROM) the archive where the upgrade
    recreated the column; values archived as text (ENUMs, domains) are cast back to the column's type;
    the sequences of restored keys are moved past them. Each archive is marked restored in the
    manifest (C(restored_at), C(restore_run_id), C(restored_rows), C(restore_conflict_rows),
    C(restore_outcome)) and is never restored twice."
  - "Conflicts: an archived row whose key now exists with other data is not overwritten, nor a row
    whose foreign key points at a deleted row, a duplicate unique value, a value the type no longer
    accepts, a column value whose row is gone. They are reported by table, kind, count and up to 10
    keys (never row contents) and the whole transaction is rolled back, upgrade included: the database
    is exactly as before and the task fails, unless the archive's rollback run id is in
    I(accept_conflicts); then the other rows are restored and the conflicting ones stay in the archive."
  - "Refuses, changing nothing, with one sentence: a database that is not below the target (this
    module never downgrades), an unknown or relative revision, C(head) with several heads, a
    manifest without its documented columns, a DSN that does not connect (never the password)."
  - Already at the target with no archive to restore, nothing is executed and C(changed) is false.
  - "With I(databases), each database is upgraded in a worker process (alembic's C(op) and C(context)
    are process-wide) under a watchdog (I(database_timeout)); the module finishes every database,
    then fails if any failed, naming which."
version_added: "0.2.0"
author:
  - Emergency rollback runbook maintainers (!UNKNOWN)
attributes:
  check_mode:
    support: full
    description: >-
      Runs no upgrade and writes nothing: C(steps), and in C(restore) what would be restored (tables,
      columns, rows, conflicts). Where the table or column exists already the analysis is exact; where
      the upgrade would create it, a prediction (C(predicted), each archive's C(note)): every row, or
      every row whose key exists.
  diff_mode:
    support: none
    description: No diff; the result lists what changed.
extends_documentation_fragment:
  - rollback_database
options:
  parallel:
    description:
      - Worker processes for O(databases), each a new interpreter that upgrades one database at a
        time; 1 upgrades them one after the other in the task's own process.
    type: int
    default: 2
  database_timeout:
    description:
      - With O(databases) and O(parallel) above 1, the watchdog's budget for one database, in seconds;
        default, the longest a healthy upgrade can take with the other settings plus a minute.
    type: float
  revision:
    description:
      - The target revision id, or C(heads) (every head of the script directory), or C(head) when there
        is exactly one. C(base) and relative targets are refused.
    type: str
    default: heads
  restore:
    description: Restore the rollback's archived rows in the upgrade's transaction.
    type: bool
    default: true
  accept_conflicts:
    description:
      - Rollback run ids (the archive's C(run_id)) whose conflicting rows the operator has reviewed and
        accepts to leave in the archive; the rest of those archives is restored. Recorded in the
        manifest (C(restore_outcome)) and, by deploy.yml, in the audit.
    type: list
    elements: str
    default: []
  restored_by:
    description: Who deploys (operator and its source), stored in the manifest's C(restored_by).
    type: str
  run_id:
    description:
      - The deployment run's id, stored in the manifest's C(restore_run_id) (1-40 characters among
        letters, digits, C(_), C(.), C(:), C(-)). Default, C(<UTC time>-<random>).
    type: str
  lock_timeout:
    description:
      - Seconds one attempt waits for any table lock (C(SET LOCAL lock_timeout)); also the longest time
        live queries queue behind the upgrade's lock request. Must be more than 0.
    type: float
    default: 2
  lock_attempts:
    description: Attempts before giving up on lock timeouts (each rolled back before the next).
    type: int
    default: 5
  lock_backoff:
    description: Seconds to wait after the first timed-out attempt; doubled after each further one, jittered.
    type: float
    default: 0.5
  lock_backoff_max:
    description: Upper bound of one backoff wait, in seconds.
    type: float
    default: 5
  statement_timeout:
    description: Seconds any one statement may run, the restore's included; at least I(lock_timeout).
    type: float
    default: 60
notes:
  - "The restore holds the upgrade's locks until COMMIT, and a C(SHARE ROW EXCLUSIVE) lock on every
    table it writes that existed before the transaction (the application may read, not write it):
    the transaction is as long as the upgrade plus the copy of the archived rows."
  - "Where archives stay C(waiting): their C(from_revision) is not below the target (e.g. a partial
    upgrade); a later upgrade restores them."
  - "By the manifest's C(action): rows of a dropped table, deleted or truncated come back where their
    key is absent; values an UPDATE rewrote or a type change converted are compared, never written
    (a difference is a conflict); a materialized view is computed again by the upgrade."
  - "Alembic projects only (I(tool=alembic)): an EF Core up script commits each migration itself, so
    no restore can share its transaction; I(tool=efcore) is refused."
  - "The restore stages the archived rows in temporary tables (dropped at COMMIT): the migration role
    needs the C(TEMPORARY) privilege on the database (PUBLIC has it by default)."
seealso:
  - module: schema_migration
  - module: rollback_archive
"""

EXAMPLES = r"""
- name: Show what the upgrade would restore (check mode changes nothing)
  schema_upgrade:
    databases: "{{ databases }}"
    script_location: "{{ playbook_dir }}/../migrations"
  check_mode: true
  register: upgrade_plan

- name: Upgrade every database and restore the archived rows
  schema_upgrade:
    databases: "{{ databases }}"
    script_location: "{{ playbook_dir }}/../migrations"
    restored_by: "{{ operator }}"
    run_id: "{{ lookup('ansible.builtin.env', 'ROLLBACK_AUDIT_RUN_ID') }}"

- name: Upgrade, restoring the archive of run 20261128T000000Z-1a2b although some rows conflict
  schema_upgrade:
    dsn: "{{ db_dsn }}"
    script_location: "{{ playbook_dir }}/../migrations"
    accept_conflicts: [20261128T000000Z-1a2b]
"""

RETURN = r"""
changed:
  description: Whether the schema was upgraded or rows restored (in check mode, would be).
  returned: always
  type: bool
from_revision:
  description: The database's revision before (null at base). Single database only, as are the keys below.
  returned: when the database was reached
  type: str
  sample: 0001_legacy
to_revision:
  description: The target revision(s), comma-separated.
  returned: always
  type: str
  sample: 0002_data_transformation
steps:
  description: The revisions applied, oldest first.
  returned: always
  type: list
  elements: dict
restore:
  description:
    - What was (check mode, would be) restored. C(archives) lists one report per manifest entry -
      C(run_id), C(source) (schema.table[.column]), C(archive_table), C(archived_rows), C(restored),
      C(already_present), C(conflict_rows), C(conflicts) (C({kind, rows, keys}); kinds C(different),
      C(missing_row), C(missing_reference), C(duplicate_unique), C(invalid_value), C(column_gone),
      C(no_table), C(no_column), C(not_a_table), C(no_key), C(archive_missing), C(archive_count)),
      C(predicted), C(note), C(outcome), C(accepted). Also C(runs), C(rows_restored),
      C(already_present), C(conflict_rows), C(conflicting_runs), C(accepted), C(predicted), and
      C(waiting) (archives whose revision is not reached).
  returned: when the database was reached
  type: dict
attempts:
  description: Attempts made (0 when nothing was to do or in check mode).
  returned: always
  type: int
attempt_log:
  description: One entry per attempt, C(outcome) C(committed), C(lock_timeout), C(deadlock) or C(failed), with seconds.
  returned: always
  type: list
  elements: dict
lock_wait_seconds:
  description: Seconds spent waiting for locks, advisory lock, timed-out attempts and backoff included.
  returned: always
  type: float
advisory_lock_wait_seconds:
  description: Seconds spent waiting for the runbook's advisory lock.
  returned: always
  type: float
duration_seconds:
  description: Seconds the database took, connection included.
  returned: always
  type: float
blocking_sessions:
  description: On lock-timeout exhaustion, the sessions that blocked the last attempt.
  returned: on failure after lock timeouts
  type: list
  elements: dict
env_py:
  description: The alembic C(env.py) that ignores the plugin's connection.
  returned: when the upgrade is refused for that reason
  type: str
env_py_fix:
  description: The lines to add at the top of C(run_migrations_online()) in RV(env_py).
  returned: when the upgrade is refused for that reason
  type: list
  elements: str
run_id:
  description: The deployment run's id, as recorded in the manifest.
  returned: always
  type: str
rows_restored:
  description: With I(databases), the archived rows restored in all databases.
  returned: with I(databases)
  type: int
msg:
  description: One sentence on what was done, or why not.
  returned: always
  type: str
databases:
  description: With I(databases), one entry per database, in order, with C(name), C(failed), C(msg) and the keys above.
  returned: with I(databases)
  type: list
  elements: dict
"""

from ansible.module_utils.pg_options import schema_upgrade_spec
from ansible.module_utils.runbook_plugin import Plugin

try:
    from ansible.module_utils.upgrade_tasks import run_schema_upgrade
except ImportError as exc:  # alembic, SQLAlchemy or psycopg2 is missing on the controller
    run_schema_upgrade, IMPORT_ERROR = None, exc
else:
    IMPORT_ERROR = None

# The plugin, once: this module's main() and the action plugins/action/schema_upgrade.py both run it.
PLUGIN = Plugin(
    "schema_upgrade",
    schema_upgrade_spec,
    run_schema_upgrade,
    requires="alembic, SQLAlchemy and psycopg2",
    import_error=IMPORT_ERROR,
)


def main() -> None:
    PLUGIN.main()


if __name__ == "__main__":
    main()
