#!/usr/bin/python
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
    module fails and names the blocking sessions (from C(pg_blocking_pids)) by pid, role,
    application_name, state and age, never by the query's text unless I(report_query_text) is on.
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
  - "With I(databases), each database is reverted in its own worker process (alembic's C(op) and
    C(context) are process-wide), with its own advisory lock and transaction; the module finishes
    every database, then fails if any failed, naming which."
  - "Runs on the controller (C(ansible_connection: local)); needs alembic, SQLAlchemy and psycopg2
    in the interpreter that runs it."
version_added: "0.1.0"
author:
  - Emergency rollback runbook (SEQ-OF-004)
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
  script_location:
    description:
      - The alembic script directory (the one with C(env.py)). A relative path is resolved from the
        working directory of the module; roles pass an absolute path.
    type: path
    default: migrations
  version_locations:
    description:
      - Directories holding revision files, instead of C(<script_location>/versions). List the
        repository's C(migrations/versions) too, e.g. to add the test-only failing revision of
        C(tests/data/faulty_versions) in a rehearsal.
    type: list
    elements: path
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
    description: Copy the rows of dropped tables and columns into C(rollback_archive) first.
    type: bool
    default: true
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
    it PostgreSQL hides the state and timestamps (so the age) of other roles' sessions."
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

import contextlib
import io
import os

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible.module_utils.pg_options import database_argument_spec

try:
    from ansible.module_utils.alembic_runner import (
        HAS_ALEMBIC,
        new_run_id,
        revert_database,
        revert_databases,
    )
    from ansible.module_utils.pg_session import DSN_ENV_VAR, HAS_PSYCOPG2

    IMPORT_ERROR = None if HAS_ALEMBIC and HAS_PSYCOPG2 else "alembic, SQLAlchemy or psycopg2 is missing"
except ImportError as exc:  # pragma: no cover
    IMPORT_ERROR = str(exc)

JOB_OPTIONS = (
    "script_location",
    "version_locations",
    "revision",
    "lock_timeout",
    "lock_attempts",
    "lock_backoff",
    "lock_backoff_max",
    "statement_timeout",
    "advisory_lock_wait",
    "archive",
    "application_name",
    "connect_timeout",
    "report_query_text",
)


def argument_spec() -> dict:
    spec = database_argument_spec(parallel=2)
    spec.update(
        revision={"type": "str", "required": True},
        lock_timeout={"type": "float", "default": 2.0},
        lock_attempts={"type": "int", "default": 5},
        lock_backoff={"type": "float", "default": 0.5},
        lock_backoff_max={"type": "float", "default": 5.0},
        statement_timeout={"type": "float", "default": 60.0},
        expected_sql_sha256={"type": "raw"},
        archive={"type": "bool", "default": True},
        report_query_text={"type": "bool", "default": False},
    )
    return spec


def _expected_for(expected, name: str | None):
    """The approved sha256 for one database (None: no check); ValueError for a bad shape."""
    if expected is None or expected == "":
        return None
    if isinstance(expected, str):
        return expected
    if isinstance(expected, dict) and name is not None:
        if name not in expected:
            raise ValueError(f"expected_sql_sha256 has no entry for database {name}: approve its plan too.")
        value = expected[name]
        # None: the approved plan had nothing to do; if there is something now, that is a change.
        return "none (nothing to do when approved)" if value in (None, "") else str(value)
    raise ValueError("expected_sql_sha256 must be a string (or, with databases, a dict of database name to sha256).")


def _one_database(module: AnsibleModule, base: dict) -> None:
    params = module.params
    dsn = params["dsn"] or os.environ.get(DSN_ENV_VAR)
    if dsn:
        module.no_log_values.add(dsn)
    try:
        expected = _expected_for(params["expected_sql_sha256"], None)
    except ValueError as exc:
        module.fail_json(msg=str(exc))
    with contextlib.redirect_stdout(io.StringIO()):
        result = revert_database({**base, "dsn": dsn, "expected_sql_sha256": expected})
    for key in ("name", "check_mode"):
        result.pop(key, None)
    if result.pop("failed"):
        module.fail_json(**result)
    module.exit_json(**result)


def _many_databases(module: AnsibleModule, base: dict) -> None:
    params = module.params
    names = [db["name"] for db in params["databases"]]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        module.fail_json(msg=f"Database names must be unique in databases; repeated: {', '.join(duplicates)}.")
    if not names:
        module.fail_json(msg="databases is empty: list at least one {name, dsn}.")
    jobs, refused = [], {}
    for db in params["databases"]:
        try:
            expected = _expected_for(params["expected_sql_sha256"], db["name"])
        except ValueError as exc:
            refused[db["name"]] = str(exc)
            continue
        jobs.append({**base, "name": db["name"], "dsn": db["dsn"], "expected_sql_sha256": expected})
    with contextlib.redirect_stdout(io.StringIO()):
        done = {r["name"]: r for r in revert_databases(jobs, params["parallel"])} if jobs else {}
    results = [
        done.get(name)
        or {"name": name, "changed": False, "failed": True, "msg": refused[name], "run_id": base["run_id"]}
        for name in names
    ]
    failed = [r for r in results if r["failed"]]
    summary = {
        "changed": any(r["changed"] for r in results),
        "databases": results,
        "run_id": base["run_id"],
        "to_revision": next((r.get("to_revision") for r in results if not r["failed"]), None),
    }
    if failed:
        module.fail_json(
            msg=f"Cannot revert {len(failed)} of {len(results)} database(s): "
            + "; ".join(f"{r['name']}: {r['msg']}" for r in failed),
            **summary,
        )
    verb = "would be reverted" if module.check_mode else "reverted"
    module.exit_json(
        msg=f"{sum(r['changed'] for r in results)} of {len(results)} database(s) {verb}; "
        f"{sum(not r['changed'] for r in results)} already at the target.",
        **summary,
    )


def main() -> None:
    module = AnsibleModule(
        argument_spec=argument_spec(),
        mutually_exclusive=[("dsn", "databases")],
        supports_check_mode=True,
    )
    if IMPORT_ERROR is not None:
        module.fail_json(msg=missing_required_lib("alembic, SQLAlchemy and psycopg2"), exception=IMPORT_ERROR)
    if module.params["parallel"] < 1:
        module.fail_json(msg="parallel must be at least 1.")
    base = {key: module.params[key] for key in JOB_OPTIONS}
    base.update(check_mode=module.check_mode, run_id=module.params["run_id"] or new_run_id())
    if module.params["databases"] is None:
        _one_database(module, base)
    else:
        _many_databases(module, base)


if __name__ == "__main__":
    main()
