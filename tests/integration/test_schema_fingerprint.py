"""The schema fingerprint and the rollback points (schema_state's logic) on real PostgreSQL 16."""

import threading
import time

import psycopg2
import pytest
from ansible.module_utils.pg_session import ADVISORY_LOCK_KEY
from ansible.module_utils.schema_fingerprint import diff_objects, fingerprint, schema_objects
from ansible.module_utils.schema_rollback_points import read_state, read_states

from tests.fixtures.schema import HEAD, LEGACY, AppDatabase, clone_app_db, revert

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def shared_db(app_template):
    """One database at the head for the read-only tests of this module (changes are rolled back)."""
    db = clone_app_db(app_template, "fp_shared")
    yield db
    app_template.cluster.drop_database(db.name)


def _fingerprint_after(db: AppDatabase, *statements: str) -> str:
    """The fingerprint inside a transaction that ran `statements`, rolled back afterwards."""
    conn = psycopg2.connect(db.dsn)
    try:
        with conn.cursor() as cur:
            for statement in statements:
                cur.execute(statement)
            return fingerprint(cur)
    finally:
        conn.rollback()
        conn.close()


def test_stable_across_sessions_search_paths_and_databases(shared_db, pg_cluster):
    first = shared_db.fingerprint()
    assert first == shared_db.fingerprint()
    assert _fingerprint_after(shared_db, "SET search_path = nowhere") == first
    twin_name = shared_db.name + "_twin"
    pg_cluster.create_database(twin_name)
    try:
        twin = AppDatabase(twin_name, pg_cluster.dsn(twin_name), pg_cluster)
        twin.upgrade(HEAD)
        assert twin.fingerprint() == first  # other OIDs, same schema
    finally:
        pg_cluster.drop_database(twin_name)


def test_insensitive_to_rows_sequences_and_the_runbooks_own_schemas(shared_db):
    first = shared_db.fingerprint()
    assert (
        _fingerprint_after(
            shared_db,
            "DELETE FROM transformation_jobs",
            "INSERT INTO documents (external_ref, payload) VALUES ('x', '{}')",
            "SELECT setval('documents_id_seq', 100000)",
            "UPDATE alembic_version SET version_num = 'something_else'",
            "CREATE SCHEMA runbook",
            "CREATE TABLE runbook.rollback_points (id int)",
            "CREATE SCHEMA rollback_archive",
            "CREATE TABLE rollback_archive.t AS SELECT * FROM documents",
        )
        == first
    )


@pytest.mark.parametrize(
    "change",
    [
        "ALTER TABLE documents ADD COLUMN extra text",
        "ALTER TABLE documents ALTER COLUMN status SET DEFAULT 'new'",
        "ALTER TABLE documents ALTER COLUMN status DROP NOT NULL",
        "ALTER TABLE documents ALTER COLUMN transform_version TYPE bigint",
        "ALTER TABLE documents RENAME COLUMN status TO state",
        "ALTER TABLE documents RENAME TO docs",
        "CREATE INDEX ix_documents_status ON documents (status)",
        "DROP INDEX ix_transformation_jobs_document_stage",
        "ALTER TABLE documents ADD CONSTRAINT positive_version CHECK (transform_version > 0)",
        "ALTER TABLE transformation_jobs DROP CONSTRAINT transformation_jobs_document_id_fkey",
        "ALTER TYPE transformation_stage ADD VALUE 'cancelled'",
        "ALTER TYPE transformation_stage RENAME VALUE 'failed' TO 'errored'",
        "CREATE TYPE other_enum AS ENUM ('a')",
        "CREATE SEQUENCE free_seq",
        "ALTER SEQUENCE documents_id_seq INCREMENT BY 2",
        "CREATE VIEW v_docs AS SELECT id FROM documents",
        "CREATE TABLE extra_table (id int)",
        "CREATE SCHEMA tenant",
        "CREATE DOMAIN positive AS integer CHECK (VALUE > 0)",
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
        "CREATE UNLOGGED TABLE scratch (id int)",
    ],
)
def test_any_schema_difference_changes_it(shared_db, change):
    assert _fingerprint_after(shared_db, change) != shared_db.fingerprint()


def test_diff_objects_says_what_differs(app_db):
    before = app_db.objects()
    revert(app_db)
    diff = diff_objects(before, app_db.objects())
    assert set(diff) >= {"column", "relation", "enum", "index", "sequence", "constraint"}
    assert any("transformation_stage" in line for line in diff["enum"]["missing"])
    assert not any(d["extra"] for d in diff.values())


