#!/usr/bin/python
"""Ansible module: revert the DataTransformationFeature schema with alembic, one transaction per database."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: schema_migration
short_description: Revert an application database to a rollback point with alembic down migrations
description:
  - Steps 4 and 5 of the emergency rollback. Reverts an application database to a rollback point,
    for one database (I(dsn)) or many (I(databases)), each in ONE PostgreSQL transaction, from the
    migrations of any alembic project (alembic's downgrade through its Python API, never a shell
    command) or from an EF Core down script (I(tool=efcore)).
  - "Order on each database: connect (C(application_name) set); read the current revision (alembic's
    version table, or EF Core's C(__EFMigrationsHistory)); take the runbook's session advisory lock
    (one constant key, see I(advisory_lock_wait)), waiting at most I(advisory_lock_wait) seconds; read
    the revision again, so a run that waited for another finds nothing to do; check the target and
    the plan; then attempts of: C(BEGIN), C(SET LOCAL lock_timeout) and C(statement_timeout), the
    downgrade with the archive copies, the reconciliation, C(COMMIT)."
  - A lock timeout (or deadlock) rolls the attempt back and retries after an exponential, jittered
    backoff, at most I(lock_attempts) times; every attempt has its lock timeout, so live queries
    never wait behind the module for longer than I(lock_timeout). When all attempts time out the
    module fails and names the blocking sessions (from C(pg_blocking_pids)).
  - "What a statement does to data is read with PostgreSQL's own parser (pglast), in every statement:
    the SQL the plan renders, and every statement the apply executes, multi-statement strings, any
    case, whitespace and comments, quoted and schema-qualified names included. The same code decides
    for the plan and the apply."
  - "Archive (I(archive=true)): just before a statement removes rows, in the same transaction, the
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
    anything the parser does not know to keep rows), unless I(accept_data_statements) accepts exactly
    that statement for that revision; a statement that ends the transaction (C(COMMIT))."
  - "Refuses, changing nothing, with one sentence: a target that is not below the current revision
    (an upgrade or another branch), an unknown or relative revision, a database without a version
    table, a symbolic target with multiple heads or a database on several branches, a plan whose
    sha256 differs from I(expected_sql_sha256), a DSN that does not connect (the message never
    contains the password), an alembic C(env.py) that ignores the module's connection (see
    I(config_file)), an EF Core script that is not the down script from the database's migration to
    I(revision)."
  - Already at the target, nothing is executed and C(changed) is false.
  - "With I(databases), each database is reverted in its own worker process (alembic's C(op) and
    C(context) are process-wide), with its own advisory lock and transaction; the module finishes
    every database, then fails if any failed, naming which."
  - "Runs on the controller (C(ansible_connection: local)); needs alembic, SQLAlchemy, psycopg2 and
    pglast in the interpreter that runs it."
version_added: "0.1.0"
author:
  - Emergency rollback runbook (SEQ-OF-004)
attributes:
  check_mode:
    support: full
    description: >-
      Returns the plan and changes nothing: C(from_revision), C(to_revision), C(steps), the exact SQL
      (C(sql): alembic's offline rendering, or the EF Core script) and its C(sql_sha256), C(drops), every
      table, materialized view and column the downgrade removes and every row it deletes or rewrites,
      with its current row count, and C(data_statements). Fails, listing them, when a statement is
      refused. Takes no lock but the read locks of the counts, bounded by I(lock_timeout) and
      I(statement_timeout). Needs no credentials of the alembic project: its C(sqlalchemy.url) is
      replaced by a bare C(postgresql://) for the offline rendering.
  diff_mode:
    support: none
options:
  dsn:
    description:
      - libpq connection URI of the application database, e.g. C(postgresql://migrator@db:5432/app).
        Without a password in it, libpq takes it from C(PGPASSWORD) or C(~/.pgpass).
      - Falls back to the environment variable C(ROLLBACK_DB_DSN). Mutually exclusive with I(databases).
      - Connect as the owner of the application tables (the C(migrator) role), not the app's DML role.
    type: str
  databases:
    description:
      - Many databases in one task (tenants, shards), reverted in parallel worker processes.
      - Mutually exclusive with I(dsn). The results are in C(databases), one entry per item, in order.
    type: list
    elements: dict
    suboptions:
      name:
        description: How results and messages name the database (unique).
        type: str
        required: true
      dsn:
        description: libpq connection URI, as I(dsn).
        type: str
        required: true
  parallel:
    description:
      - Worker processes for I(databases) (each handles one database at a time, several in turn).
        1 runs them one after the other in the module's process.
    type: int
    default: 2
  tool:
    description:
      - The migration tool that manages the database. C(alembic) reverts with the alembic project's
        down migrations (I(config_file) or I(script_location)); C(efcore) applies an EF Core down
        script (I(script)).
    type: str
    choices: [alembic, efcore]
    default: alembic
  config_file:
    description:
      - "alembic: the project's configuration, an C(alembic.ini) or a C(pyproject.toml) with C([tool.alembic])
        (alembic 1.16+); C(script_location), C(version_locations), C(prepend_sys_path) and the other
        main options are read from it, relative paths from the file's directory. An C(alembic.ini)
        next to a C(pyproject.toml) is read with it, as the C(pyproject) template splits them. Its
        C(sqlalchemy.url) is never used: the database is I(dsn)."
      - "The project's C(env.py) must run the migrations on the connection the module hands it,
        C(config.attributes[\"connection\"]) (alembic's cookbook, \"Sharing a Connection across one
        or more programmatic migration commands\"); the stock templates do not: apply is then refused
        before any DDL, naming the file, with the lines to add in C(env_py_fix). Check mode works with
        every template (generic, pyproject, async); C(multidb) is refused (one env.py for several
        databases)."
      - Without it, I(script_location) (and I(version_locations)) describe the project.
    type: path
  script_location:
    description:
      - The alembic script directory (the one with C(env.py)), when there is no I(config_file). A
        relative path is resolved from the working directory of the module; roles pass an absolute path.
    type: path
    default: migrations
  script:
    description:
      - "EF Core (I(tool=efcore)): the down script, as C(dotnet ef migrations script <Current> <Previous>)
        emits it for PostgreSQL (Npgsql provider, EF Core 8), not idempotent (no C(--idempotent)). The
        module reads C(__EFMigrationsHistory) for the current migration and checks that the script
        reverts exactly from it to I(revision), from the history rows it deletes; anything else (an up
        script, another range, a history that does not match, an idempotent script) is refused. EF's
        own C(START TRANSACTION;)/C(COMMIT;) are stripped: the script runs in the module's one
        transaction, under the same guards as alembic. The plan's C(sql) and C(sql_sha256) are the script's."
    type: path
  version_locations:
    description:
      - Directories holding revision files, instead of C(<script_location>/versions). List the
        repository's C(migrations/versions) too, e.g. to add the test-only failing revision of
        C(tests/data/faulty_versions) in a rehearsal.
    type: list
    elements: path
  revision:
    description:
      - "alembic: the target, the rollback point's revision id (e.g. C(0001_legacy)), C(base), or
        C(head)/C(heads) when the script directory has exactly one head. Relative targets (C(-1)) are refused."
      - "EF Core: the target MigrationId (e.g. C(20240101093000_Legacy)), or C(0) for an empty database."
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
  advisory_lock_wait:
    description:
      - Seconds to wait for the runbook's advisory lock when another run holds it on the same
        database; 0 tries once. The failure names the holder (pid, application_name, since).
      - "The key is constant for the runbook: the first 8 bytes of sha256(C(emergency-rollback:schema-revert))
        as a signed bigint, 7088773521838913054 (pg_locks C(classid) 1650483701, C(objid) 3462870558).
        Recording a rollback point (M(schema_state)) takes the same lock."
    type: float
    default: 30
  expected_sql_sha256:
    description:
      - The sha256 of the plan's SQL as approved (from check mode). If the plan differs, the module
        refuses and changes nothing.
      - With I(databases), a string applies to every database; a dict maps names to hashes, and a
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
      - "Recorded in the result (C(accepted_data_statements), and per statement in C(data_statements))
        so the audit keeps it; what PostgreSQL saw the accepted statements do is in C(accepted_effects)."
      - The rollback passes C(-e rollback_accept_data_statements=<revision>:<sha256>) here.
    type: list
    elements: str
    default: []
  run_id:
    description:
      - Identifies the run in archive table names and the manifest (1-40 characters among letters,
        digits, C(_), C(.), C(:), C(-)). Default, C(<UTC time>-<random>).
    type: str
  application_name:
    description: C(application_name) of the module's sessions, as seen in C(pg_stat_activity).
    type: str
    default: emergency-rollback
  connect_timeout:
    description: Seconds to wait for a connection.
    type: int
    default: 10
notes:
  - "The exact SQL is what alembic renders offline for the range; it covers the migrations, not the
    archive copies (whose table names carry the run id) nor the C(SET LOCAL) statements."
  - "For a complete blocking-session report, grant C(pg_read_all_stats) to the migration role: without
    it PostgreSQL hides the query and timestamps of other roles' sessions."
  - "A multi-statement string (C(op.execute(\"DROP VIEW v; DROP TABLE a\"))) is run one statement at a
    time by the module, each after its own archive copy."
  - "A C(DELETE) or C(UPDATE) is archived when its rows can be selected first, exactly: C(DELETE FROM t
    WHERE p) or C(UPDATE t SET ... WHERE p) where p reads no other relation and calls no volatile
    function, and no foreign key cascades from t. The table is locked in EXCLUSIVE mode (readers go on,
    writers wait, bounded by I(lock_timeout)) until the transaction ends."
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
    - "Everything the downgrade removes or rewrites (check mode, planned; apply, done): C({schema, table,
      column, rows, action, revision}), C(action) one of C(drop table), C(drop materialized view),
      C(drop column), C(change column type), C(truncate), C(delete), C(update); C(rows) null when not
      counted (I(archive=false), or an object an earlier step creates); after apply also
      C(archive_table) and C(statement_sha256)."
  returned: always
  type: list
  elements: dict
  sample:
    - {schema: public, table: documents, column: transform_version, rows: 1200, action: drop column,
       revision: 0002_data_transformation}
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
data_statements:
  description:
    - "Every statement that removes or rewrites rows by other means than dropping a table or column
      (C(DELETE), C(UPDATE), C(TRUNCATE), a column type change, C(DO), a writing function call, ...):
      C({revision, sha256, statement, archived, accepted, reasons}). C(archived) when the archive
      copies its rows first; C(accepted) when I(accept_data_statements) accepted it."
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
  description: I(accept_data_statements) as given (sorted), for the audit.
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
  description: The alembic C(env.py) that ignores the module's connection.
  returned: when apply is refused for that reason
  type: str
env_py_fix:
  description: The lines to add at the top of C(run_migrations_online()) in C(env_py).
  returned: when apply is refused for that reason
  type: list
  elements: str
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

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible.module_utils.pg_options import schema_migration_spec
from ansible.module_utils.schema_run import IMPORT_ERROR, REQUIRED_LIBS, env_dsn, run_schema_migration


def main() -> None:
    module = AnsibleModule(**schema_migration_spec(), supports_check_mode=True)
    if IMPORT_ERROR is not None:
        module.fail_json(msg=missing_required_lib(REQUIRED_LIBS), exception=IMPORT_ERROR)
    dsn = env_dsn(module.params)
    if dsn:
        module.no_log_values.add(dsn)
    result = run_schema_migration(module.params, check_mode=module.check_mode)
    if result.pop("failed", False):
        module.fail_json(**result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
