#!/usr/bin/python
# Copyright: contributors to the emergency-rollback runbook
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Ansible module: revert the DataTransformationFeature schema with alembic, one transaction per database."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: schema_migration
short_description: Revert an application database to a rollback point (alembic or EF Core), archiving what leaves
description:
  - Steps 4 and 5 of the emergency rollback. Reverts an application database to a rollback point,
    for one database (O(dsn)) or many (O(databases)), each in ONE PostgreSQL transaction, from the
    migrations of any alembic project (alembic's downgrade through its Python API, never a shell
    command) or from an EF Core down script (O(tool=efcore)).
  - "Order on each database: connect (C(application_name) set); read the current revision (alembic's
    version table, or EF Core's C(__EFMigrationsHistory)); take the runbook's session advisory lock
    (one constant key, see O(advisory_lock_wait)), waiting at most O(advisory_lock_wait) seconds; read
    the revision again, so a run that waited for another finds nothing to do; check the target and
    the plan; then attempts of: C(BEGIN), C(SET LOCAL lock_timeout) and C(statement_timeout), the
    downgrade with the archive copies, the reconciliation, C(COMMIT)."
  - A lock timeout (or deadlock) rolls the attempt back and retries after an exponential, jittered
    backoff, at most O(lock_attempts) times; every attempt has its lock timeout, so live queries
    never wait behind the module for longer than O(lock_timeout). When all attempts time out the
    module fails and names the blocking sessions (from C(pg_blocking_pids)) by pid, role,
    application_name, state and age, never by the query's text unless O(report_query_text) is on.
  - "What a statement does to data is read with PostgreSQL's own parser (pglast), in every statement:
    the SQL the plan renders, and every statement the apply executes, multi-statement strings, any
    case, whitespace and comments, quoted and schema-qualified names included. The same code decides
    for the plan and the apply."
  - "Archive (O(archive=true)): just before a statement removes rows, in the same transaction, the
    source is locked and the rows are copied into C(rollback_archive.\"<run_id>__<table>[__<column>]\")
    and listed in C(rollback_archive.manifest): tables, materialized views and columns dropped (with
    what C(CASCADE) takes, resolved from C(pg_depend): dependent tables, matviews and columns, not
    views; the tables of a dropped schema), tables truncated, the rows a C(DELETE ... WHERE) removes,
    the old values an C(UPDATE ... WHERE) or a column type change rewrites. The schema is revoked from
    PUBLIC and every other grantee: only the migration role (its owner) reads it."
  - "Before C(COMMIT) the module compares what was archived with what the plan promised (tables,
    columns, actions), PostgreSQL's catalog before and after (every table and column gone must have
    been archived on its way out), the transaction's statistics (rows deleted and updated per table,
    tables emptied or rewritten) and the archive's row counts with its manifest; any difference rolls
    the transaction back and fails, naming it. A failed downgrade leaves no archive."
  - "Refused in the plan (check mode) and before any statement runs, naming the statement: a statement
    that removes or rewrites rows the archive cannot follow (a C(DO) block, C(CALL), C(MERGE), a call of a
    volatile function that may write, a C(DELETE) whose foreign keys cascade, a data-modifying C(WITH),
    anything the parser does not know to keep rows), unless O(accept_data_statements) accepts exactly
    that statement for that revision; a statement that ends the transaction (C(COMMIT))."
  - "Refuses, changing nothing, with one sentence: a target that is not below the current revision
    (an upgrade or another branch), an unknown or relative revision, a database without a version
    table, a symbolic target with multiple heads or a database on several branches, a plan whose
    sha256 differs from O(expected_sql_sha256), a DSN that does not connect (the message never
    contains the password), an alembic C(env.py) that ignores the plugin's connection (see
    O(config_file)), an EF Core script that is not the down script from the database's migration to
    O(revision)."
  - Already at the target, nothing is executed and C(changed) is false.
  - "With O(databases), each database is reverted in a worker process (alembic's C(op) and
    C(context) are process-wide), with its own advisory lock and transaction, under a watchdog
    (O(database_timeout)); the module finishes every database, then fails if any failed, naming which."
  - "Runs on the controller (C(ansible_connection: local)); needs alembic, SQLAlchemy, psycopg2 and
    pglast in the interpreter that runs it."
