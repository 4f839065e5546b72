"""The application database(s) of the rehearsal stack: roles, privileges, the legacy baseline, seed rows.

Roles, as in production:
- `migrator` owns the application database(s) and every table in them: alembic and the rollback connect as it;
- `app_rw` is the application: DML only. `ALTER DEFAULT PRIVILEGES FOR ROLE migrator IN SCHEMA public`
  lets it use the tables, sequences and types that later migrations create, and nothing outside `public`
  (the runbook's `rollback_archive` stays private to migrator);
- `unleash` owns Unleash's own database.

The application database is upgraded to `0001_legacy` with alembic's Python API (migrations/ is the
single source of the schema). Tenant databases `tenant_001`.. are copies of a template database
prepared the same way (CREATE DATABASE ... TEMPLATE), which makes N tenants cost milliseconds each.
"""

from __future__ import annotations

import json
from pathlib import Path

import psycopg2
from psycopg2 import sql as pgsql

from rehearsal.postgres import PostgresCluster

ROOT = Path(__file__).resolve().parent.parent
MIGRATIONS = ROOT / "migrations"
BASELINE = "0001_legacy"
APP_DB = "transformation"
UNLEASH_DB = "unleash"
TEMPLATE_DB = "rehearsal_tenant_template"
MIGRATOR, APP_RW, UNLEASH = "migrator", "app_rw", "unleash"
# The application_name of the app's sessions (rehearsal.app): how the drills tell its lock waits apart.
APP_APPLICATION_NAME = "transformation-engine"
SEED_ROWS = 50


class SchemaError(RuntimeError):
    """The application schema could not be prepared."""


def tenant_name(number: int) -> str:
    return f"tenant_{number:03d}"


def ensure_roles(cluster: PostgresCluster, passwords: dict[str, str]) -> None:
    for role in (MIGRATOR, APP_RW, UNLEASH):
        cluster.create_role(role, passwords[role])
    # The rollback names the sessions that block it (query, since when): PostgreSQL shows other
    # roles' activity only to members of pg_read_all_stats.
    cluster.execute(pgsql.SQL("GRANT pg_read_all_stats TO {}").format(pgsql.Identifier(MIGRATOR)))


def ensure_unleash_database(cluster: PostgresCluster) -> None:
    cluster.create_database(UNLEASH_DB, owner=UNLEASH)


def _grant(cluster: PostgresCluster, dbname: str) -> None:
    ident = pgsql.Identifier
    db, app = ident(dbname), ident(APP_RW)
    statements = [
        pgsql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(db),
        pgsql.SQL("GRANT CONNECT, TEMPORARY ON DATABASE {} TO {}").format(db, app),
    ]
    cluster_statements = [
        pgsql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(app),
        pgsql.SQL(
            "ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {}"
        ).format(ident(MIGRATOR), app),
        pgsql.SQL(
            "ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO {}"
        ).format(ident(MIGRATOR), app),
        pgsql.SQL("ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA public GRANT USAGE ON TYPES TO {}").format(
            ident(MIGRATOR), app
        ),
        # Objects that exist already (a stack brought up again): the same privileges.
        pgsql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {}").format(app),
        pgsql.SQL("GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {}").format(app),
    ]
    for statement in statements:
        cluster.execute(statement)
    conn = psycopg2.connect(cluster.admin_dsn(dbname))
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SET ROLE migrator")  # default privileges and grants as the owner of the objects
            for statement in cluster_statements:
                cur.execute(statement)
    finally:
        conn.close()


def migrate(dsn: str, revision: str = BASELINE, direction: str = "upgrade") -> None:
    """`alembic upgrade|downgrade <revision>` on one database, as migrator (alembic's API, in this process)."""
    if not (MIGRATIONS / "env.py").exists():
        raise SchemaError(f"{MIGRATIONS}/env.py is missing: the alembic environment of the application is needed.")
    from alembic import command  # noqa: PLC0415 - only when migrating
    from alembic.config import Config  # noqa: PLC0415

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", dsn.replace("%", "%%"))  # configparser interpolation
    try:
        getattr(command, direction)(cfg, revision)
    except Exception as exc:
        message = f"alembic {direction} {revision} failed: {type(exc).__name__}: {_redact(str(exc), dsn)}"
        raise SchemaError(message) from exc


