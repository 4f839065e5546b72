"""The alembic history of the application database, against a real PostgreSQL 16.

pytest-alembic's own tests (imported below, so pytest collects them here) run on the
`alembic_config`/`alembic_engine` fixtures of this module: a single head; upgrade from an empty
database to the head; every revision upgrades, downgrades and upgrades again with rows in the
tables. That a downgrade leaves no trace is checked with the schema fingerprint, which sees what
autogenerate comparisons miss (an ENUM type left behind, sqlalchemy/alembic#886). Not used:
pytest-alembic's test_model_definitions_match_ddl (the migrations are written by hand, there are
no models) and its experimental test_downgrade_leaves_no_trace (it hands SQLAlchemy 2.1 a wrapped
connection that Dialect.has_table() rejects).
"""

import os
import subprocess
import sys
from pathlib import Path

import psycopg2
import pytest
from pytest_alembic.tests import test_single_head_revision, test_up_down_consistency, test_upgrade
from sqlalchemy import create_engine, pool

from tests.fixtures.schema import HEAD, LEGACY, MIGRATIONS, ROOT, AppDatabase

pytestmark = pytest.mark.integration

__all__ = ["test_single_head_revision", "test_up_down_consistency", "test_upgrade"]

ALEMBIC = str(Path(sys.executable).parent / "alembic")

# Rows at each revision, so that every downgrade meets data (pytest-alembic inserts them).
AT_REVISION_DATA = {
    LEGACY: [
        {"__tablename__": "documents", "id": 1, "external_ref": "doc-1", "payload": {"amount": 10}},
        {"__tablename__": "transformation_results", "document_id": 1, "output": {"legacy": True}},
    ],
    HEAD: [
        {"__tablename__": "documents", "id": 2, "external_ref": "doc-2", "payload": {}, "transform_version": 2},
        {"__tablename__": "transformation_jobs", "document_id": 2, "stage": "running", "output": {"v2": 1}},
    ],
}


@pytest.fixture
def alembic_config():
    return {"file": str(MIGRATIONS / "alembic.ini"), "at_revision_data": dict(AT_REVISION_DATA)}


@pytest.fixture
def alembic_engine(pg_cluster, pg_database):
    dsn = pg_cluster.dsn(pg_database)
    engine = create_engine("postgresql+psycopg2://", creator=lambda: psycopg2.connect(dsn), poolclass=pool.NullPool)
    yield engine
    engine.dispose()


@pytest.fixture
def empty_db(pg_cluster, pg_database) -> AppDatabase:
    return AppDatabase(pg_database, pg_cluster.dsn(pg_database), pg_cluster)


def _alembic_cli(*args: str, dsn: str | None = None, ini: Path = MIGRATIONS / "alembic.ini"):
    env = {k: v for k, v in os.environ.items() if k not in ("ROLLBACK_DB_DSN", "PGPASSWORD")}
    if dsn:
        env["ROLLBACK_DB_DSN"] = dsn
    return subprocess.run(
        [ALEMBIC, "-c", str(ini), *args], cwd=ROOT, capture_output=True, text=True, env=env, timeout=120, check=False
    )


def test_every_revision_round_trips_to_the_same_fingerprint(empty_db):
    """upgrade -> downgrade -> same fingerprint as before -> upgrade again -> same as after the upgrade."""
    from ansible.module_utils.alembic_runner import load_script  # noqa: PLC0415

    chain = [r.revision for r in reversed(list(load_script(str(MIGRATIONS)).walk_revisions()))]
    assert chain == [LEGACY, HEAD]
    previous = "base"
    for revision in chain:
        before = empty_db.objects()
        empty_db.upgrade(revision)
        after_upgrade = empty_db.objects()
        if revision == LEGACY:
            empty_db.query("INSERT INTO documents (external_ref, payload) VALUES ('r', '{}')")
        else:
            empty_db.query("INSERT INTO transformation_jobs (document_id) SELECT id FROM documents")
        assert after_upgrade != before
        result = _alembic_cli("downgrade", previous, dsn=empty_db.dsn)
        assert result.returncode == 0, result.stderr
        assert empty_db.objects() == before, f"{revision}'s downgrade left a trace"
        empty_db.upgrade(revision)
        assert empty_db.objects() == after_upgrade
        previous = revision
    assert empty_db.revision() == HEAD


def test_downgrade_drops_the_enum_type(empty_db):
    empty_db.upgrade(HEAD)
    assert empty_db.query("SELECT 1 FROM pg_type WHERE typname = 'transformation_stage'")
    assert _alembic_cli("downgrade", LEGACY, dsn=empty_db.dsn).returncode == 0
    assert not empty_db.query("SELECT 1 FROM pg_type WHERE typname = 'transformation_stage'")
    assert empty_db.query("SELECT column_name FROM information_schema.columns WHERE table_name = 'documents'") == [
        ("id",),
        ("external_ref",),
        ("payload",),
        ("status",),
        ("created_at",),
    ]


def test_the_schema_is_the_one_of_the_interface(empty_db):
    """docs/interfaces.md: names, types, defaults and the foreign keys the application relies on."""
    empty_db.upgrade(HEAD)
    columns = dict(
        empty_db.query(
            """SELECT table_name || '.' || column_name, concat_ws(' ', data_type, udt_name, is_nullable, column_default)
               FROM information_schema.columns WHERE table_schema = 'public' AND table_name <> 'alembic_version'"""
        )
    )
    assert columns["documents.id"].startswith("bigint int8 NO nextval(")
    assert columns["documents.status"] == "text text NO 'received'::text"
    assert columns["documents.transform_version"] == "integer int4 NO 1"
    assert columns["transformation_jobs.stage"] == "USER-DEFINED transformation_stage NO 'queued'::transformation_stage"
    assert columns["transformation_jobs.pipeline_version"] == "integer int4 NO 2"
    assert columns["transformation_jobs.output"] == "jsonb jsonb YES"
    assert columns["transformation_results.engine"] == "text text NO 'legacy'::text"
    labels = empty_db.query("SELECT enum_range(NULL::transformation_stage)::text")[0][0]
    assert labels == "{queued,running,succeeded,failed}"
    assert empty_db.query(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'transformation_jobs_document_id_fkey'"
    ) == [("FOREIGN KEY (document_id) REFERENCES documents(id) ON DELETE CASCADE",)]
    assert empty_db.query("SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_transformation_jobs_document_stage'")


def test_offline_mode_renders_the_sql_without_a_database():
    result = _alembic_cli("downgrade", f"{HEAD}:{LEGACY}", "--sql")
    assert result.returncode == 0, result.stderr
    sql = result.stdout
    assert sql.startswith("BEGIN;") and sql.rstrip().endswith("COMMIT;")
    for statement in (
        "ALTER TABLE documents DROP COLUMN transform_version;",
        "DROP INDEX ix_transformation_jobs_document_stage;",
        "DROP TABLE transformation_jobs;",
        "DROP TYPE transformation_stage;",
        "UPDATE alembic_version SET version_num='0001_legacy'",
    ):
        assert statement in sql


def test_env_takes_the_database_from_rollback_db_dsn_only(empty_db):
    refused = _alembic_cli("upgrade", "head")
    assert refused.returncode != 0
    assert "set ROLLBACK_DB_DSN" in refused.stderr
    done = _alembic_cli("upgrade", "head", dsn=empty_db.dsn)
    assert done.returncode == 0, done.stderr
    assert empty_db.revision() == HEAD
    env_py = (MIGRATIONS / "env.py").read_text()
    assert "@127.0.0.1" not in env_py and "localhost" not in env_py
    assert "NullPool" in env_py
