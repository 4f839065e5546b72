"""The rollback archives per database, and their retention (rollback_archive plugin), against real PostgreSQL 16."""

from __future__ import annotations

import psycopg2
import pytest

from tests.fixtures.schema import MIGRATIONS, AppDatabase, clone_app_db, revert

pytestmark = pytest.mark.integration


def params(db: AppDatabase | None = None, **options) -> dict:
    """The plugin's validated parameters: the spec's defaults, `options` on top."""
    from ansible.module_utils.pg_options import rollback_archive_spec  # noqa: PLC0415

    values = {name: spec.get("default") for name, spec in rollback_archive_spec()["argument_spec"].items()}
    if db is not None:
        values["dsn"] = db.dsn
    return {**values, **options}


def archive(db: AppDatabase | None = None, check_mode: bool = False, **options) -> dict:
    from ansible.module_utils.archive_retention import run_rollback_archive  # noqa: PLC0415

    return run_rollback_archive(params(db, **options), check_mode=check_mode)


def purge(db: AppDatabase | None = None, check_mode: bool = False, **options) -> dict:
    return archive(db, check_mode, purge=True, purged_by="alice (extra_var)", run_id="purge-1", **options)


def deploy(db: AppDatabase) -> dict:
    from ansible.module_utils.upgrade_runner import upgrade_database  # noqa: PLC0415

    return upgrade_database({"name": db.name, "dsn": db.dsn, "script_location": str(MIGRATIONS), "run_id": "dep-1"})


def archive_tables(db: AppDatabase) -> list[str]:
    return [r[0] for r in db.query("SELECT tablename FROM pg_tables WHERE schemaname = 'rollback_archive' ORDER BY 1")]


def age(db: AppDatabase, run_id: str, days: int) -> None:
    db.query(
        "UPDATE rollback_archive.manifest SET archived_at = now() - make_interval(days => %s) WHERE run_id = %s",
        (days, run_id),
    )


@pytest.fixture
def archived(app_db) -> AppDatabase:
    """`app_db` rolled back by run rb-1: two archive tables (documents.transform_version, transformation_jobs)."""
    assert not revert(app_db, run_id="rb-1")["failed"]
    return app_db


def test_lists_each_run_with_its_tables_rows_age_and_whether_restored(archived):
    listed = archive(archived)
    assert not listed.get("failed"), listed["msg"]
    assert listed["changed"] is False
    [run] = listed["archives"]
    assert (run["run_id"], run["rows"], run["restored"], run["purged"]) == ("rb-1", 60, "no", "no")
    assert 0 <= run["age_days"] < 1
    assert (run["from_revision"], run["to_revision"]) == ("0002_data_transformation", "0001_legacy")
    assert {(t["source"], t["rows"]) for t in run["tables"]} == {
        ("public.documents.transform_version", 40),
        ("public.transformation_jobs", 20),
    }
    assert listed["msg"] == "1 archive(s), 60 row(s); 1 not restored."
    assert not deploy(archived)["failed"]
    [run] = archive(archived)["archives"]
    assert (run["restored"], run["restored_rows"], run["restore_run_ids"]) == ("yes", 60, ["dep-1"])


def test_a_database_without_archive_lists_none(app_db):
    listed = archive(app_db)
    assert listed["archives"] == [] and listed["msg"] == "0 archive(s), 0 row(s); 0 not restored."


def test_many_databases_each_with_its_archives(archived, app_template):
    import secrets  # noqa: PLC0415

    other = clone_app_db(app_template, "t_" + secrets.token_hex(6))
    try:
        listed = archive(
            dsn=None, databases=[{"name": "a", "dsn": archived.dsn}, {"name": "b", "dsn": other.dsn}], parallel=2
        )
        assert not listed.get("failed"), listed["msg"]
        assert [(d["name"], len(d["archives"])) for d in listed["databases"]] == [("a", 1), ("b", 0)]
    finally:
        app_template.cluster.drop_database(other.name)


