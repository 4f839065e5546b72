"""The way forward: schema_upgrade brings back the rows a rollback archived, against real PostgreSQL 16.

Each test starts from `app_db` (the feature's head with rows), reverts it with the rollback's own code
(alembic_runner.revert_database, which archives what the downgrade drops), then upgrades it again with
upgrade_runner.upgrade_database and compares the rows by checksum (md5 of the ordered rows).
"""

from __future__ import annotations

import json
import threading

import psycopg2
import pytest

from tests.fixtures.schema import DATA_LOSS_VERSIONS, HEAD, LEGACY, MIGRATIONS, ROOT, VERSIONS, AppDatabase, revert

pytestmark = pytest.mark.integration

SHAPES = ROOT / "tests" / "data" / "restore_versions"
SHAPES_HEAD = "0003_restore_shapes"
LOCATIONS = [str(VERSIONS), str(SHAPES)]
LOSS_LOCATIONS = [str(VERSIONS), str(DATA_LOSS_VERSIONS)]
CANARY = "Canary-Personal-Data-51c2"  # stands for a customer's data: never in a result or message

JOBS = (
    "SELECT md5(string_agg(format('%s|%s|%s|%s|%s|%s', id, document_id, stage, pipeline_version, output, created_at),"
    " ',' ORDER BY id)) FROM transformation_jobs"
)
VERSIONS_SUM = "SELECT md5(string_agg(format('%s|%s', id, transform_version), ',' ORDER BY id)) FROM documents"
PRIORITIES = "SELECT md5(string_agg(format('%s|%s', id, priority), ',' ORDER BY id)) FROM documents"
NOTES = "SELECT md5(string_agg(format('%s|%s|%s|%s', id, job_id, ref, note), ',' ORDER BY id)) FROM job_notes"


def upgrade(db: AppDatabase, **job) -> dict:
    from ansible.module_utils.upgrade_runner import upgrade_database  # noqa: PLC0415

    defaults = {
        "name": db.name,
        "dsn": db.dsn,
        "script_location": str(MIGRATIONS),
        "run_id": "deploy-1",
        "restored_by": "alice (extra_var)",
    }
    return upgrade_database({**defaults, **job})


def checksum(db: AppDatabase, statement: str) -> str:
    return db.query(statement)[0][0]


def manifest(db: AppDatabase) -> list[tuple]:
    return db.query(
        """SELECT source_table, source_column, restore_run_id, restored_rows, restore_conflict_rows, restore_outcome,
                  restored_at IS NOT NULL, restored_by
           FROM rollback_archive.manifest ORDER BY id"""
    )


def restored_entries(db: AppDatabase) -> int:
    """Manifest entries marked restored (0 while the manifest has no restore columns yet)."""
    if not db.query(
        "SELECT 1 FROM information_schema.columns WHERE table_name = 'manifest' AND column_name = 'restored_at'"
    ):
        return 0
    return db.query("SELECT count(*) FROM rollback_archive.manifest WHERE restored_at IS NOT NULL")[0][0]


def one_sentence(message: str) -> None:
    assert message and "\n" not in message and "Traceback" not in message


def conflicts_by_kind(result: dict) -> dict[tuple[str, str], dict]:
    return {(a["source"], c["kind"]): c for a in result["restore"]["archives"] for c in a["conflicts"]}


def shapes_db(db: AppDatabase) -> AppDatabase:
    """`db` upgraded to the test-only 0003 (ENUM column, identity, foreign key, unique) with rows in it."""
    db.upgrade(SHAPES_HEAD, [VERSIONS, SHAPES])
    db.query(
        "UPDATE documents SET priority = (ARRAY['low','normal','high'])[1 + id % 3]::document_priority"
        " WHERE id % 5 <> 0"
    )
    db.query(
        """INSERT INTO job_notes (job_id, ref, note)
           SELECT id, 'note-' || id, jsonb_build_object('text', 'note of ' || id)
           FROM transformation_jobs WHERE id % 3 = 0"""
    )
    return db


