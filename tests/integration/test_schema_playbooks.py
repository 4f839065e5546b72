"""The schema step through the playbooks, as AWX runs them (ansible-runner), against the rehearsal stack.

- The inventory chooses the migration tool: with `rollback_schema_tool=efcore`, deploy.yml records
  the rollback point (a MigrationId) and applies the release's up script, rollback.yml reverts the
  EF Core database from the release's down script and verifies it, status.yml reads it.
- A downgrade that deletes rows the archive cannot preserve stops the rollback at preflight, naming
  the statement and what to accept; accepted with `-e rollback_accept_data_statements=...`, the
  rollback runs and the audit keeps the acceptance and what the statement did.
"""

from __future__ import annotations

import secrets

import psycopg2
import pytest
from alembic import command
from alembic.config import Config

from tests.fixtures.efcore import EFCORE, FEATURE_ID, LEGACY_ID, apply_script, seed_ef, up_script_to
from tests.fixtures.schema import DATA_LOSS_VERSIONS, HEAD, MIGRATIONS, VERSIONS, AppDatabase
from tests.integration.test_rollback_playbook import end_record, flag_enabled, revision, rollback

pytestmark = pytest.mark.integration


@pytest.fixture
def ef_stack_db(stack_baseline):
    """An EF Core database at the Legacy migration in the stack's PostgreSQL, owned by the migrator."""
    stack = stack_baseline
    name = "ef_" + secrets.token_hex(4)
    stack.cluster.create_database(name, owner="migrator")
    db = AppDatabase(name, stack.dsn(name), stack.cluster)
    apply_script(db.dsn, up_script_to(LEGACY_ID))
    seed_ef(db)
    yield stack, db
    stack.set_flag(False)
    stack.cluster.drop_database(name)


def ef_history(db: AppDatabase) -> list[str]:
    return [r[0] for r in db.query('SELECT "MigrationId" FROM "__EFMigrationsHistory" ORDER BY 1')]


def test_the_inventory_chooses_ef_core_for_deploy_rollback_verify_and_status(ef_stack_db, playbook):
    stack, db = ef_stack_db
    env = {**stack.env(), "ROLLBACK_DB_NAME": db.name}
    ef = {
        "rollback_schema_tool": "efcore",
        "rollback_efcore_up_script": str(EFCORE / "up_legacy_to_feature.sql"),
        "rollback_efcore_down_script": str(EFCORE / "down_to_legacy.sql"),
    }
    legacy_fingerprint = db.fingerprint()
    # The stand-in application keeps its own (alembic) database: at the feature, so that its new path
    # works while the flag is on. The runbook's databases here are the EF Core one only.
    config = Config(str(MIGRATIONS / "alembic.ini"))
    config.set_main_option("sqlalchemy.url", stack.dsn().replace("%", "%%"))
    command.upgrade(config, HEAD)

    deploy = playbook("playbooks/deploy.yml", extravars={"env": "local", "reason": "release 2.4", **ef}, envvars=env)
    assert deploy.rc == 0, deploy
    assert ef_history(db) == [LEGACY_ID, FEATURE_ID] and flag_enabled(stack)
    point = db.query("SELECT revision, fingerprint FROM runbook.rollback_points ORDER BY id DESC LIMIT 1")
    assert point == [(LEGACY_ID, legacy_fingerprint)], "the rollback point is the MigrationId before the release"

    traffic = stack.load(rate=10).start()  # the verification judges the 5xx ratio on real requests
    try:
        run = rollback(playbook, stack, envvars={"ROLLBACK_DB_NAME": db.name}, **ef)
    finally:
        traffic.stop()

    assert run.rc == 0, run
    assert ef_history(db) == [LEGACY_ID] and db.fingerprint() == legacy_fingerprint
    assert not flag_enabled(stack)
    record = end_record(run)
    assert record["outcome"] == "succeeded"
    assert record["plan"]["local-app"]["from_revision"] == FEATURE_ID
    database = record["databases"]["local-app"]
    assert (database["revision_before"], database["revision_after"]) == (FEATURE_ID, LEGACY_ID)
    assert database["archive"]["rows"] > 0
    status = playbook("playbooks/status.yml", extravars={"env": "local", **ef}, envvars=env)
    assert status.rc == 0, status
    assert f"local-app: revision {LEGACY_ID}" in status.stdout and "schema as recorded" in status.stdout


def _deploy_data_loss(stack, playbook, extra: dict) -> None:
    """The stack's database at dl_do_block (a test-only revision whose downgrade deletes in a DO block)."""
    conn = psycopg2.connect(stack.dsn())
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT version_num FROM alembic_version")
            assert cur.fetchone()[0] == "0001_legacy"
    finally:
        conn.close()
    deploy = playbook(
        "playbooks/deploy.yml",
        extravars={"env": "local", "reason": "data-loss shape", "deploy_revision": "dl_do_block", **extra},
        envvars=stack.env(),
    )
    assert deploy.rc == 0, deploy
    assert revision(stack) == "dl_do_block"


def test_a_statement_the_archive_cannot_follow_stops_the_rollback_until_accepted(stack_baseline, playbook):
    stack = stack_baseline
    extra = {
        "rollback_migrations_version_locations": [str(VERSIONS), str(DATA_LOSS_VERSIONS)],
        "rollback_migrations_ini": str(DATA_LOSS_VERSIONS / "alembic.ini"),
    }
    try:
        _deploy_data_loss(stack, playbook, extra)
        refused = rollback(playbook, stack, **extra)
        assert refused.rc != 0
        assert "DO $$ BEGIN DELETE FROM dl_queue WHERE id > 2; END $$" in refused.stdout
        assert revision(stack) == "dl_do_block" and flag_enabled(stack), "refused at preflight: nothing changed"
        plan = next(
            e["event_data"]["res"]
            for e in refused.events
            if e["event"] == "runner_on_failed" and "downgrade plan" in e["event_data"]["task"]
        )
        entry = plan["databases"][0]["data_statements"][0]
        accept = f"dl_do_block:{entry['sha256']}"

        traffic = stack.load(rate=10).start()  # the verification judges the 5xx ratio on real requests
        try:
            run = rollback(playbook, stack, rollback_accept_data_statements=accept, **extra)
        finally:
            traffic.stop()

        assert run.rc == 0, run
        assert revision(stack) == "0001_legacy" and not flag_enabled(stack)
        record = end_record(run)
        assert record["accepted_data_statements"] == [accept]
        database = record["databases"]["local-app"]
        assert database["accepted_effects"] == [{"table": "public.dl_queue", "rows_deleted": 4, "rows_updated": 0}]
    finally:
        undo_data_loss(stack)


def undo_data_loss(stack) -> None:
    """Take the test-only revision away by hand if the test stopped before the rollback did."""
    conn = psycopg2.connect(stack.dsn())
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT version_num FROM alembic_version")
            if cur.fetchone()[0] == "dl_do_block":
                cur.execute("DROP TABLE IF EXISTS dl_queue")
                cur.execute("UPDATE alembic_version SET version_num = '0002_data_transformation'")
    finally:
        conn.close()
