"""EF Core: an EF Core-managed PostgreSQL 16 database reverted from a down script, under every guard.

The scripts are tests/data/efcore/*.sql, in the shape `dotnet ef migrations script` emits for Npgsql
(EF Core 8; see its README). The same failure tests as alembic: a failing script is atomic, lock
contention is bounded (measured by PostgreSQL), concurrent runs end with one change, the archive
holds every row that left, and whatever is refused changes nothing.
"""

from __future__ import annotations

import hashlib
import threading

import pytest

from tests.fixtures.efcore import (
    AUDIT_ID,
    EFCORE,
    FEATURE_ID,
    LEGACY_ID,
    make_ef_db,
)
from tests.fixtures.schema import AppDatabase, revert
from tests.integration.locking import (
    LOCK_WAIT_MARGIN,
    Blocker,
    LockWaitLog,
    Reader,
    log_lock_waits,
    module_sessions,
    two_racing_runs,
    wait_for,
)

pytestmark = pytest.mark.integration

DOWN = EFCORE / "down_to_legacy.sql"


def ef(db: AppDatabase | None, script, revision: str = LEGACY_ID, **job) -> dict:
    """revert_database() with tool efcore on `db`."""
    return revert(db, tool="efcore", script=str(script), revision=revision, script_location=None, **job)


def history(db: AppDatabase) -> list[str]:
    return [r[0] for r in db.query('SELECT "MigrationId" FROM "__EFMigrationsHistory" ORDER BY 1')]


def state(db: AppDatabase) -> dict:
    tables = [
        r[0]
        for r in db.query("SELECT relname FROM pg_class WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace")
    ]
    return {
        "fingerprint": db.fingerprint(),
        "history": history(db),
        "counts": {t: db.count(f"public.{t}") for t in sorted(tables)},
        "schemas": sorted(db.schemas()),
    }


def test_check_mode_shows_the_script_its_sha256_and_every_drop_with_rows(ef_db):
    before = state(ef_db)
    plan = ef(ef_db, DOWN, check_mode=True)
    assert not plan["failed"], plan["msg"]
    assert plan["changed"] is True and plan["tool"] == "efcore"
    assert plan["sql"] == DOWN.read_text()
    assert plan["sql_sha256"] == hashlib.sha256(DOWN.read_bytes()).hexdigest()
    assert (plan["from_revision"], plan["to_revision"]) == (FEATURE_ID, LEGACY_ID)
    assert [s["revision"] for s in plan["steps"]] == [FEATURE_ID]
    assert [(d["table"], d["column"], d["action"], d["rows"]) for d in plan["drops"]] == [
        ("TransformationJobs", None, "drop table", 20),
        ("Documents", "TransformVersion", "drop column", 40),
    ]
    assert state(ef_db) == before


def test_apply_reverts_archives_every_row_and_records_nothing_twice(ef_db, ef_legacy_fingerprint):
    columns = '"Id", "DocumentId", "Stage"::text AS "Stage", "PipelineVersion", "Output", "CreatedAt"'
    jobs = sorted(ef_db.query(f'SELECT row_to_json(j)::text FROM (SELECT {columns} FROM "TransformationJobs") j'))  # noqa: S608
    versions = sorted(ef_db.query('SELECT "Id", "TransformVersion" FROM "Documents"'))
    plan = ef(ef_db, DOWN, check_mode=True)

    result = ef(ef_db, DOWN, run_id="ef-1", expected_sql_sha256=plan["sql_sha256"])

    assert not result["failed"], result["msg"]
    assert result["changed"] and result["attempts"] == 1 and result["sql_sha256"] == plan["sql_sha256"]
    assert history(ef_db) == [LEGACY_ID]
    assert ef_db.fingerprint() == ef_legacy_fingerprint
    assert result["archive"]["rows"] == 60
    archived_jobs = sorted(
        ef_db.query('SELECT row_to_json(j)::text FROM rollback_archive."ef-1__TransformationJobs" j')
    )
    assert archived_jobs == jobs
    assert sorted(ef_db.query('SELECT * FROM rollback_archive."ef-1__Documents__TransformVersion"')) == versions
    assert ef_db.query("SELECT source_table, row_count, revision FROM rollback_archive.manifest ORDER BY id") == [
        ("TransformationJobs", 20, FEATURE_ID),
        ("Documents", 40, FEATURE_ID),
    ]
    again = ef(ef_db, DOWN)
    assert not again["failed"] and again["changed"] is False and again["attempts"] == 0