# -- the round trip ------------------------------------------------------------------------------------
def test_the_round_trip_brings_every_archived_row_back_identical(app_db):
    jobs, versions = checksum(app_db, JOBS), checksum(app_db, VERSIONS_SUM)
    assert not revert(app_db, run_id="rb-1")["failed"]
    assert app_db.revision() == LEGACY
    assert app_db.query("SELECT to_regclass('public.transformation_jobs')") == [(None,)]
    legacy_rows = checksum(app_db, "SELECT md5(string_agg(id::text || external_ref, ',' ORDER BY id)) FROM documents")

    result = upgrade(app_db)

    assert not result["failed"], result["msg"]
    assert result["changed"] is True and result["attempts"] == 1
    assert (result["from_revision"], result["to_revision"]) == (LEGACY, HEAD)
    assert app_db.revision() == HEAD
    # Every archived row back, identical: the ENUM stage archived as text is the ENUM again.
    assert checksum(app_db, JOBS) == jobs
    assert checksum(app_db, VERSIONS_SUM) == versions
    assert app_db.query("SELECT pg_typeof(stage)::text FROM transformation_jobs LIMIT 1") == [("transformation_stage",)]
    assert checksum(app_db, "SELECT md5(string_agg(id::text || external_ref, ',' ORDER BY id)) FROM documents") == (
        legacy_rows
    )
    restore = result["restore"]
    assert (restore["rows_restored"], restore["conflict_rows"], restore["runs"]) == (60, 0, ["rb-1"])
    assert {(a["source"], a["restored"]) for a in restore["archives"]} == {
        ("public.transformation_jobs", 20),
        ("public.documents.transform_version", 40),
    }
    assert result["msg"] == (
        "Upgraded 0001_legacy -> 0002_data_transformation (1 step(s)); restored 60 archived row(s) of rollback "
        "run rb-1 (2 table(s)/column(s))."
    )
    # Marked restored, by whom and by which run.
    assert manifest(app_db) == [
        ("documents", "transform_version", "deploy-1", 40, 0, "restored 40 row(s)", True, "alice (extra_var)"),
        ("transformation_jobs", None, "deploy-1", 20, 0, "restored 20 row(s)", True, "alice (extra_var)"),
    ]
    # The sequence was moved past the restored keys: the application's next insert does not collide.
    highest = app_db.query("SELECT max(id) FROM transformation_jobs")[0][0]
    new_id = app_db.query("INSERT INTO transformation_jobs (document_id, stage) VALUES (2, 'queued') RETURNING id")[0][
        0
    ]
    assert new_id > highest


def test_check_mode_shows_what_would_be_restored_and_changes_nothing(app_db):
    assert not revert(app_db, run_id="rb-1")["failed"]
    fingerprint = app_db.fingerprint()
    columns = app_db.query("SELECT count(*) FROM information_schema.columns WHERE table_name = 'manifest'")

    plan = upgrade(app_db, check_mode=True)

    assert not plan["failed"], plan["msg"]
    assert plan["changed"] is True and plan["attempts"] == 0
    assert [s["revision"] for s in plan["steps"]] == [HEAD]
    restore = plan["restore"]
    assert restore["predicted"] is True and restore["rows_restored"] == 60 and restore["conflict_rows"] == 0
    assert {(a["source"], a["archived_rows"], a["restored"]) for a in restore["archives"]} == {
        ("public.transformation_jobs", 20, 20),
        ("public.documents.transform_version", 40, 40),
    }
    assert all(a["note"] for a in restore["archives"])
    assert plan["msg"].startswith("Would upgrade 0001_legacy -> 0002_data_transformation (1 step(s)); would restore 60")
    # Nothing changed: revision, schema, manifest (not even its restore columns).
    assert app_db.revision() == LEGACY and app_db.fingerprint() == fingerprint
    assert app_db.query("SELECT count(*) FROM information_schema.columns WHERE table_name = 'manifest'") == columns


def test_a_second_deploy_changes_nothing_and_never_restores_twice(app_db):
    assert not revert(app_db, run_id="rb-1")["failed"]
    assert not upgrade(app_db)["failed"]
    jobs, marked = checksum(app_db, JOBS), manifest(app_db)

    again = upgrade(app_db, run_id="deploy-2")

    assert not again["failed"], again["msg"]
    assert again["changed"] is False and again["attempts"] == 0 and again["steps"] == []
    assert again["msg"] == "Already at 0002_data_transformation with no archive to restore: nothing to do."
    assert checksum(app_db, JOBS) == jobs and manifest(app_db) == marked
    assert upgrade(app_db, check_mode=True)["changed"] is False


