#!/usr/bin/python
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
  - Emergency rollback runbook (SEQ-OF-004)
attributes:
  check_mode:
    support: full
    description: Reads everything; with I(record_rollback_point) returns C(would_record) and writes nothing.
  diff_mode:
    support: none
options:
  dsn:
    description:
      - libpq connection URI of the database. Falls back to the environment variable C(ROLLBACK_DB_DSN).
        Mutually exclusive with I(databases).
    type: str
  databases:
    description: Many databases in one task; results in C(databases), one entry per item, in order.
    type: list
    elements: dict
    suboptions:
      name:
        description: How results and messages name the database (unique).
        type: str
        required: true
      dsn:
        description: libpq connection URI.
        type: str
        required: true
  parallel:
    description: Databases read at the same time with I(databases).
    type: int
    default: 4
  script_location:
    description:
      - The alembic script directory, for C(heads). A relative path is resolved from the module's
        working directory.
    type: path
    default: migrations
  version_locations:
    description: Directories of revision files instead of C(<script_location>/versions) (see M(schema_migration)).
    type: list
    elements: path
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
  advisory_lock_wait:
    description: Seconds to wait for the runbook's advisory lock when recording.
    type: float
    default: 30
  application_name:
    description: C(application_name) of the module's sessions.
    type: str
    default: emergency-rollback
  connect_timeout:
    description: Seconds to wait for a connection.
    type: int
    default: 10
  require_verified_tls:
    description:
      - Refuse, before contacting anything, a connection that would not verify the server, and any session that
        is not TLS with C(sslmode=verify-full) after connecting. Verifying needs C(sslmode=verify-full) (in the
        DSN, else C(PGSSLMODE)) and the CA's PEM file (C(sslrootcert), C(PGSSLROOTCERT), C(~/.postgresql/root.crt),
        or C(system)); a Unix socket is refused. The rollback sets it for the inventory's production-like
        environments.
      - Whatever this says, a DSN that carries a password is always refused (give it in C(PGPASSWORD) or C(~/.pgpass)).
    type: bool
    default: false
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
  description: The current alembic revision (several joined with a comma; null at base or without alembic_version).
  returned: single database
  type: str
  sample: 0002_data_transformation
revisions:
  description: The current alembic revisions as a list.
  returned: single database
  type: list
  elements: str
heads:
  description: The head revision(s) of the script directory.
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

import os

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible.module_utils.pg_options import database_argument_spec

try:
    from ansible.module_utils.alembic_runner import HAS_ALEMBIC, heads, load_script
    from ansible.module_utils.pg_session import DSN_ENV_VAR, HAS_PSYCOPG2
    from ansible.module_utils.schema_errors import SchemaError
    from ansible.module_utils.schema_rollback_points import read_state, read_states

    IMPORT_ERROR = None if HAS_ALEMBIC and HAS_PSYCOPG2 else "alembic, SQLAlchemy or psycopg2 is missing"
except ImportError as exc:  # pragma: no cover
    IMPORT_ERROR = str(exc)

JOB_OPTIONS = (
    "record_rollback_point",
    "fingerprint",
    "error_rate_baseline",
    "recorded_by",
    "run_id",
    "note",
    "include_objects",
    "advisory_lock_wait",
    "application_name",
    "connect_timeout",
    "require_verified_tls",
)


def argument_spec() -> dict:
    spec = database_argument_spec(parallel=4)
    spec.update(
        record_rollback_point={"type": "bool", "default": False},
        error_rate_baseline={"type": "float"},
        recorded_by={"type": "str"},
        note={"type": "str"},
        include_objects={"type": "bool", "default": False},
        fingerprint={"type": "bool", "default": True},
    )
    return spec


def main() -> None:
    module = AnsibleModule(
        argument_spec=argument_spec(),
        mutually_exclusive=[("dsn", "databases")],
        required_if=[("record_rollback_point", True, ("recorded_by",))],
        supports_check_mode=True,
    )
    if IMPORT_ERROR is not None:
        module.fail_json(msg=missing_required_lib("alembic, SQLAlchemy and psycopg2"), exception=IMPORT_ERROR)
    params = module.params
    try:
        script_heads = heads(load_script(params["script_location"], params["version_locations"]))
    except SchemaError as exc:
        module.fail_json(msg=str(exc))
    base = {key: params[key] for key in JOB_OPTIONS}
    base["check_mode"] = module.check_mode

    if params["databases"] is None:
        dsn = params["dsn"] or os.environ.get(DSN_ENV_VAR)
        if dsn:
            module.no_log_values.add(dsn)
        result = read_state({**base, "dsn": dsn})
        result.pop("name", None)
        result["heads"] = script_heads
        if result.pop("failed"):
            module.fail_json(**result)
        module.exit_json(**result)

    names = [db["name"] for db in params["databases"]]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        module.fail_json(msg=f"Database names must be unique in databases; repeated: {', '.join(duplicates)}.")
    results = read_states([{**base, **db} for db in params["databases"]], max(1, params["parallel"]))
    failed = [r for r in results if r["failed"]]
    summary = {"changed": any(r["changed"] for r in results), "heads": script_heads, "databases": results}
    if failed:
        module.fail_json(
            msg=f"Cannot read {len(failed)} of {len(results)} database(s): "
            + "; ".join(f"{r['name']}: {r['msg']}" for r in failed),
            **summary,
        )
    module.exit_json(**summary)


if __name__ == "__main__":
    main()
