#!/usr/bin/python
# Copyright: contributors to the emergency-rollback runbook
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Ansible module: revert the DataTransformationFeature schema with alembic, one transaction per database."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: schema_migration
short_description: Revert an application database to a rollback point with alembic down migrations
description:
  - Steps 4 and 5 of the emergency rollback. Runs alembic's downgrade through its Python API (never
    a shell command) from the database's current revision to I(revision), for one database (I(dsn))
    or many (I(databases)), each in ONE PostgreSQL transaction.
  - "Order on each database: connect (C(application_name) set); read C(alembic_version); take the
    runbook's session advisory lock (one constant key, see I(advisory_lock_wait)), waiting at most
    I(advisory_lock_wait) seconds; read the revision again, so a run that waited for another finds
    nothing to do; check the target and the plan; then attempts of: C(BEGIN), C(SET LOCAL lock_timeout)
    and C(statement_timeout), the archive copies and the downgrade, C(COMMIT)."
  - A lock timeout (or deadlock) rolls the attempt back and retries after an exponential, jittered
    backoff, at most I(lock_attempts) times; every attempt has its lock timeout, so live queries
    never wait behind the module for longer than I(lock_timeout). When all attempts time out the
    module fails and names the blocking sessions (pid, state, role, application_name, query start
    and the first 200 characters of the query, from C(pg_blocking_pids)).
  - "Archive (I(archive=true)): just before a statement drops a table or a column that holds rows,
    in the same transaction, the table is locked and the rows are copied into
    C(rollback_archive.\"<run_id>__<table>[__<column>]\") (a column with the table's primary key),
    listed in C(rollback_archive.manifest). The schema is revoked from PUBLIC and every other
    grantee: only the migration role (its owner) reads it. A failed downgrade leaves no archive."
  - "Refuses, changing nothing, with one sentence: a target that is not an ancestor of the current
    revision (an upgrade or another branch), an unknown or relative revision, a database without
    C(alembic_version), a symbolic target with multiple heads or a database on several branches,
    a plan whose sha256 differs from I(expected_sql_sha256), a DSN that does not connect (the
    message never contains the password)."
  - Already at the target, nothing is executed and C(changed) is false.
  - "With I(databases), each database is reverted in a worker process (alembic's C(op) and
    C(context) are process-wide), with its own advisory lock and transaction, under a watchdog
    (I(database_timeout)); the module finishes every database, then fails if any failed, naming which."
  - "Runs on the controller (C(ansible_connection: local)); needs alembic, SQLAlchemy and psycopg2
    in the interpreter that runs it."
version_added: "0.1.0"
author:
  - Emergency rollback runbook maintainers (!UNKNOWN)
