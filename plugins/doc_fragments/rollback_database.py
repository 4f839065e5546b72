# Copyright: contributors to the emergency-rollback runbook
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The options every runbook plugin that works on the application databases shares (documented once)."""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  dsn:
    description:
      - libpq connection URI of the application database, e.g. C(postgresql://migrator@db:5432/app).
        Never with a password in it (such a DSN is refused); libpq takes it from C(PGPASSWORD) or C(~/.pgpass).
      - Falls back to the environment variable C(ROLLBACK_DB_DSN). Mutually exclusive with O(databases).
      - Connect as the owner of the application tables (the C(migrator) role), not the app's DML role.
    type: str
  databases:
    description:
      - Many databases in one task (tenants, shards, regions), worked on in parallel.
      - Mutually exclusive with O(dsn). The results are in RV(databases), one entry per item, in order.
    type: list
    elements: dict
    suboptions:
      name:
        description: How results and messages name the database (unique).
        type: str
        required: true
      dsn:
        description: libpq connection URI, as O(dsn).
        type: str
        required: true
  tool:
    description:
      - "The migration tool that manages the database: C(alembic) (the project's revisions and version
        table, from O(config_file) or O(script_location)) or C(efcore) (EF Core's C(__EFMigrationsHistory),
        and for M(schema_migration) a down script of C(dotnet ef migrations script), its option C(script))."
    type: str
    choices: [alembic, efcore]
    default: alembic
  config_file:
    description:
      - "alembic: the project's configuration, an C(alembic.ini) or a C(pyproject.toml) with C([tool.alembic])
        (alembic 1.16+); C(script_location), C(version_locations), C(prepend_sys_path) and the other main
        options are read from it, relative paths from the file's directory. An C(alembic.ini) next to a
        C(pyproject.toml) is read with it, as alembic's C(pyproject) template splits them. Its
        C(sqlalchemy.url) is never used: the database is O(dsn)."
      - "The project's C(env.py) must run the migrations on the connection the plugin hands it,
        C(config.attributes[\"connection\"]) (alembic's cookbook, \"Sharing a Connection across one or
        more programmatic migration commands\"); the stock templates do not: a revert is then refused
        before any DDL, naming the file, with the lines to add (the result's C(env_py_fix)).
        Plans (check mode) work with every template (generic, pyproject, async) and need no
        credentials; C(multidb) (one env.py for several databases) is refused."
      - Without it, O(script_location) and O(version_locations) describe the project.
    type: path
  script_location:
    description:
      - The alembic script directory (the one with C(env.py)), when there is no O(config_file). A
        relative path is resolved from the working directory of the task; roles pass an absolute path.
    type: path
    default: migrations
  version_locations:
    description:
      - Directories holding revision files, instead of C(<script_location>/versions). List the
        repository's C(migrations/versions) too, e.g. to add the test-only failing revision of
        C(tests/data/faulty_versions) in a rehearsal.
    type: list
    elements: path
  advisory_lock_wait:
    description:
      - Seconds to wait for the runbook's advisory lock when another run holds it on the same
        database (reverting, or recording a rollback point); 0 tries once. The failure names the
        holder (pid, application_name, since).
      - "The key is constant for the runbook: the first 8 bytes of sha256(C(emergency-rollback:schema-revert))
        as a signed bigint, 7088773521838913054 (pg_locks C(classid) 1650483701, C(objid) 3462870558)."
    type: float
    default: 30
  application_name:
    description: C(application_name) of the plugin's sessions, as seen in C(pg_stat_activity).
    type: str
    default: emergency-rollback
  connect_timeout:
    description: Seconds to wait for a connection.
    type: int
    default: 10
  require_verified_tls:
    description:
      - Refuse, before contacting anything, a connection that would not verify the server, and any session
        that is not TLS with C(sslmode=verify-full) after connecting. Verifying needs C(sslmode=verify-full)
        (in the DSN, else C(PGSSLMODE)) and the CA's PEM file (C(sslrootcert), C(PGSSLROOTCERT),
        C(~/.postgresql/root.crt), or C(system)); a Unix socket is refused. The rollback sets it for the
        inventory's production-like environments.
      - Whatever this says, a DSN that carries a password is always refused (give it in C(PGPASSWORD) or
        C(~/.pgpass)).
    type: bool
    default: false
"""