def test_a_column_recreated_outside_the_runbook_is_not_overwritten(app_db):
    """A database upgraded by hand (plain alembic) since the rollback: the restore runs alone, in its own guarded
    transaction. The recreated table is empty, so its rows come back; the recreated column may hold values
    written since, which the restore cannot tell from defaults: where they differ, they are conflicts."""
    jobs = checksum(app_db, JOBS)
    assert not revert(app_db, run_id="rb-1")["failed"]
    app_db.upgrade(HEAD)
    archived_twos = app_db.query(
        'SELECT count(*) FROM rollback_archive."rb-1__documents__transform_version" WHERE transform_version = 2'
    )[0][0]

    refused = upgrade(app_db)

    assert refused["failed"] is True and refused["steps"] == []
    assert conflicts_by_kind(refused)[("public.documents.transform_version", "different")]["rows"] == archived_twos
    assert restored_entries(app_db) == 0 and app_db.count("transformation_jobs") == 0

    accepted = upgrade(app_db, accept_conflicts=["rb-1"])

    assert not accepted["failed"], accepted["msg"]
    assert checksum(app_db, JOBS) == jobs
    versions = {a["source"]: a for a in accepted["restore"]["archives"]}["public.documents.transform_version"]
    assert (versions["restored"], versions["already_present"], versions["conflict_rows"]) == (
        0,
        40 - archived_twos,
        archived_twos,
    )
    assert app_db.query("SELECT count(*) FROM documents WHERE transform_version = 2") == [(0,)]


# -- conflicts -----------------------------------------------------------------------------------------
def test_a_document_deleted_since_the_rollback_stops_everything_until_the_operator_accepts(app_db):
    app_db.query(
        "UPDATE transformation_jobs SET output = jsonb_build_object('secret', %s) WHERE document_id = 2", (CANARY,)
    )
    assert not revert(app_db, run_id="rb-1")["failed"]
    # During the rollback window a customer deletes document 2 (its job is in the archive).
    app_db.query("DELETE FROM transformation_results WHERE document_id = 2")
    app_db.query("DELETE FROM documents WHERE id = 2")
    fingerprint = app_db.fingerprint()

    refused = upgrade(app_db)

    assert refused["failed"] is True and refused["changed"] is False
    one_sentence(refused["msg"])
    conflicts = conflicts_by_kind(refused)
    job_conflict = conflicts[("public.transformation_jobs", "missing_reference")]
    assert job_conflict["rows"] == 1 and job_conflict["constraint"] == "transformation_jobs_document_id_fkey"
    job_id = app_db.query('SELECT id FROM rollback_archive."rb-1__transformation_jobs" WHERE document_id = 2')[0][0]
    assert job_conflict["keys"] == [f"id={job_id}"]
    assert conflicts[("public.documents.transform_version", "missing_row")] == {
        "kind": "missing_row",
        "rows": 1,
        "keys": ["id=2"],
    }
    assert f"public.transformation_jobs: 1 missing_reference (id={job_id})" in refused["msg"]
    assert "accept_conflicts [rb-1]" in refused["msg"] and "nothing was changed" in refused["msg"]
    assert CANARY not in json.dumps(refused), "a conflict report must not carry row contents"
    # Nothing changed: still at the legacy revision, the upgrade rolled back with the restore, nothing marked.
    assert app_db.revision() == LEGACY and app_db.fingerprint() == fingerprint
    assert restored_entries(app_db) == 0

    # Check mode, run before the deployment, shows the same conflict for the column (the table's needs the upgrade).
    plan = upgrade(app_db, check_mode=True)
    assert conflicts_by_kind(plan)[("public.documents.transform_version", "missing_row")]["keys"] == ["id=2"]

    accepted = upgrade(app_db, accept_conflicts=["rb-1"])

    assert not accepted["failed"], accepted["msg"]
    assert app_db.revision() == HEAD
    assert app_db.count("transformation_jobs") == 19
    assert accepted["restore"]["accepted"] == ["rb-1"] and accepted["restore"]["conflict_rows"] == 2
    assert "accepted for rb-1: left in the archive" in accepted["msg"]
    assert manifest(app_db) == [
        (
            "documents",
            "transform_version",
            "deploy-1",
            39,
            1,
            "restored 39 row(s); 1 conflicting row(s) left in the archive, accepted",
            True,
            "alice (extra_var)",
        ),
        (
            "transformation_jobs",
            None,
            "deploy-1",
            19,
            1,
            "restored 19 row(s); 1 conflicting row(s) left in the archive, accepted",
            True,
            "alice (extra_var)",
        ),
    ]
    # The row that could not go back is still in the archive.
    assert app_db.query('SELECT count(*) FROM rollback_archive."rb-1__transformation_jobs" WHERE document_id = 2') == [
        (1,)
    ]
    assert CANARY not in json.dumps(accepted)