def test_schema_objects_cover_the_interface(shared_db):
    conn = psycopg2.connect(shared_db.dsn)
    try:
        with conn.cursor() as cur:
            objects = schema_objects(cur)
    finally:
        conn.close()
    text = "\n".join(line for lines in objects.values() for line in lines)
    for name in ("transformation_jobs", "ix_transformation_jobs_document_stage", "transform_version", "queued"):
        assert name in text
    assert "alembic_version" not in text


# -- rollback points -------------------------------------------------------------------------------------
def test_reading_changes_nothing(app_db):
    state = read_state({"name": "db", "dsn": app_db.dsn})
    assert not state["failed"], state["msg"]
    assert (state["revision"], state["revisions"], state["rollback_point"]) == (HEAD, [HEAD], None)
    assert state["fingerprint"] == app_db.fingerprint() and state["changed"] is False
    assert "runbook" not in app_db.schemas()


def test_recording_a_rollback_point_then_reading_it_back(app_db):
    app_db.upgrade(HEAD)
    revert(app_db)
    fingerprint_before = app_db.fingerprint()
    job = {
        "dsn": app_db.dsn,
        "record_rollback_point": True,
        "error_rate_baseline": 0.0125,
        "recorded_by": "alice (cli)",
        "run_id": "deploy-42",
        "note": "release 2.4",
    }
    check = read_state({**job, "check_mode": True})
    assert check["changed"] is True and check["would_record"]["revision"] == LEGACY
    assert check["rollback_point"] is None and "runbook" not in app_db.schemas()

    recorded = read_state(job)
    assert not recorded["failed"], recorded["msg"]
    point = recorded["rollback_point"]
    assert recorded["recorded"] and recorded["changed"]
    assert point["revision"] == LEGACY and point["fingerprint"] == fingerprint_before
    assert (point["error_rate_baseline"], point["recorded_by"], point["run_id"]) == (0.0125, "alice (cli)", "deploy-42")
    assert point["recorded_at"].endswith("+00:00")
    # The runbook's table is not part of the schema, and a later read returns the newest point.
    assert app_db.fingerprint() == fingerprint_before
    app_db.upgrade(HEAD)
    read_state({**job, "run_id": "deploy-43", "error_rate_baseline": None})
    state = read_state({"dsn": app_db.dsn})
    assert state["revision"] == HEAD
    assert state["rollback_point"]["run_id"] == "deploy-43"
    assert state["rollback_point"]["revision"] == HEAD
    assert state["rollback_point"]["error_rate_baseline"] is None


def test_recording_needs_recorded_by(app_db):
    state = read_state({"dsn": app_db.dsn, "record_rollback_point": True})
    assert state["failed"] and "recorded_by" in state["msg"]


def test_recording_waits_for_a_running_revert_and_is_bounded(app_db):
    holder = psycopg2.connect(app_db.dsn, application_name="emergency-rollback")
    with holder.cursor() as cur:
        cur.execute("SELECT pg_advisory_lock(%s)", (ADVISORY_LOCK_KEY,))
    holder.commit()
    job = {"dsn": app_db.dsn, "record_rollback_point": True, "recorded_by": "ci", "advisory_lock_wait": 0.5}
    try:
        refused = read_state(job)
        assert refused["failed"] and "application_name 'emergency-rollback'" in refused["msg"]
        threading.Timer(0.5, holder.close).start()
        started = time.monotonic()
        done = read_state({**job, "advisory_lock_wait": 10})
        assert not done["failed"], done["msg"]
        assert time.monotonic() - started >= 0.4
    finally:
        holder.close()


def test_many_databases_and_a_bad_password(app_db, pg_cluster):
    canary = "Canary-State-9d1"
    states = read_states(
        [
            {"name": "good", "dsn": app_db.dsn},
            {"name": "bad", "dsn": pg_cluster.dsn(app_db.name, password=canary)},
        ],
        parallel=2,
    )
    assert [s["name"] for s in states] == ["good", "bad"]
    assert not states[0]["failed"] and states[0]["revision"] == HEAD
    assert states[1]["failed"] and "carries a password" in states[1]["msg"]  # refused before any contact
    assert canary not in repr(states)