def test_two_migrations_in_one_script(ef_audit_db, ef_legacy_fingerprint):
    result = ef(ef_audit_db, EFCORE / "down_audit_to_legacy.sql")
    assert not result["failed"], result["msg"]
    assert [s["revision"] for s in result["steps"]] == [AUDIT_ID, FEATURE_ID]
    assert history(ef_audit_db) == [LEGACY_ID] and ef_audit_db.fingerprint() == ef_legacy_fingerprint
    assert {d["revision"] for d in result["drops"]} == {AUDIT_ID, FEATURE_ID}


@pytest.mark.parametrize(
    ("script", "revision", "message"),
    [
        ("up.sql", LEGACY_ID, "creates the migrations history: it is an up script"),
        ("down_idempotent.sql", LEGACY_ID, "is an idempotent script (--idempotent)"),
        ("down_concurrently.sql", LEGACY_ID, "would end the transaction halfway"),
        ("down_to_legacy.sql", "20230101000000_Never", "is not an applied migration of this database"),
        ("down_to_legacy.sql", "0", "reverts 20240315120000_DataTransformation, but going from"),
        ("down_audit_to_legacy.sql", LEGACY_ID, "reverts 20240420083000_TransformationAudit, 2024031512"),
        ("down_do_block.sql", LEGACY_ID, "DO $$ BEGIN UPDATE"),
        ("missing.sql", LEGACY_ID, "Cannot read the EF Core script"),
    ],
)
def test_anything_but_the_down_script_of_this_range_is_refused_and_changes_nothing(ef_db, script, revision, message):
    before = state(ef_db)
    for check_mode in (True, False):
        result = ef(ef_db, EFCORE / script, revision=revision, check_mode=check_mode)
        assert result["failed"] and message in result["msg"], result["msg"]
        assert "\n" not in result["msg"] and result["changed"] is False
        assert state(ef_db) == before


def test_an_up_script_of_a_later_range_is_refused(ef_db, tmp_path):
    up = tmp_path / "up_audit.sql"
    text = (EFCORE / "up.sql").read_text()
    up.write_text(text[text.index('START TRANSACTION;\n\nALTER TABLE "TransformationJobs" ADD') :])
    before = state(ef_db)
    result = ef(ef_db, up)
    assert result["failed"] and "it is an up script" in result["msg"], result["msg"]
    assert state(ef_db) == before


def test_a_script_for_another_history_is_refused(ef_audit_db):
    before = state(ef_audit_db)
    result = ef(ef_audit_db, DOWN)
    assert result["failed"] and f"dotnet ef migrations script {AUDIT_ID} {LEGACY_ID}" in result["msg"], result["msg"]
    assert state(ef_audit_db) == before


def test_a_failing_script_is_atomic(ef_audit_db):
    before = state(ef_audit_db)
    result = ef(ef_audit_db, EFCORE / "down_faulty.sql", run_id="ef-faulty")
    assert result["failed"] and result["changed"] is False
    assert "simulated failure halfway through the EF Core down script" in result["msg"]
    assert "the transaction was rolled back" in result["msg"]
    assert [a["outcome"] for a in result["attempt_log"]] == ["failed"]
    assert state(ef_audit_db) == before and "rollback_archive" not in before["schemas"]


def test_a_delete_in_the_script_is_archived_first(ef_db):
    deleted = sorted(ef_db.query('SELECT "Id", "DocumentId" FROM "TransformationResults" WHERE "Engine" = \'v2\''))
    plan = ef(ef_db, EFCORE / "down_delete.sql", check_mode=True)
    assert not plan["failed"], plan["msg"]
    [statement] = plan["data_statements"]
    assert statement["archived"] and statement["revision"] == FEATURE_ID
    result = ef(ef_db, EFCORE / "down_delete.sql", run_id="ef-del")
    assert not result["failed"], result["msg"]
    archived = sorted(
        ef_db.query('SELECT "Id", "DocumentId" FROM rollback_archive."ef-del__TransformationResults__deleted"')
    )
    assert archived == deleted and len(deleted) == 13


def test_a_do_block_runs_only_when_accepted_and_is_recorded(ef_db):
    plan = ef(ef_db, EFCORE / "down_do_block.sql", check_mode=True)
    [statement] = plan["data_statements"]
    accept = [f"{FEATURE_ID}:{statement['sha256']}"]
    assert accept[0] in plan["msg"]
    result = ef(ef_db, EFCORE / "down_do_block.sql", accept_data_statements=accept)
    assert not result["failed"], result["msg"]
    assert result["accepted_data_statements"] == accept and result["data_statements"][0]["accepted"] is True
    assert result["accepted_effects"] == [{"table": "public.Documents", "rows_deleted": 0, "rows_updated": 13}]