def test_rows_written_since_with_the_same_key_are_never_overwritten(app_db):
    """The feature's table recreated by hand after the rollback, and written to: keys collide with the archive."""
    assert not revert(app_db, run_id="rb-1")["failed"]
    app_db.upgrade(HEAD)  # plain alembic: empty table, its sequence from 1 again
    app_db.query(
        "INSERT INTO transformation_jobs (document_id, stage, output)"
        " VALUES (4, 'failed', jsonb_build_object('n', %s))",
        (CANARY,),
    )
    app_db.query("UPDATE documents SET transform_version = 7 WHERE id = 3")
    new_row = app_db.query("SELECT id, document_id, stage::text, output FROM transformation_jobs")

    refused = upgrade(app_db)

    assert refused["failed"] is True
    conflicts = conflicts_by_kind(refused)
    assert conflicts[("public.transformation_jobs", "different")]["keys"] == [f"id={new_row[0][0]}"]
    assert conflicts[("public.documents.transform_version", "different")]["rows"] >= 1
    assert "id=3" in conflicts[("public.documents.transform_version", "different")]["keys"]
    assert CANARY not in json.dumps(refused)
    assert app_db.query("SELECT id, document_id, stage::text, output FROM transformation_jobs") == new_row

    accepted = upgrade(app_db, accept_conflicts=["rb-1"])

    assert not accepted["failed"], accepted["msg"]
    # The row written since is untouched; the other 19 archived rows are back.
    assert (
        app_db.query(
            "SELECT id, document_id, stage::text, output FROM transformation_jobs WHERE id = %s", (new_row[0][0],)
        )
        == new_row
    )
    assert app_db.count("transformation_jobs") == 20
    assert app_db.query("SELECT transform_version FROM documents WHERE id = 3") == [(7,)]


def test_an_acceptance_for_another_run_accepts_nothing(app_db):
    assert not revert(app_db, run_id="rb-1")["failed"]
    app_db.query("DELETE FROM transformation_results WHERE document_id = 2")
    app_db.query("DELETE FROM documents WHERE id = 2")
    result = upgrade(app_db, accept_conflicts=["rb-other"])
    assert result["failed"] is True and app_db.revision() == LEGACY
    assert result["restore"]["conflicting_runs"] == ["rb-1"] and result["restore"]["accepted"] == []