def test_nothing_younger_than_the_retention_is_purged_by_default(archived):
    result = purge(archived)
    assert not result.get("failed"), result["msg"]
    assert result["changed"] is False and result["would_purge"] == []
    assert len(archive_tables(archived)) == 3  # the manifest and two archive tables


def test_purging_a_young_unrestored_archive_by_name_is_refused_and_purges_nothing(archived):
    for check_mode in (True, False):
        result = purge(archived, check_mode=check_mode, run_ids=["rb-1"])
        assert result["failed"] is True
        assert result["msg"] == (
            "Refused: the archive of rollback run rb-1 is not restored and only 0 day(s) old (retention 30 days): "
            "restore it with deploy.yml, or purge it after 30 days; nothing was purged."
        )
    assert len(archive_tables(archived)) == 3


def test_a_restored_archive_can_be_purged_by_name_and_check_mode_only_shows_it(archived):
    assert not deploy(archived)["failed"]

    plan = purge(archived, check_mode=True, run_ids=["rb-1"])

    assert not plan.get("failed"), plan["msg"]
    assert plan["changed"] is True and plan["would_purge"] == [
        {"run_id": "rb-1", "age_days": plan["would_purge"][0]["age_days"], "rows": 60, "restored": "yes"}
    ]
    assert plan["msg"] == "Would purge 1 archive(s), 60 row(s) (retention 30 days)."
    assert len(archive_tables(archived)) == 3

    done = purge(archived, run_ids=["rb-1"])

    assert not done.get("failed"), done["msg"]
    assert done["changed"] is True and done["msg"] == "Purged 1 archive(s), 60 row(s) (retention 30 days)."
    assert {(p["source"], p["rows"], p["restored"]) for p in done["purged"]} == {
        ("public.documents.transform_version", 40, True),
        ("public.transformation_jobs", 20, True),
    }
    assert archive_tables(archived) == ["manifest"]
    # The manifest keeps the record: which rows existed, when they were purged, by whom and which run.
    assert archived.query(
        "SELECT count(*), min(purged_by), min(purge_run_id), bool_and(purged_at IS NOT NULL) "
        "FROM rollback_archive.manifest"
    ) == [(2, "alice (extra_var)", "purge-1", True)]
    [run] = archive(archived)["archives"]
    assert run["purged"] == "yes"
    again = purge(archived, run_ids=["rb-1"])
    assert again["changed"] is False and not again.get("failed")


def test_an_unrestored_archive_older_than_the_retention_is_purged(archived):
    age(archived, "rb-1", 31)
    result = purge(archived)
    assert not result.get("failed"), result["msg"]
    assert result["changed"] is True and [p["restored"] for p in result["purged"]] == [False, False]
    assert archive_tables(archived) == ["manifest"]


def test_the_retention_cannot_be_set_below_a_week(archived):
    result = purge(archived, retention_days=3)
    assert result["failed"] is True and "below the minimum of 7" in result["msg"]
    assert len(archive_tables(archived)) == 3


def test_an_unknown_run_id_is_refused(archived):
    result = purge(archived, run_ids=["rb-typo"])
    assert result["failed"] is True
    assert (
        result["msg"]
        == "No database has an archive of rollback run rb-typo: copy the run id from status.yml; nothing was purged."
    )


def test_run_ids_without_purge_is_refused(archived):
    result = archive(archived, run_ids=["rb-1"])
    assert result["failed"] is True and "set purge true" in result["msg"]


def test_a_purge_waits_for_the_runbooks_advisory_lock_and_purges_nothing_without_it(archived):
    from ansible.module_utils.pg_session import ADVISORY_LOCK_KEY  # noqa: PLC0415

    age(archived, "rb-1", 40)
    holder = psycopg2.connect(archived.dsn, application_name="a-deployment")
    holder.autocommit = True
    try:
        with holder.cursor() as cur:
            cur.execute("SELECT pg_advisory_lock(%s)", (ADVISORY_LOCK_KEY,))
        result = purge(archived, advisory_lock_wait=0.2)
    finally:
        holder.close()
    assert result["failed"] is True and "a-deployment" in result["msg"]
    assert len(archive_tables(archived)) == 3