def test_lock_contention_is_bounded_and_names_the_blocker(ef_db, pg_cluster):
    log_lock_waits(pg_cluster, ef_db.name)
    before = state(ef_db)
    blocker = Blocker(ef_db.dsn, '"TransformationJobs"')
    reader = Reader(ef_db.dsn, '"TransformationJobs"')
    waits = LockWaitLog(pg_cluster)
    reader.start()
    try:
        result = ef(ef_db, DOWN, lock_timeout=1.0, lock_attempts=2, lock_backoff=0.2)
    finally:
        reader.stop.set()
        reader.join(timeout=30)
        blocker.release()
    assert result["failed"] and [a["outcome"] for a in result["attempt_log"]] == ["lock_timeout"] * 2
    assert f"pid {blocker.pid} (idle in transaction" in result["msg"]
    reader_waits = waits.waits(reader.pid)
    assert reader_waits and max(reader_waits) <= 1.0 + LOCK_WAIT_MARGIN, reader_waits
    assert state(ef_db) == before


def _ef_in_process(dsn: str, queue) -> None:
    queue.put(
        revert(
            None,
            dsn=dsn,
            tool="efcore",
            script=str(DOWN),
            revision=LEGACY_ID,
            script_location=None,
            lock_timeout=2,
            lock_attempts=30,
            lock_backoff=0.2,
            lock_backoff_max=0.5,
        )
    )


def test_two_concurrent_runs_end_with_one_change(ef_db):
    results = two_racing_runs(ef_db, _ef_in_process, Blocker(ef_db.dsn, '"TransformationJobs"'))
    assert not any(r["failed"] for r in results), [r["msg"] for r in results]
    assert sorted(r["changed"] for r in results) == [False, True]
    assert history(ef_db) == [LEGACY_ID]
    assert ef_db.query("SELECT count(DISTINCT run_id), count(*) FROM rollback_archive.manifest") == [(1, 2)]


def test_schema_state_reads_an_ef_core_database_and_records_its_rollback_point(ef_db):
    from ansible.module_utils.schema_tasks import run_schema_state  # noqa: PLC0415

    params = {
        "dsn": ef_db.dsn,
        "databases": None,
        "parallel": 1,
        "tool": "efcore",
        "script": str(EFCORE / "up.sql"),
        "config_file": None,
        "script_location": None,
        "version_locations": None,
        "record_rollback_point": True,
        "recorded_by": "tester (extra_var)",
        "fingerprint": True,
        "include_objects": False,
        "error_rate_baseline": 0.01,
        "run_id": None,
        "note": None,
        "advisory_lock_wait": 5.0,
        "application_name": "emergency-rollback",
        "connect_timeout": 10,
        "require_verified_tls": False,
    }
    result = run_schema_state(params)
    assert not result["failed"], result["msg"]
    assert result["revision"] == FEATURE_ID and result["heads"] == [AUDIT_ID]
    assert result["rollback_point"]["revision"] == FEATURE_ID
    assert result["rollback_point"]["fingerprint"] == result["fingerprint"] == ef_db.fingerprint()
    # After the revert, the database reads as the rollback point's predecessor.
    assert not ef(ef_db, DOWN)["failed"]
    after = run_schema_state({**params, "record_rollback_point": False})
    assert after["revision"] == LEGACY_ID


def test_a_database_without_history_is_refused(pg_cluster):
    db = make_ef_db(pg_cluster, LEGACY_ID, seed=False)
    try:
        db.query('DROP TABLE "__EFMigrationsHistory"')
        result = ef(db, DOWN)
        assert result["failed"] and "has no __EFMigrationsHistory table" in result["msg"]
    finally:
        pg_cluster.drop_database(db.name)


def test_release_between_attempts_is_waited_out(ef_db):
    blocker = Blocker(ef_db.dsn, '"TransformationJobs"')

    def release() -> None:
        wait_for(lambda: module_sessions(ef_db, waiting_on="relation"), "the run to wait for the table lock")
        wait_for(lambda: not module_sessions(ef_db, waiting_on="relation"), "the first attempt to time out")
        blocker.release()

    thread = threading.Thread(target=release, daemon=True)
    thread.start()
    result = ef(ef_db, DOWN, lock_timeout=1.0, lock_attempts=5, lock_backoff=0.2)
    thread.join(timeout=30)
    assert not result["failed"], result["msg"]
    assert result["attempts"] >= 2 and result["attempt_log"][-1]["outcome"] == "committed"
    assert history(ef_db) == [LEGACY_ID]