# -- types, identities, foreign keys, unique values (test-only revision 0003_restore_shapes) ------
def test_an_enum_column_archived_as_text_comes_back_typed_and_tables_in_foreign_key_order(app_db):
    db = shapes_db(app_db)
    priorities, notes, jobs = checksum(db, PRIORITIES), checksum(db, NOTES), checksum(db, JOBS)
    reverted = revert(db, run_id="rb-1", revision=LEGACY, version_locations=LOCATIONS)
    assert not reverted["failed"], reverted["msg"]
    assert db.query(
        "SELECT data_type FROM information_schema.columns WHERE table_schema = 'rollback_archive' "
        "AND table_name = 'rb-1__documents__priority' AND column_name = 'priority'"
    ) == [("text",)]
    assert db.query("SELECT count(*) FROM pg_type WHERE typname = 'document_priority'") == [(0,)]

    result = upgrade(db, version_locations=LOCATIONS)

    assert not result["failed"], result["msg"]
    assert db.revision() == SHAPES_HEAD
    assert checksum(db, PRIORITIES) == priorities and checksum(db, NOTES) == notes and checksum(db, JOBS) == jobs
    assert db.query("SELECT DISTINCT pg_typeof(priority)::text FROM documents") == [("document_priority",)]
    order = [a["source"] for a in result["restore"]["archives"]]
    assert order.index("public.transformation_jobs") < order.index("public.job_notes"), order
    assert set(order[-2:]) == {"public.documents.priority", "public.documents.transform_version"}, order
    # NULL priorities stay NULL, and count as restored values of the recreated column.
    priority = {a["source"]: a for a in result["restore"]["archives"]}["public.documents.priority"]
    assert priority["restored"] == 40 and priority["conflict_rows"] == 0
    # The identity (GENERATED ALWAYS) was inserted with its archived values and moved past them.
    highest = db.query("SELECT max(id) FROM job_notes")[0][0]
    new_id = db.query("INSERT INTO job_notes (job_id, ref) VALUES (2, 'after') RETURNING id")[0][0]
    assert new_id > highest


def test_a_value_the_type_no_longer_accepts_is_a_conflict(app_db):
    db = shapes_db(app_db)
    assert not revert(db, run_id="rb-1", revision=LEGACY, version_locations=LOCATIONS)["failed"]
    db.query("""UPDATE rollback_archive."rb-1__documents__priority" SET priority = 'urgent' WHERE id IN (1, 2)""")

    refused = upgrade(db, version_locations=LOCATIONS)

    assert refused["failed"] is True and db.revision() == LEGACY
    conflict = conflicts_by_kind(refused)[("public.documents.priority", "invalid_value")]
    assert conflict == {
        "kind": "invalid_value",
        "rows": 2,
        "keys": ["id=1", "id=2"],
        "column": "priority",
        "type": "document_priority",
    }
    assert "urgent" not in refused["msg"]
    accepted = upgrade(db, version_locations=LOCATIONS, accept_conflicts=["rb-1"])
    assert not accepted["failed"], accepted["msg"]
    assert db.query("SELECT priority FROM documents WHERE id IN (1, 2)") == [(None,), (None,)]


def test_a_duplicate_unique_value_is_a_conflict(app_db):
    db = shapes_db(app_db)
    assert not revert(db, run_id="rb-1", revision=HEAD, version_locations=LOCATIONS)["failed"]
    # job_notes recreated by hand, and a note written with a ref an archived note has, under a new id.
    db.upgrade(SHAPES_HEAD, [VERSIONS, SHAPES])
    db.query("INSERT INTO job_notes (id, job_id, ref) OVERRIDING SYSTEM VALUE VALUES (900, 6, 'note-6')")

    refused = upgrade(db, version_locations=LOCATIONS)

    assert refused["failed"] is True
    conflict = conflicts_by_kind(refused)[("public.job_notes", "duplicate_unique")]
    assert conflict["rows"] == 1 and conflict["constraint"] == "job_notes_ref_key"
    assert db.query("SELECT id, ref FROM job_notes") == [(900, "note-6")]


def test_archives_wait_for_their_tables_and_are_restored_when_an_upgrade_recreates_them(app_db):
    db = shapes_db(app_db)
    jobs, notes = checksum(db, JOBS), checksum(db, NOTES)
    assert not revert(db, run_id="rb-1", revision=LEGACY, version_locations=LOCATIONS)["failed"]

    partial = upgrade(db, version_locations=LOCATIONS, revision=HEAD)

    assert not partial["failed"], partial["msg"]
    restored = {a["source"] for a in partial["restore"]["archives"]}
    waiting = {w["source"] for w in partial["restore"]["waiting"]}
    assert restored == {"public.transformation_jobs", "public.documents.transform_version"}
    assert waiting == {"public.job_notes", "public.documents.priority"}
    assert checksum(db, JOBS) == jobs

    rest = upgrade(db, version_locations=LOCATIONS, run_id="deploy-2")

    assert not rest["failed"], rest["msg"]
    assert {a["source"] for a in rest["restore"]["archives"]} == waiting
    assert checksum(db, NOTES) == notes
    assert rest["restore"]["waiting"] == []


