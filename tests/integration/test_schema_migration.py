"""The schema revert (alembic_runner.revert_database) against real PostgreSQL 16 databases.

Plan, apply, archive, idempotence, every refusal, a downgrade failing halfway, a non-superuser
owner role. Many databases: test_schema_many_databases.py; locks and concurrency: test_schema_locks.py.
"""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import psycopg2
import pytest
from psycopg2 import sql as pgsql

from tests.fixtures.schema import (
    BRANCHED_VERSIONS,
    FAULTY_VERSIONS,
    HEAD,
    LEGACY,
    VERSIONS,
    AppDatabase,
    revert,
    seed,
)

pytestmark = pytest.mark.integration

CANARY = "Canary-Secret-7f3e"


def _unchanged(db: AppDatabase, fingerprint: str, revision: str) -> None:
    assert db.fingerprint() == fingerprint
    assert db.revision() == revision
    assert "rollback_archive" not in db.schemas()


def _one_sentence(message: str) -> None:
    assert message and "\n" not in message and "Traceback" not in message


def test_check_mode_returns_the_plan_and_changes_nothing(app_db):
    before = app_db.fingerprint()
    result = revert(app_db, check_mode=True)
    assert not result["failed"], result["msg"]
    assert result["changed"] is True
    assert (result["from_revision"], result["to_revision"]) == (HEAD, LEGACY)
    assert [s["revision"] for s in result["steps"]] == [HEAD]
    assert "DROP TYPE transformation_stage;" in result["sql"]
    assert result["sql_sha256"] == hashlib.sha256(result["sql"].encode()).hexdigest()
    assert result["drops"] == [
        {
            "schema": "public",
            "table": "documents",
            "column": "transform_version",
            "rows": 40,
            "action": "drop column",
            "revision": HEAD,
        },
        {
            "schema": "public",
            "table": "transformation_jobs",
            "column": None,
            "rows": 20,
            "action": "drop table",
            "revision": HEAD,
        },
    ]
    assert result["data_statements"] == []
    assert result["attempts"] == 0 and result["archive"] is None
    _unchanged(app_db, before, HEAD)


def test_apply_reverts_to_the_legacy_schema_and_archives_every_dropped_row(app_db):
    jobs = app_db.query("SELECT id, document_id, stage::text, pipeline_version, output FROM transformation_jobs")
    versions = app_db.query("SELECT id, transform_version FROM documents")
    plan = revert(app_db, check_mode=True)

    result = revert(app_db, run_id="run-1", expected_sql_sha256=plan["sql_sha256"])

    assert not result["failed"], result["msg"]
    assert result["changed"] is True and result["attempts"] == 1
    assert result["sql_sha256"] == plan["sql_sha256"]
    assert app_db.revision() == LEGACY
    assert app_db.fingerprint() == app_db.legacy_fingerprint
    assert app_db.count("documents") == 40 and app_db.count("transformation_results") == 40
    archive = result["archive"]
    assert archive["schema"] == "rollback_archive" and archive["run_id"] == "run-1" and archive["rows"] == 60
    tables = {t["source"]: t for t in archive["tables"]}
    assert tables["public.documents.transform_version"]["archive_table"] == (
        'rollback_archive."run-1__documents__transform_version"'
    )
    assert tables["public.documents.transform_version"]["key_columns"] == ["id"]
    # No row lost: the archive holds exactly what the dropped table and column held.
    assert sorted(
        app_db.query('SELECT id, transform_version FROM rollback_archive."run-1__documents__transform_version"')
    ) == sorted(versions)
    archived_jobs = app_db.query(
        'SELECT id, document_id, stage, pipeline_version, output FROM rollback_archive."run-1__transformation_jobs"'
    )
    assert sorted(archived_jobs) == sorted(jobs)
    # The archive does not depend on the ENUM type the downgrade dropped.
    assert app_db.query(
        "SELECT data_type FROM information_schema.columns WHERE table_schema = 'rollback_archive' "
        "AND table_name = 'run-1__transformation_jobs' AND column_name = 'stage'"
    ) == [("text",)]
    manifest = app_db.query(
        "SELECT source_table, source_column, archive_table, row_count, from_revision, to_revision "
        "FROM rollback_archive.manifest WHERE run_id = 'run-1' ORDER BY id"
    )
    assert manifest == [
        ("documents", "transform_version", "run-1__documents__transform_version", 40, HEAD, LEGACY),
        ("transformation_jobs", None, "run-1__transformation_jobs", 20, HEAD, LEGACY),
    ]
    assert [d["rows"] for d in result["drops"]] == [40, 20]
    # Revoked from PUBLIC.
    assert app_db.query("SELECT has_schema_privilege('public', 'rollback_archive', 'USAGE')") == [(False,)]