attributes:
  check_mode:
    support: full
    description: >-
      Returns the plan and changes nothing: C(from_revision), C(to_revision), C(steps), the exact SQL
      (C(sql), rendered by alembic's offline mode) and its C(sql_sha256), and C(drops), every table and
      column the downgrade drops with its current row count. Takes no lock but the read locks of
      the counts, bounded by I(lock_timeout) and I(statement_timeout).
  diff_mode:
    support: none
    description: No diff; check mode returns the plan instead (the SQL, its sha256, the rows each drop would take).
extends_documentation_fragment:
  - rollback_database
options:
  parallel:
    description:
      - Worker processes for O(databases), each a new interpreter (never a fork of the caller, whose
        threads' locks a forked child could inherit) that reverts one database at a time, several
        in turn. 1 reverts them one after the other in the task's own process.
    type: int
    default: 2
  database_timeout:
    description:
      - With O(databases) and O(parallel) above 1, the watchdog's budget for one database, in
        seconds. A worker that has not finished its database by then is stopped; that database is
        reported failed (its uncommitted transaction is rolled back by the server), and every other
        database is still reverted and reported.
      - Default, the longest a healthy revert can take with the other settings, plus a minute
        (O(connect_timeout) + O(advisory_lock_wait) + O(lock_attempts) x (O(statement_timeout) +
        O(lock_backoff_max)) + 60).
    type: float
  revision:
    description:
      - The target, the rollback point's revision id (e.g. C(0001_legacy)), C(base), or C(head)/C(heads)
        when the script directory has exactly one head. Relative targets (C(-1)) are refused.
    type: str
    required: true
  lock_timeout:
    description:
      - Seconds one attempt waits for any table lock (C(SET LOCAL lock_timeout)); also the longest
        time live queries can queue behind the downgrade's lock request. Must be more than 0.
    type: float
    default: 2
  lock_attempts:
    description: Attempts before giving up on lock timeouts (each rolled back before the next).
    type: int
    default: 5
  lock_backoff:
    description:
      - Seconds to wait after the first timed-out attempt; doubled after each further one (capped
        by I(lock_backoff_max)), jittered by +-20%.
    type: float
    default: 0.5
  lock_backoff_max:
    description: Upper bound of one backoff wait, in seconds.
    type: float
    default: 5
  statement_timeout:
    description:
      - Seconds any one statement may run (C(SET LOCAL statement_timeout)), the archive copies included;
        at least I(lock_timeout).
    type: float
    default: 60
  expected_sql_sha256:
    description:
      - The sha256 of the plan's SQL as approved (from check mode). If the plan differs, the module
        refuses and changes nothing.
      - With O(databases), a string applies to every database; a dict maps names to hashes, and a
        database missing from it is refused.
    type: raw
  archive:
    description: Copy the rows of dropped tables and columns into C(rollback_archive) first.
    type: bool
    default: true
  run_id:
    description:
      - Identifies the run in archive table names and the manifest (1-40 characters among letters,
        digits, C(_), C(.), C(:), C(-)). Default, C(<UTC time>-<random>).
    type: str
notes:
  - "The exact SQL is what alembic renders offline for the range; it covers the migrations, not the
    archive copies (whose table names carry the run id) nor the C(SET LOCAL) statements."
  - "For a complete blocking-session report, grant C(pg_read_all_stats) to the migration role: without
    it PostgreSQL hides the query and timestamps of other roles' sessions."
  - "The archive sees what C(op.drop_table), C(op.drop_column) and literal C(DROP TABLE)/C(ALTER TABLE
    ... DROP COLUMN) statements drop; a downgrade must not remove data by other means (DELETE, TRUNCATE)."
seealso:
  - module: schema_state
"""

EXAMPLES = r"""
- name: Show the plan of the revert (check mode changes nothing)
  schema_migration:
    dsn: "{{ db_dsn }}"
    script_location: "{{ playbook_dir }}/../migrations"
    revision: 0001_legacy
  check_mode: true
  register: schema_plan

- name: Revert the DataTransformationFeature schema
  schema_migration:
    dsn: "{{ db_dsn }}"
    script_location: "{{ playbook_dir }}/../migrations"
    revision: "{{ rollback_point.revision }}"
    lock_timeout: 2
    lock_attempts: 5
    statement_timeout: 60
    expected_sql_sha256: "{{ schema_plan.sql_sha256 }}"
    archive: true
    run_id: "{{ audit_run_id }}"

- name: Revert every tenant database in one task, 4 at a time
  schema_migration:
    databases: "{{ tenant_databases }}"  # [{name: tenant-1, dsn: "postgresql://migrator@db1/t1"}, ...]
    parallel: 4
    revision: 0001_legacy

- name: Rehearse a downgrade that fails halfway (test-only revision)
  schema_migration:
    dsn: "{{ rehearsal_dsn }}"
    script_location: "{{ repo }}/migrations"
    version_locations:
      - "{{ repo }}/migrations/versions"
      - "{{ repo }}/tests/data/faulty_versions"
    revision: 0001_legacy
"""

RETURN = r"""
changed:
  description: Whether the schema was (or in check mode would be) reverted.
  returned: always
  type: bool
from_revision:
  description: The database's revision before (null at base). Single database only, as are the keys below.
  returned: when the database was reached
  type: str
  sample: 0002_data_transformation
to_revision:
  description: The target revision (null for base).
  returned: always
  type: str
  sample: 0001_legacy
steps:
  description: The revisions undone, newest first.
  returned: always
  type: list
  elements: dict
  sample: [{revision: 0002_data_transformation, down_revision: 0001_legacy, doc: "DataTransformationFeature: ..."}]
sql:
  description: The exact SQL of the downgrade as alembic renders it offline (empty when nothing to do).
  returned: always
  type: str
sql_sha256:
  description: sha256 (hex) of C(sql); pass it as I(expected_sql_sha256) to approve this plan.
  returned: when there is something to do
  type: str
drops:
  description:
    - Every table and column the downgrade drops (check mode, planned; apply, done) with its rows
      (null when not counted, i.e. I(archive=false)) and, after apply, C(archive_table).
  returned: always
  type: list
  elements: dict
  sample: [{schema: public, table: documents, column: transform_version, rows: 1200}]
attempts:
  description: Downgrade attempts made (0 when nothing was to do).
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
archive:
  description:
    - Where the dropped rows went, C({enabled, schema, run_id, tables, rows}); C(tables) lists
      C({source, archive_table, rows, key_columns}). Null when nothing was applied.
  returned: always
  type: dict
  sample:
    enabled: true
    schema: rollback_archive
    run_id: 20261128T000000Z-1a2b
    rows: 50
    tables:
      - source: public.transformation_jobs
        archive_table: rollback_archive."20261128T000000Z-1a2b__transformation_jobs"
        rows: 50
        key_columns: [id]
blocking_sessions:
  description: On lock-timeout exhaustion, the sessions that blocked the last attempt.
  returned: on failure after lock timeouts
  type: list
  elements: dict
run_id:
  description: The run's id, as used in the archive.
  returned: always
  type: str
msg:
  description: One sentence on what was done, or why not.
  returned: always
  type: str
databases:
  description:
    - With I(databases), one entry per database, in order, with C(name), C(changed), C(failed), C(msg)
      and the keys above (C(from_revision), C(to_revision), C(sql_sha256), C(attempts),
      C(lock_wait_seconds), C(duration_seconds), C(archive), ...).
  returned: with I(databases)
  type: list
  elements: dict
"""

from ansible.module_utils.pg_options import schema_migration_spec
from ansible.module_utils.runbook_plugin import Plugin

try:
    from ansible.module_utils.schema_tasks import run_schema_migration
except ImportError as exc:  # alembic, SQLAlchemy or psycopg2 is missing on the controller
    run_schema_migration, IMPORT_ERROR = None, exc
else:
    IMPORT_ERROR = None

# The plugin, once: this module's main() and the action plugins/action/schema_migration.py both run it.
PLUGIN = Plugin(
    "schema_migration",
    schema_migration_spec,
    run_schema_migration,
    requires="alembic, SQLAlchemy and psycopg2",
    import_error=IMPORT_ERROR,
)


def main() -> None:
    PLUGIN.main()


if __name__ == "__main__":
    main()