def _redact(text: str, dsn: str) -> str:
    from urllib.parse import urlsplit  # noqa: PLC0415

    password = urlsplit(dsn).password
    return text.replace(password, "***") if password else text


def seed(dsn: str, rows: int = SEED_ROWS) -> int:
    """Legacy rows in `documents` and `transformation_results`, once (a database with documents is left alone)."""
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM documents")
            (existing,) = cur.fetchone()
            if existing:
                return 0
            for number in range(1, rows + 1):
                payload = {"seq": number, "source": "seed", "amount": number * 10}
                cur.execute(
                    "INSERT INTO documents (external_ref, payload, status) VALUES (%s, %s, 'transformed') RETURNING id",
                    (f"seed-{number:05d}", json.dumps(payload)),
                )
                (document_id,) = cur.fetchone()
                cur.execute(
                    "INSERT INTO transformation_results (document_id, output, engine) VALUES (%s, %s, 'legacy')",
                    (document_id, json.dumps({"engine": "legacy", "fields": sorted(payload)})),
                )
        return rows
    finally:
        conn.close()


def current_revision(dsn: str) -> str | None:
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT to_regclass('alembic_version')")
            if cur.fetchone()[0] is None:
                return None
            cur.execute("SELECT version_num FROM alembic_version")
            row = cur.fetchone()
            return row[0] if row else None
    finally:
        conn.close()


def drop_rollback_archives(dsn: str) -> None:
    """Forget earlier rehearsals' rollback archives (schema `rollback_archive`, which `up` does not create).

    A stack shared by many tests is reset between them; an archive left by one test's rollback would
    otherwise be restored, or refused as conflicting, by the next test's deploy.yml.
    """
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("DROP SCHEMA IF EXISTS rollback_archive CASCADE")
    finally:
        conn.close()


def prepare_database(cluster: PostgresCluster, dbname: str, migrator_secret: str) -> None:
    """Create `dbname` (owner migrator), grant app_rw, migrate to the baseline if it has no revision, seed."""
    cluster.create_database(dbname, owner=MIGRATOR)
    _grant(cluster, dbname)
    dsn = cluster.dsn(dbname, user=MIGRATOR, password=migrator_secret)
    if current_revision(dsn) is None:
        migrate(dsn, BASELINE)
        _grant(cluster, dbname)
    seed(dsn)


def ensure_tenants(cluster: PostgresCluster, count: int, migrator_secret: str) -> list[str]:
    """Exactly `count` tenant databases tenant_001.. (missing ones copied from the template, extra ones dropped)."""
    wanted = [tenant_name(n) for n in range(1, count + 1)]
    existing = {row[0] for row in cluster.execute("SELECT datname FROM pg_database WHERE datname LIKE 'tenant\\_%'")}
    for extra in sorted(existing - set(wanted)):
        cluster.drop_database(extra)
    missing = [name for name in wanted if name not in existing]
    if missing:
        if not cluster.execute("SELECT 1 FROM pg_database WHERE datname = %s", params=(TEMPLATE_DB,)):
            prepare_database(cluster, TEMPLATE_DB, migrator_secret)
            cluster.execute(pgsql.SQL("ALTER DATABASE {} IS_TEMPLATE true").format(pgsql.Identifier(TEMPLATE_DB)))
        for name in missing:
            cluster.execute(
                pgsql.SQL("CREATE DATABASE {} TEMPLATE {} OWNER {}").format(
                    pgsql.Identifier(name), pgsql.Identifier(TEMPLATE_DB), pgsql.Identifier(MIGRATOR)
                )
            )
            _grant(cluster, name)
    return wanted
