"""alembic environment of the TransformationEngine's application database (PostgreSQL 16).

In the style of alembic's `generic` template, with one addition: a caller may hand in its own
connection. Where the database comes from, in this order:

1. `config.attributes["connection"]`: a SQLAlchemy connection (or engine) of the caller. The
   schema_migration module uses this to run the whole downgrade inside the transaction it opened
   (with its advisory lock and timeouts already set); pytest-alembic uses it too. When the
   connection is already in a transaction, alembic neither begins nor commits one: the caller does.
2. `sqlalchemy.url` of the config, if someone sets it (`alembic -x`-free, e.g. in code).
3. The environment variable `ROLLBACK_DB_DSN`: a libpq URI, given to libpq unchanged, so that a
   DSN without a password takes it from `PGPASSWORD` or `~/.pgpass`. Nothing is hard-coded.

Online mode uses `NullPool` (one connection, closed at the end) and runs every revision of the
range in ONE transaction (`transaction_per_migration` stays False): PostgreSQL's transactional DDL
makes a failed downgrade leave nothing behind. Offline mode (`alembic downgrade --sql a:b`, or the
module's check mode) needs no database: it renders the PostgreSQL SQL for review.
"""

import os
from logging.config import fileConfig

import psycopg2
from alembic import context
from sqlalchemy import create_engine, pool

config = context.config

if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

# The migrations are written by hand (op.*): there is no model metadata to autogenerate from.
target_metadata = None

APPLICATION_NAME = "emergency-rollback"


def _database_dsn() -> str:
    url = config.get_main_option("sqlalchemy.url") or os.environ.get("ROLLBACK_DB_DSN")
    if not url:
        raise SystemExit(
            "No database given: set ROLLBACK_DB_DSN to a libpq URI (postgresql://user@host:port/dbname), "
            "or use `alembic downgrade --sql from:to` to render SQL without a database."
        )
    return url


def run_migrations_offline() -> None:
    """Render the SQL of the requested range; no database, no DBAPI connection."""
    context.configure(
        dialect_name="postgresql",
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def _run_with(connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Run the migrations against the caller's connection, or one of our own (NullPool)."""
    given = config.attributes.get("connection")
    if given is not None:
        if hasattr(given, "connect") and not hasattr(given, "in_transaction"):
            # An Engine (pytest-alembic hands one in): one connection for this run.
            with given.connect() as connection:
                _run_with(connection)
                connection.commit()
        else:
            _run_with(given)
        return

    dsn = _database_dsn()
    engine = create_engine(
        "postgresql+psycopg2://",
        creator=lambda: psycopg2.connect(dsn, application_name=APPLICATION_NAME),
        poolclass=pool.NullPool,
    )
    try:
        with engine.connect() as connection:
            _run_with(connection)
            connection.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
