"""No row leaves the database without the archive: every shape of downgrade, against real PostgreSQL 16.

For each test-only revision of tests/data/data_loss_versions (one shape each, see its README): the
database is upgraded to it, planned (check mode) and reverted to 0002_data_transformation. Then
either every row that left is in rollback_archive, the manifest's row count matching, or the revert
was refused (in the plan, naming the statement) and the database is exactly as before: same
fingerprint, same revision, same rows in every table, no archive. Never success with rows gone.
"""

from __future__ import annotations

import hashlib
import json

import pytest
from psycopg2 import sql as pgsql

from tests.fixtures.schema import DATA_LOSS_VERSIONS, HEAD, VERSIONS, AppDatabase, revert

pytestmark = pytest.mark.integration

LOCATIONS = [str(VERSIONS), str(DATA_LOSS_VERSIONS)]


def _rows(db: AppDatabase, query: str) -> list[str]:
    """Rows as sorted JSON texts (comparable across tables with the same columns)."""
    return sorted(r[0] for r in db.query(f"SELECT row_to_json(x)::text FROM ({query}) x"))  # noqa: S608 - constants


def _table_counts(db: AppDatabase) -> dict[str, int]:
    """Rows of every table and materialized view outside PostgreSQL's own schemas (ONLY: children apart)."""
    names = db.query(
        """SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE c.relkind IN ('r', 'm') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
             AND n.nspname NOT LIKE 'pg\\_toast%%'"""
    )
    return {
        f"{schema}.{table}": db.query(
            pgsql.SQL("SELECT count(*) FROM ONLY {}").format(pgsql.Identifier(schema, table))
        )[0][0]
        for schema, table in names
    }


# What each archivable shape removes: (schema, table, column or None, action, query on the database
# BEFORE the revert that gives exactly the rows the archive must then hold).
ARCHIVED = {
    "dl_multi_statement": [
        ("public", "dl_a", None, "drop table", "SELECT * FROM dl_a"),
        ("public", "dl_b", None, "drop table", "SELECT * FROM dl_b"),
    ],
    "dl_odd_spelling": [
        ("public", "dl_c", None, "drop table", "SELECT * FROM dl_c"),
        ("public", "dl_c2", "extra", "drop column", "SELECT id, extra FROM dl_c2"),
        ("public", "dl_c3", None, "drop table", "SELECT * FROM dl_c3"),
    ],
    "dl_quoted_names": [
        ("DL Mixed", 'Odd "Name"', "Val ue", "drop column", 'SELECT "Id", "Val ue" FROM "DL Mixed"."Odd ""Name"""'),
        ("DL Mixed", 'Odd "Name"', None, "drop table", 'SELECT "Id", "Other" FROM "DL Mixed"."Odd ""Name"""'),
    ],
    "dl_if_exists": [("public", "dl_e", None, "drop table", "SELECT * FROM dl_e")],
    "dl_cascade": [
        ("public", "dl_parent", None, "drop table", "SELECT * FROM ONLY dl_parent"),
        ("public", "dl_inheriting", None, "drop table", "SELECT * FROM dl_inheriting"),
        ("public", "dl_parent_summary", None, "drop materialized view", "SELECT * FROM dl_parent_summary"),
        ("public", "dl_holder", "snapshot", "drop column", "SELECT id, snapshot::text AS snapshot FROM dl_holder"),
    ],
    "dl_drop_schema": [
        ("dl_feature", "events", None, "drop table", "SELECT * FROM dl_feature.events"),
        ("dl_feature", "empty_one", None, "drop table", "SELECT * FROM dl_feature.empty_one"),
    ],
    "dl_matview": [("public", "dl_stage_counts", None, "drop materialized view", "SELECT * FROM dl_stage_counts")],
    "dl_batch": [
        ("public", "dl_batch", "score", "drop column", "SELECT id, score FROM dl_batch"),
        ("public", "dl_batch", "label", "drop column", "SELECT id, label FROM dl_batch"),
    ],
    "dl_delete_where": [
        ("public", "dl_settings", None, "delete", "SELECT * FROM dl_settings WHERE origin = 'feature'"),
    ],
    "dl_truncate": [("public", "dl_cache", None, "truncate", "SELECT * FROM dl_cache")],
    "dl_update": [
        ("public", "dl_profiles", None, "update", "SELECT id, mode, tuned FROM dl_profiles WHERE mode = 'v2'")
    ],
}