# -- the guards ------------------------------------------------------------------------------------------
def test_a_blocked_upgrade_retries_then_fails_naming_the_blocker_and_changes_nothing(app_db):
    assert not revert(app_db, run_id="rb-1")["failed"]
    fingerprint = app_db.fingerprint()
    blocker = psycopg2.connect(app_db.dsn, application_name="long-report")
    try:
        with blocker.cursor() as cur:
            cur.execute("SELECT count(*) FROM documents")  # ACCESS SHARE, held: the transaction stays open
        result = upgrade(app_db, lock_timeout=0.2, statement_timeout=5, lock_attempts=2, lock_backoff=0.05)
    finally:
        blocker.rollback()
        blocker.close()
    assert result["failed"] is True and result["attempts"] == 2
    assert [a["outcome"] for a in result["attempt_log"]] == ["lock_timeout", "lock_timeout"]
    assert "long-report" in result["msg"] and "nothing restored" in result["msg"]
    assert result["msg"].startswith(
        f"Cannot upgrade {LEGACY} -> {HEAD}: every one of 2 attempt(s) timed out after lock_timeout 0.2 s waiting "
        "for a table lock, and each was rolled back (the database is unchanged, nothing restored). Blocking: "
    )
    assert result["msg"].endswith(". End or wait for those sessions, then run again.")
    one_sentence(result["msg"])
    assert app_db.revision() == LEGACY and app_db.fingerprint() == fingerprint
    assert restored_entries(app_db) == 0


def test_the_upgrade_waits_for_the_runbooks_advisory_lock(app_db):
    from ansible.module_utils.pg_session import ADVISORY_LOCK_KEY  # noqa: PLC0415

    assert not revert(app_db, run_id="rb-1")["failed"]
    holder = psycopg2.connect(app_db.dsn, application_name="another-rollback")
    holder.autocommit = True
    released = threading.Timer(0.5, holder.close)
    try:
        with holder.cursor() as cur:
            cur.execute("SELECT pg_advisory_lock(%s)", (ADVISORY_LOCK_KEY,))
        refused = upgrade(app_db, advisory_lock_wait=0.2)
        assert refused["failed"] is True and "another-rollback" in refused["msg"]
        assert app_db.revision() == LEGACY
        released.start()
        waited = upgrade(app_db, advisory_lock_wait=30)
    finally:
        released.join()
        holder.close()
    assert not waited["failed"], waited["msg"]
    assert waited["advisory_lock_wait_seconds"] > 0 and app_db.revision() == HEAD


def test_refusals_change_nothing(app_db):
    downgrade = upgrade(app_db, revision=LEGACY)
    assert downgrade["failed"] is True and "never downgrades" in downgrade["msg"]
    base = upgrade(app_db, revision="base")
    assert base["failed"] is True and "only upgrades" in base["msg"]
    unknown = upgrade(app_db, revision="nope")
    assert unknown["failed"] is True and "Unknown revision" in unknown["msg"]
    for message in (downgrade["msg"], base["msg"], unknown["msg"]):
        one_sentence(message)
    assert app_db.revision() == HEAD


# -- what else a downgrade removes (wp-schema's archive: rows deleted, values rewritten, matviews) -----
def _stamp(db: AppDatabase, revision: str) -> None:
    """The database back at `revision` without running its upgrade (whose CREATE statements would collide with
    what the downgrade left): an upgrade that recreates nothing the archive holds."""
    db.query("UPDATE alembic_version SET version_num = %s", (revision,))


def test_rows_a_downgrade_deleted_come_back_where_their_key_is_absent(app_db):
    app_db.upgrade("dl_delete_where", [VERSIONS, DATA_LOSS_VERSIONS])
    settings = "SELECT md5(string_agg(format('%s|%s|%s', id, origin, value), ',' ORDER BY id)) FROM dl_settings"
    before = checksum(app_db, settings)
    reverted = revert(app_db, run_id="rb-del", revision=HEAD, version_locations=LOSS_LOCATIONS)
    assert not reverted["failed"], reverted["msg"]
    assert app_db.count("dl_settings") == 8
    _stamp(app_db, "dl_delete_where")

    result = upgrade(app_db, revision="dl_delete_where", version_locations=LOSS_LOCATIONS)

    assert not result["failed"], result["msg"]
    assert result["steps"] == [] and checksum(app_db, settings) == before
    [archive] = result["restore"]["archives"]
    assert (archive["action"], archive["restored"], archive["conflict_rows"]) == ("delete", 4, 0)