version_added: "0.1.0"
author:
  - Emergency rollback runbook maintainers (!UNKNOWN)
attributes:
  check_mode:
    support: full
    description: >-
      Returns the plan and changes nothing: C(from_revision), C(to_revision), C(steps), the exact SQL
      (C(sql): alembic's offline rendering, or the EF Core script) and its C(sql_sha256), C(drops), every
      table, materialized view and column the downgrade removes and every row it deletes or rewrites,
      with its current row count, and C(data_statements). Fails, listing them, when a statement is
      refused. Takes no lock but the read locks of the counts, bounded by O(lock_timeout) and
      O(statement_timeout). Needs no credentials of the alembic project: its C(sqlalchemy.url) is
      replaced by a bare C(postgresql://) for the offline rendering.
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
      - "alembic: the target, the rollback point's revision id (e.g. C(0001_legacy)), C(base), or
        C(head)/C(heads) when the script directory has exactly one head. Relative targets (C(-1)) are refused."
      - "EF Core: the target MigrationId (e.g. C(20240101090000_Legacy)), or C(0) for an empty database."
    type: str
    required: true
  script:
    description:
      - "EF Core (O(tool=efcore)): the down script, as C(dotnet ef migrations script <Current> <Previous>)
        emits it for PostgreSQL (Npgsql provider, EF Core 8), not idempotent (no C(--idempotent)). The
        plugin reads C(__EFMigrationsHistory) for the current migration and checks that the script
        reverts exactly from it to O(revision), from the history rows it deletes; anything else (an up
        script, another range, a history that does not match, an idempotent script) is refused. EF's
        own C(START TRANSACTION;)/C(COMMIT;) are stripped: the script runs in the plugin's one
        transaction, under the same guards as alembic. The plan's C(sql) and C(sql_sha256) are the script's."
    type: path
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
    description:
      - Copy the rows each statement removes or rewrites into C(rollback_archive) first (see above).
      - C(false) drops without copying (the plan still lists what goes, and statements the archive
        cannot follow are still refused unless accepted).
    type: bool
    default: true
  accept_data_statements:
    description:
      - "Statements the operator accepts although they remove or rewrite rows the archive cannot
        preserve, each as C(<revision>:<sha256 of the statement>), exactly as the plan's refusal
        prints it (the sha256 of the statement as PostgreSQL's parser reads it, so spacing, case and
        comments do not matter). It holds for that statement in that revision only."
      - "Recorded in the result (RV(accepted_data_statements), and per statement in RV(data_statements))
        so the audit keeps it; what PostgreSQL saw the accepted statements do is in RV(accepted_effects)."
      - The rollback passes C(-e rollback_accept_data_statements=<revision>:<sha256>) here.
    type: list
    elements: str
    default: []
  run_id:
    description:
      - Identifies the run in archive table names and the manifest (1-40 characters among letters,
        digits, C(_), C(.), C(:), C(-)). Default, C(<UTC time>-<random>).
    type: str
  report_query_text:
    description:
      - Also report the first 200 characters of each blocking session's query (in C(msg),
        C(blocking_sessions) and C(attempt_log)).
      - Off by default, and the text is then not even read from PostgreSQL - a query can hold
        customers' data, and this report reaches the job output, the audit and the notifications.
        Turn it on only where all of those may hold such data.
    type: bool
    default: false
notes:
  - "The exact SQL is what alembic renders offline for the range; it covers the migrations, not the
    archive copies (whose table names carry the run id) nor the C(SET LOCAL) statements."
  - "For a complete blocking-session report, grant C(pg_read_all_stats) to the migration role: without
    it PostgreSQL hides the state and timestamps (so the age) of other roles' sessions."
  - "A multi-statement string (C(op.execute(\"DROP VIEW v; DROP TABLE a\"))) is run one statement at a
    time by the plugin, each after its own archive copy."
  - "A C(DELETE) or C(UPDATE) is archived when its rows can be selected first, exactly: C(DELETE FROM t
    WHERE p) or C(UPDATE t SET ... WHERE p) where p reads no other relation and calls no volatile
    function, and no foreign key cascades from t. The table is locked in EXCLUSIVE mode (readers go on,
    writers wait, bounded by O(lock_timeout)) until the transaction ends."
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

