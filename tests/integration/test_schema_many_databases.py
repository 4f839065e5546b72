"""Many databases in one revert (alembic_runner.revert_databases) against real PostgreSQL 16.

The workers are new interpreters (plugins/module_utils/worker_pool.py), so this runs straight from
pytest's process, which has threads: no fork of it is made. Each database is reported, in order;
a database whose revert hangs is stopped by the watchdog and reported, and the others still finish.
"""

import psycopg2
import pytest
from ansible.module_utils.alembic_runner import revert_databases
from ansible.module_utils.pg_session import ADVISORY_LOCK_KEY

from tests.fixtures.schema import HEAD, LEGACY, VERSIONS, clone_app_db

pytestmark = pytest.mark.integration
CANARY = "Canary-Secret-7f3e"


def job(db, **extra) -> dict:
    return {"name": db.name, "dsn": db.dsn, "revision": LEGACY, "script_location": str(VERSIONS.parent), **extra}


@pytest.fixture
def tenants(pg_cluster, app_template, app_db):
    """app_db and three copies of it, all at the head with rows."""
    names = [f"{app_db.name}_{i}" for i in range(3)]
    dbs = [clone_app_db(app_template, name) for name in names]
    yield [app_db, *dbs]
    for name in names:
        pg_cluster.drop_database(name)


def test_many_databases_in_worker_processes_finish_all_and_report_each(pg_cluster, tenants):
    jobs = [job(db, run_id="many") for db in tenants]
    jobs.insert(2, {**jobs[0], "name": "unreachable", "dsn": pg_cluster.dsn(tenants[0].name, password=CANARY)})
    results = revert_databases(jobs, parallel=2)
    assert [r["name"] for r in results] == [j["name"] for j in jobs]
    failed = [r for r in results if r["failed"]]
    assert [r["name"] for r in failed] == ["unreachable"] and CANARY not in repr(results)
    assert all(r["changed"] and r["to_revision"] == LEGACY for r in results if not r["failed"])
    assert len({r["sql_sha256"] for r in results if not r["failed"]}) == 1
    for db in tenants:
        assert db.revision() == LEGACY and db.fingerprint() == db.legacy_fingerprint
    again = revert_databases([j for j in jobs if j["name"] != "unreachable"], parallel=2)
    assert not any(r["changed"] or r["failed"] for r in again)


def test_a_database_that_hangs_is_stopped_by_the_watchdog_and_the_others_are_reverted(tenants):
    """One database waits on the advisory lock another session holds (as long as it is let to); its
    worker is stopped after database_timeout, its revert never committed, every other database reverted."""
    stuck = tenants[1]
    holder = psycopg2.connect(stuck.dsn, application_name="other-rollback")
    try:
        with holder.cursor() as cur:
            cur.execute("SELECT pg_advisory_lock(%s)", (ADVISORY_LOCK_KEY,))
        holder.commit()
        jobs = [job(db, advisory_lock_wait=3600) for db in tenants]
        results = revert_databases(jobs, parallel=2, database_timeout=3)
    finally:
        holder.close()
    assert [r["name"] for r in results] == [db.name for db in tenants]
    hung = results[1]
    assert hung["failed"] and not hung["changed"]
    assert "did not finish within 3 s: the watchdog stopped its worker process" in hung["msg"]
    assert stuck.revision() == HEAD and stuck.fingerprint() != stuck.legacy_fingerprint
    for result, db in zip(results, tenants, strict=True):
        if db is not stuck:
            assert result["changed"] and not result["failed"], result["msg"]
            assert db.revision() == LEGACY