def test_values_a_downgrade_rewrote_are_never_overwritten_only_reported(app_db):
    app_db.upgrade("dl_update", [VERSIONS, DATA_LOSS_VERSIONS])
    assert not revert(app_db, run_id="rb-upd", revision=HEAD, version_locations=LOSS_LOCATIONS)["failed"]
    app_db.query("UPDATE dl_profiles SET mode = 'v2', tuned = '{\"k\": 2}' WHERE id = 2")  # as it was: no conflict
    _stamp(app_db, "dl_update")
    rewritten = app_db.query("SELECT id, mode, tuned FROM dl_profiles ORDER BY id")

    refused = upgrade(app_db, revision="dl_update", version_locations=LOSS_LOCATIONS)

    assert refused["failed"] is True
    [archive] = refused["restore"]["archives"]
    assert archive["action"] == "update" and archive["already_present"] == 1
    assert conflicts_by_kind(refused)[("public.dl_profiles", "different")]["keys"] == [
        "id=4",
        "id=6",
        "id=8",
        "id=10",
    ]
    accepted = upgrade(app_db, revision="dl_update", version_locations=LOSS_LOCATIONS, accept_conflicts=["rb-upd"])
    assert not accepted["failed"], accepted["msg"]
    assert app_db.query("SELECT id, mode, tuned FROM dl_profiles ORDER BY id") == rewritten


def test_a_materialized_view_is_computed_again_not_restored(app_db):
    app_db.upgrade("dl_matview", [VERSIONS, DATA_LOSS_VERSIONS])
    counts = app_db.query("SELECT stage, n FROM dl_stage_counts ORDER BY stage")
    assert not revert(app_db, run_id="rb-mv", revision=HEAD, version_locations=LOSS_LOCATIONS)["failed"]

    result = upgrade(app_db, revision="dl_matview", version_locations=LOSS_LOCATIONS)

    assert not result["failed"], result["msg"]
    [archive] = result["restore"]["archives"]
    assert archive["action"] == "drop materialized view" and archive["conflict_rows"] == 0
    assert "computed again" in archive["note"]
    assert app_db.query("SELECT stage, n FROM dl_stage_counts ORDER BY stage") == counts
    assert restored_entries(app_db) == 1


def test_an_env_py_that_ignores_the_connection_is_refused_before_any_ddl(app_db, tmp_path):
    import shutil  # noqa: PLC0415

    from ansible.module_utils.schema_alembic import ENV_PY_FIX  # noqa: PLC0415

    project = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS, project)
    env_py = project / "env.py"
    env_py.write_text(env_py.read_text().replace('config.attributes.get("connection")', "None"))
    assert not revert(app_db, run_id="rb-1")["failed"]
    fingerprint = app_db.fingerprint()

    refused = upgrade(app_db, script_location=str(project))

    assert refused["failed"] is True and "ignores the connection" in refused["msg"] and str(env_py) in refused["msg"]
    # The message names env_py_fix: the result carries it (schema_jobs.finish reports an error's details).
    assert refused["env_py"] == str(env_py) and refused["env_py_fix"] == ENV_PY_FIX
    assert app_db.revision() == LEGACY and app_db.fingerprint() == fingerprint and restored_entries(app_db) == 0


def test_an_alembic_project_given_by_its_config_file(app_db):
    assert not revert(app_db, run_id="rb-1")["failed"]
    result = upgrade(app_db, script_location=None, config_file=str(MIGRATIONS / "alembic.ini"))
    assert not result["failed"], result["msg"]
    assert app_db.revision() == HEAD and result["restore"]["rows_restored"] == 60


def test_ef_core_is_refused(app_db):
    result = upgrade(app_db, tool="efcore")
    assert result["failed"] is True and "EF Core" in result["msg"] and app_db.revision() == HEAD