- name: Revert a database of any alembic project (its env.py reads config.attributes["connection"])
  schema_migration:
    dsn: "{{ db_dsn }}"
    config_file: "{{ app_repo }}/pyproject.toml"
    revision: "{{ rollback_point.revision }}"

- name: Revert an EF Core database from the pipeline's down script
  schema_migration:
    dsn: "{{ db_dsn }}"
    tool: efcore
    script: "{{ artifacts }}/rollback-DataTransformation.sql"  # dotnet ef migrations script <Current> <Previous>
    revision: 20240101090000_Legacy

- name: Revert although a migration deletes rows the archive cannot select first (accepted, audited)
  schema_migration:
    dsn: "{{ db_dsn }}"
    revision: 0001_legacy
    accept_data_statements: ["0003_cleanup:3f1c2d0b9e6a..."]  # as the plan's refusal prints it

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
  description:
    - The exact SQL of the downgrade as alembic renders it offline, or the EF Core script (empty when nothing to do).
  returned: always
  type: str
sql_sha256:
  description: sha256 (hex) of C(sql); pass it as I(expected_sql_sha256) to approve this plan.
  returned: when there is something to do
  type: str
drops:
  description:
    - "Everything the downgrade removes or rewrites (check mode, planned; apply, done): C({schema, table,
      column, rows, action, revision}), C(action) one of C(drop table), C(drop materialized view),
      C(drop column), C(change column type), C(truncate), C(delete), C(update); C(rows) null when not
      counted (O(archive=false), or an object an earlier step creates); after apply also
      C(archive_table) and C(statement_sha256)."
  returned: always
  type: list
  elements: dict
  sample:
    - {schema: public, table: documents, column: transform_version, rows: 1200, action: drop column,
       revision: 0002_data_transformation}
data_statements:
  description:
    - "Every statement that removes or rewrites rows by other means than dropping a table or column
      (C(DELETE), C(UPDATE), C(TRUNCATE), a column type change, C(DO), a writing function call, ...):
      C({revision, sha256, statement, archived, accepted, reasons}). C(archived) when the archive
      copies its rows first; C(accepted) when O(accept_data_statements) accepted it."
  returned: always
  type: list
  elements: dict
  sample:
    - revision: 0003_cleanup
      sha256: 3f1c2d...
      statement: "DELETE FROM settings WHERE origin = 'feature'"
      archived: true
      accepted: false
      reasons: []
accepted_data_statements:
  description: O(accept_data_statements) as given (sorted), for the audit.
  returned: always
  type: list
  elements: str
accepted_effects:
  description:
    - "After accepted statements ran, what PostgreSQL's statistics and catalog show they did beyond the
      archive: C({table, rows_deleted, rows_updated}), or C({table, dropped}) / C({table, rewritten})."
  returned: always
  type: list
  elements: dict
tool:
  description: The migration tool (C(alembic) or C(efcore)).
  returned: always
  type: str
env_py:
  description: The alembic C(env.py) that ignores the plugin's connection.
  returned: when apply is refused for that reason
  type: str
env_py_fix:
  description: The lines to add at the top of C(run_migrations_online()) in RV(env_py).
  returned: when apply is refused for that reason
  type: list
  elements: str
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
      C({source, action, archive_table, rows, key_columns}). Null when nothing was applied.
  returned: always
  type: dict
  sample:
    enabled: true
    schema: rollback_archive
    run_id: 20261128T000000Z-1a2b
    rows: 50
    tables:
      - source: public.transformation_jobs
        action: drop table
        archive_table: rollback_archive."20261128T000000Z-1a2b__transformation_jobs"
        rows: 50
        key_columns: [id]
blocking_sessions:
  description:
    - On lock-timeout exhaustion, the sessions that blocked the last attempt, each with C(pid),
      C(role), C(application_name), C(state) and C(age_seconds) (in its transaction, else in its
      state; null when the migration role lacks C(pg_read_all_stats)); C(query) only with
      I(report_query_text).
  returned: on failure after lock timeouts
  type: list
  elements: dict
  sample:
    - pid: 4242
      role: app_rw
      application_name: nightly-report
      state: idle in transaction
      age_seconds: 93.4
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
    requires="alembic, SQLAlchemy, psycopg2 and pglast",
    import_error=IMPORT_ERROR,
)


def main() -> None:
    PLUGIN.main()


if __name__ == "__main__":
    main()