# Shapes whose rows cannot be archived exactly: refused, naming the statement.
REFUSED = {
    "dl_delete_cascading": "DELETE FROM dl_owner WHERE kind = 'new'",
    "dl_do_block": "DO $$ BEGIN DELETE FROM dl_queue WHERE id > 2; END $$",
    "dl_writing_function": "SELECT dl_purge_sessions()",
    "dl_commit": "COMMIT",
}


def _at(app_db: AppDatabase, revision: str) -> dict:
    app_db.upgrade(revision, version_locations=[VERSIONS, DATA_LOSS_VERSIONS])
    return {
        "fingerprint": app_db.fingerprint(),
        "revision": app_db.revision(),
        "counts": _table_counts(app_db),
    }


def _unchanged(app_db: AppDatabase, before: dict) -> None:
    assert app_db.revision() == before["revision"]
    assert app_db.fingerprint() == before["fingerprint"]
    assert _table_counts(app_db) == before["counts"]
    assert "rollback_archive" not in app_db.schemas()


def _manifest(app_db: AppDatabase, run_id: str) -> list[tuple]:
    return app_db.query(
        "SELECT source_schema, source_table, source_column, archive_table, row_count FROM rollback_archive.manifest "
        "WHERE run_id = %s ORDER BY id",
        (run_id,),
    )


@pytest.mark.parametrize("revision", sorted(ARCHIVED))
def test_every_row_that_leaves_is_in_the_archive(app_db, revision):
    before = _at(app_db, revision)
    expected = {(s, t, c): _rows(app_db, q) for s, t, c, _action, q in ARCHIVED[revision]}

    plan = revert(app_db, revision=HEAD, version_locations=LOCATIONS, check_mode=True)
    assert not plan["failed"], plan["msg"]
    planned = {(d["schema"], d["table"], d["column"]): d["rows"] for d in plan["drops"]}
    assert planned == {key: len(rows) for key, rows in expected.items()}, "the plan lists what will leave"
    _unchanged(app_db, before)

    run_id = f"dl-{revision[3:15]}"
    result = revert(
        app_db, revision=HEAD, version_locations=LOCATIONS, run_id=run_id, expected_sql_sha256=plan["sql_sha256"]
    )

    assert not result["failed"], result["msg"]
    assert app_db.revision() == HEAD
    manifest = _manifest(app_db, run_id)
    for (schema, table, column), rows in expected.items():
        entries = [m for m in manifest if (m[0], m[1], m[2]) == (schema, table, column)]
        if not rows:
            assert all(m[4] == 0 for m in entries)
            continue
        assert len(entries) == 1, f"{schema}.{table}.{column}: {manifest}"
        archive_table, row_count = entries[0][3], entries[0][4]
        quoted = '"' + archive_table.replace('"', '""') + '"'
        archived = _rows(app_db, f"SELECT * FROM rollback_archive.{quoted}")  # noqa: S608 - quoted identifier
        assert archived == rows, f"{schema}.{table}.{column}: the archive differs from what left"
        assert row_count == len(rows)
    # Nothing else left: every table that held rows before and holds fewer now is accounted for.
    after = _table_counts(app_db)
    sources = {(m[0], m[1]) for m in manifest}
    for name, count in before["counts"].items():
        schema, table = name.split(".", 1)
        if count and after.get(name, 0) < count and name != "public.alembic_version":
            assert (schema, table) in sources, f"{name} lost rows that are not in the archive"


