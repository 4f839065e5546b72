"""schema_upgrade and rollback_archive as plugins: the same result as an action on the controller and as a module
through AnsiballZ (a delegated task), and many databases at once through the fork-safe worker pool."""

from __future__ import annotations

import secrets

import pytest

from tests.fixtures.schema import HEAD, LEGACY, MIGRATIONS, VERSIONS, clone_app_db, revert
from tests.integration.test_plugin_paths import assert_same, run

pytestmark = pytest.mark.integration


def test_the_way_forward_plugins_give_the_same_result_on_both_paths(tmp_path, app_db):
    assert not revert(app_db, run_id="rb-1")["failed"]
    database = {
        "script_location": str(MIGRATIONS),
        "version_locations": [str(VERSIONS)],
        "dsn": app_db.dsn,
        "run_id": "p",
    }
    tasks = [
        {"name": "plan", "schema_upgrade": database, "check_mode": True},
        {"name": "archives", "rollback_archive": {"dsn": app_db.dsn}},
        {
            "name": "young purge",
            "rollback_archive": {"dsn": app_db.dsn, "purge": True, "run_ids": ["rb-1"], "purged_by": "x"},
            "check_mode": True,
        },
        {"name": "purge without purged_by", "rollback_archive": {"dsn": app_db.dsn, "purge": True}},
        {"name": "relative target", "schema_upgrade": {**database, "revision": "-1"}},
    ]
    outcome, done = run(tmp_path, tasks, {})
    plan = assert_same(done, "plan")
    assert not plan["failed"] and plan["changed"] and plan["restore"]["rows_restored"] == 60
    assert app_db.revision() == LEGACY, "check mode upgraded nothing, on either path"
    archives = assert_same(done, "archives")
    assert [a["run_id"] for a in archives["archives"]] == ["rb-1"] and not archives["changed"]
    young = assert_same(done, "young purge")
    assert young["failed"] and "is not restored" in young["msg"]
    missing = assert_same(done, "purge without purged_by")
    assert missing["failed"] and "purged_by" in missing["msg"]
    relative = assert_same(done, "relative target")
    assert relative["failed"] and "relative" in relative["msg"] and app_db.revision() == LEGACY
    assert app_db.dsn not in outcome.everything(), "the DSN (it carries a password here) is never shown"


def test_many_databases_are_upgraded_and_restored_in_worker_processes(app_template):
    from ansible.module_utils.pg_options import schema_upgrade_spec  # noqa: PLC0415
    from ansible.module_utils.upgrade_tasks import run_schema_upgrade  # noqa: PLC0415

    databases = [clone_app_db(app_template, "t_" + secrets.token_hex(6)) for _ in range(3)]
    try:
        for db in databases:
            assert not revert(db, run_id="rb-1")["failed"]
        # A document deleted in the last one: its restore conflicts, the others go through.
        databases[2].query("DELETE FROM transformation_results WHERE document_id = 2")
        databases[2].query("DELETE FROM documents WHERE id = 2")
        params = {name: spec.get("default") for name, spec in schema_upgrade_spec()["argument_spec"].items()}
        params.update(
            databases=[{"name": f"db{n}", "dsn": db.dsn} for n, db in enumerate(databases)],
            parallel=2,
            script_location=str(MIGRATIONS),
            run_id="deploy-many",
        )

        result = run_schema_upgrade(params)

        assert result["failed"] is True
        assert result["msg"].startswith("Cannot upgrade 1 of 3 database(s): db2: ")
        assert [(d["name"], d["failed"], d["changed"]) for d in result["databases"]] == [
            ("db0", False, True),
            ("db1", False, True),
            ("db2", True, False),
        ]
        assert result["rows_restored"] == 120
        assert [db.revision() for db in databases] == [HEAD, HEAD, LEGACY]
        assert result["databases"][2]["restore"]["conflicting_runs"] == ["rb-1"]
    finally:
        for db in databases:
            app_template.cluster.drop_database(db.name)
