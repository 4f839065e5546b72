"""The way forward: schema_upgrade restores the rows a rollback archived, against real PostgreSQL 16.

Each test starts from `app_db` (the feature's head with rows), reverts it with the rollback's own code
(alembic_runner.revert_database, which archives the dropped table and column), then upgrades it again
with upgrade_runner.upgrade_database and checks the rows by checksum.
"""

from __future__ import annotations

import pytest

from tests.fixtures.schema import HEAD, LEGACY, MIGRATIONS, AppDatabase, revert

pytestmark = pytest.mark.integration

JOBS = "SELECT md5(string_agg(format('%s|%s|%s|%s|%s', id, document_id, stage, pipeline_version, output), ',' ORDER BY id)) FROM transformation_jobs"
VERSIONS = "SELECT md5(string_agg(format('%s|%s', id, transform_version), ',' ORDER BY id)) FROM documents"


def upgrade(db: AppDatabase, **job) -> dict:
    from ansible.module_utils.upgrade_runner import upgrade_database  # noqa: PLC0415

    defaults = {"name": db.name, "dsn": db.dsn, "script_location": str(MIGRATIONS), "run_id": "deploy-1",
                "restored_by": "tester"}
    return upgrade_database({**defaults, **job})


def checksum(db: AppDatabase, statement: str) -> str:
    return db.query(statement)[0][0]


def test_round_trip_restores_every_row(app_db):
    jobs, versions = checksum(app_db, JOBS), checksum(app_db, VERSIONS)
    assert not revert(app_db, run_id="rb-1")["failed"]
    plan = upgrade(app_db, check_mode=True)
    print(plan)
    assert not plan["failed"], plan["msg"]
    result = upgrade(app_db)
    print(result)
    assert not result["failed"], result["msg"]
    assert app_db.revision() == HEAD
    assert checksum(app_db, JOBS) == jobs
    assert checksum(app_db, VERSIONS) == versions