@pytest.mark.parametrize("revision", sorted(REFUSED))
def test_a_downgrade_that_removes_rows_the_archive_cannot_follow_is_refused(app_db, revision):
    before = _at(app_db, revision)

    plan = revert(app_db, revision=HEAD, version_locations=LOCATIONS, check_mode=True)
    assert plan["failed"], "the plan must refuse it"
    assert REFUSED[revision] in plan["msg"], plan["msg"]
    assert "\n" not in plan["msg"]
    _unchanged(app_db, before)

    result = revert(app_db, revision=HEAD, version_locations=LOCATIONS)
    assert result["failed"] and result["changed"] is False
    _unchanged(app_db, before)


def _statement_sha(plan: dict, text: str) -> str:
    entry = next(s for s in plan["data_statements"] if s["statement"].startswith(text))
    return entry["sha256"]


def test_an_accepted_statement_runs_and_is_recorded(app_db):
    revision = "dl_do_block"
    _at(app_db, revision)
    plan = revert(app_db, revision=HEAD, version_locations=LOCATIONS, check_mode=True)
    sha = _statement_sha(plan, "DO $$")
    assert f"{revision}:{sha}" in plan["msg"], "the refusal says what to accept"
    accepted = [f"{revision}:{sha}"]

    again = revert(app_db, revision=HEAD, version_locations=LOCATIONS, check_mode=True, accept_data_statements=accepted)
    assert not again["failed"], again["msg"]
    assert again["data_statements"][0]["accepted"] is True

    result = revert(
        app_db, revision=HEAD, version_locations=LOCATIONS, accept_data_statements=accepted, run_id="accepted"
    )
    assert not result["failed"], result["msg"]
    assert app_db.revision() == HEAD
    # The rows the DO block left were archived when the next statement dropped the table.
    assert _manifest(app_db, "accepted") == [("public", "dl_queue", None, "accepted__dl_queue", 2)]
    entry = result["data_statements"][0]
    assert (entry["revision"], entry["sha256"], entry["accepted"]) == (revision, sha, True)
    # What PostgreSQL saw the accepted statement do is in the result (and so in the audit).
    assert result["accepted_effects"] == [{"table": "public.dl_queue", "rows_deleted": 4, "rows_updated": 0}]


def test_accepting_another_revision_or_statement_does_not_count(app_db):
    revision = "dl_do_block"
    before = _at(app_db, revision)
    plan = revert(app_db, revision=HEAD, version_locations=LOCATIONS, check_mode=True)
    sha = _statement_sha(plan, "DO $$")
    for accepted in ([f"dl_other:{sha}"], [f"{revision}:{hashlib.sha256(b'x').hexdigest()}"]):
        result = revert(app_db, revision=HEAD, version_locations=LOCATIONS, accept_data_statements=accepted)
        assert result["failed"] and "DO $$" in result["msg"], result["msg"]
        _unchanged(app_db, before)


@pytest.mark.parametrize("revision", ["dl_online_only", "dl_bypass"])
def test_what_the_plan_did_not_promise_rolls_the_revert_back(app_db, revision):
    """The online downgrade drops a table the offline plan does not show (or through a cursor of its own)."""
    before = _at(app_db, revision)
    plan = revert(app_db, revision=HEAD, version_locations=LOCATIONS, check_mode=True)
    assert not plan["failed"], plan["msg"]
    assert plan["drops"] == []
    result = revert(app_db, revision=HEAD, version_locations=LOCATIONS, expected_sql_sha256=plan["sql_sha256"])
    assert result["failed"] and result["changed"] is False
    assert "public.dl_sneaky" in result["msg"] and "rolled back" in result["msg"], result["msg"]
    _unchanged(app_db, before)


def test_the_data_statements_are_listed_in_the_plan(app_db):
    _at(app_db, "dl_delete_where")
    plan = revert(app_db, revision=HEAD, version_locations=LOCATIONS, check_mode=True)
    assert not plan["failed"], plan["msg"]
    [entry] = plan["data_statements"]
    assert entry["statement"] == "DELETE FROM dl_settings WHERE origin = 'feature'"
    assert entry["revision"] == "dl_delete_where" and entry["archived"] is True and entry["accepted"] is False
    assert json.dumps(plan["drops"])  # plain data, for the audit