def test_second_run_changes_nothing(app_db):
    assert revert(app_db)["changed"] is True
    fingerprint = app_db.fingerprint()
    manifest_rows = app_db.count("rollback_archive.manifest")
    again = revert(app_db)
    assert not again["failed"], again["msg"]
    assert again["changed"] is False and again["attempts"] == 0
    assert again["sql"] == "" and again["archive"] is None
    assert again["msg"] == "Already at 0001_legacy: nothing to do."
    assert app_db.fingerprint() == fingerprint and app_db.count("rollback_archive.manifest") == manifest_rows
    assert revert(app_db, check_mode=True)["changed"] is False


def test_without_archive_nothing_is_copied(app_db):
    result = revert(app_db, archive=False)
    assert result["changed"] and result["archive"]["tables"] == [] and result["archive"]["enabled"] is False
    assert [(d["table"], d["column"], d["rows"]) for d in result["drops"]] == [
        ("documents", "transform_version", None),
        ("transformation_jobs", None, None),
    ]
    assert "rollback_archive" not in app_db.schemas()


def test_empty_tables_are_dropped_without_an_archive(app_db):
    app_db.query("DELETE FROM transformation_jobs")
    result = revert(app_db)
    assert [t["source"] for t in result["archive"]["tables"]] == ["public.documents.transform_version"]
    assert [d["rows"] for d in result["drops"]] == [40, 0]


# -- refusals: one sentence, nothing changed ---------------------------------------------------------
def test_refuses_a_target_that_would_be_an_upgrade(app_db):
    revert(app_db)
    fingerprint = app_db.fingerprint()
    result = revert(app_db, revision=HEAD)
    assert result["failed"] and "would be an upgrade" in result["msg"]
    _one_sentence(result["msg"])
    assert app_db.fingerprint() == fingerprint and app_db.revision() == LEGACY


@pytest.mark.parametrize(
    ("job", "message"),
    [
        ({"revision": "0042_nope"}, "Unknown revision '0042_nope'"),
        ({"revision": "-1"}, "relative"),
        ({"expected_sql_sha256": "0" * 64}, "The downgrade SQL changed since it was approved"),
        (
            {"revision": "heads", "version_locations": [str(VERSIONS), str(BRANCHED_VERSIONS)]},
            "multiple heads (0002_data_transformation, 0002b_other_branch)",
        ),
        ({"lock_timeout": 0}, "lock_timeout must be more than 0"),
        ({"script_location": "/nonexistent"}, "is not an alembic script directory"),
    ],
)
def test_refusals_change_nothing(app_db, job, message):
    before = app_db.fingerprint()
    result = revert(app_db, **job)
    assert result["failed"] and message in result["msg"], result["msg"]
    assert result["changed"] is False
    _one_sentence(result["msg"])
    _unchanged(app_db, before, HEAD)


def test_refuses_a_database_without_alembic_version(pg_cluster, pg_database):
    db = AppDatabase(pg_database, pg_cluster.dsn(pg_database), pg_cluster)
    db.query("CREATE TABLE documents (id bigint)")
    before = db.fingerprint()
    result = revert(db)
    assert result["failed"] and "has no alembic_version table" in result["msg"]
    _one_sentence(result["msg"])
    assert db.fingerprint() == before


def test_refuses_a_database_on_two_branches(app_db):
    versions = [str(VERSIONS), str(BRANCHED_VERSIONS)]
    app_db.upgrade("0002b_other_branch", version_locations=[Path(v) for v in versions])
    before = app_db.fingerprint()
    result = revert(app_db, version_locations=versions)
    assert result["failed"] and "several revisions" in result["msg"], result["msg"]
    assert app_db.fingerprint() == before


@pytest.mark.parametrize(
    "make_dsn",
    [
        lambda c, db: c.dsn(db, user="postgres", password=CANARY),  # wrong password
        lambda c, db: c.dsn(db, user="postgres", password=CANARY).replace("postgresql://", "postgresql:/"),  # malformed
        lambda c, db: f"host=127.0.0.1 port={c.port} dbname={db} user=postgres password={CANARY} sslmode=bogus",
        lambda c, db: f"postgresql://postgres:{CANARY}@127.0.0.1:1/{db}?connect_timeout=2",  # nothing listens
    ],
)
def test_a_dsn_that_does_not_connect_fails_without_its_password(app_db, pg_cluster, make_dsn):
    dsn = make_dsn(pg_cluster, app_db.name)
    result = revert(app_db, dsn=dsn)
    # A DSN that libpq can parse and that carries a password is refused before any contact.
    assert result["failed"] and result["msg"].startswith(("Cannot connect", "The DSN of")), result["msg"]
    _one_sentence(result["msg"])
    assert CANARY not in repr(result)
    assert app_db.revision() == HEAD


def test_the_dsn_may_come_from_rollback_db_dsn(app_db, monkeypatch):
    monkeypatch.setenv("ROLLBACK_DB_DSN", app_db.dsn)
    result = revert(None, check_mode=True)
    assert not result["failed"] and result["from_revision"] == HEAD
    monkeypatch.delenv("ROLLBACK_DB_DSN")
    assert "ROLLBACK_DB_DSN" in revert(None)["msg"]


# -- a downgrade failing halfway ---------------------------------------------------------------------
def test_a_downgrade_failing_halfway_leaves_no_trace(app_db):
    """The test-only revision 0003 drops a column and a table holding rows, then raises."""
    # The command-line route a rehearsal uses (tests/data/faulty_versions/alembic.ini) ...
    env = {**os.environ, "ROLLBACK_DB_DSN": app_db.dsn}
    upgrade = subprocess.run(
        [str(Path(sys.executable).parent / "alembic"), "-c", str(FAULTY_VERSIONS / "alembic.ini"), "upgrade", "heads"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert upgrade.returncode == 0, upgrade.stderr
    app_db.query("INSERT INTO transformation_audit (job_id, detail) SELECT id, '{}' FROM transformation_jobs")
    before, objects = app_db.fingerprint(), app_db.objects()

    # ... and the module's: version_locations.
    result = revert(app_db, version_locations=[str(VERSIONS), str(FAULTY_VERSIONS)], run_id="faulty")

    assert result["failed"] and result["changed"] is False
    assert "simulated failure halfway through the downgrade" in result["msg"]
    assert "the transaction was rolled back" in result["msg"]
    _one_sentence(result["msg"])
    assert [a["outcome"] for a in result["attempt_log"]] == ["failed"]
    assert app_db.objects() == objects
    _unchanged(app_db, before, "0003_faulty_downgrade")
    assert app_db.count("transformation_audit") == 20 and app_db.count("transformation_jobs") == 20


# -- a non-superuser owner, and who may read the archive -------------------------------------------------
def test_the_owner_role_archives_and_only_it_can_read_the_archive(pg_cluster, pg_database, owner_role):
    role, app_role, password, dsn = owner_role
    db = AppDatabase(pg_database, dsn, pg_cluster)
    db.upgrade(HEAD)
    seed(db)
    app_dsn = pg_cluster.dsn(pg_database, user=app_role, password=password)

    result = revert(db, run_id="owner-run")

    assert not result["failed"], result["msg"]
    assert result["archive"]["rows"] == 60
    assert db.query('SELECT count(*) FROM rollback_archive."owner-run__transformation_jobs"') == [(20,)]
    assert db.query("SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'rollback_archive'") == [(role,)]
    # The app role got USAGE and SELECT through default privileges; the archive took them back.
    assert db.query(
        """SELECT count(*) FROM pg_class c, aclexplode(c.relacl) a
           WHERE c.relnamespace = 'rollback_archive'::regnamespace AND a.grantee = %s::regrole""",
        (app_role,),
    ) == [(0,)]
    conn = psycopg2.connect(app_dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM documents")  # the app's own grants still work
            assert cur.fetchone() == (40,)
            for table in ("manifest", "owner-run__transformation_jobs"):
                with pytest.raises(psycopg2.errors.InsufficientPrivilege, match="permission denied for schema"):
                    cur.execute(pgsql.SQL("SELECT * FROM {}").format(pgsql.Identifier("rollback_archive", table)))
                conn.rollback()
    finally:
        conn.close()
