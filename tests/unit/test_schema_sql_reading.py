"""The pure-Python parts of the schema revert: reading drops out of SQL, names, secrets, options, targets."""

import random
from pathlib import Path

import pytest
from ansible.module_utils.alembic_runner import (
    backoff_seconds,
    check_downgrade,
    load_script,
    plan,
    resolve_target,
    validate_job,
)
from ansible.module_utils.pg_session import ADVISORY_LOCK_KEY, MASK, advisory_key, describe_dsn, dsn_secrets, redact
from ansible.module_utils.schema_archive import (
    Drop,
    archive_table_name,
    drops_in_script,
    find_drops,
    split_statements,
)
from ansible.module_utils.schema_errors import RefusedError

ROOT = Path(__file__).resolve().parents[2]
MIGRATIONS = ROOT / "migrations"
FAULTY = ROOT / "tests" / "data" / "faulty_versions"
BRANCHED = ROOT / "tests" / "data" / "branched_versions"


# -- what a statement drops ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("statement", "drops"),
    [
        ("DROP TABLE transformation_jobs", [Drop("transformation_jobs")]),
        ('\nDROP TABLE IF EXISTS public.jobs, "Audit Log" CASCADE', [Drop("public.jobs"), Drop('"Audit Log"')]),
        ("drop table Jobs", [Drop("jobs")]),
        ("ALTER TABLE documents DROP COLUMN transform_version", [Drop("documents", "transform_version")]),
        ("ALTER TABLE ONLY documents DROP transform_version", [Drop("documents", "transform_version")]),
        (
            'ALTER TABLE IF EXISTS s."Docs" DROP COLUMN IF EXISTS "Mixed", ADD COLUMN x int, DROP y CASCADE',
            [Drop('s."Docs"', "Mixed"), Drop('s."Docs"', "y")],
        ),
        ("ALTER TABLE documents DROP CONSTRAINT documents_pkey", []),
        ("ALTER TABLE documents ALTER COLUMN status DROP DEFAULT", []),
        ("ALTER TABLE documents ADD CONSTRAINT c CHECK (a IN (1, 2)), DROP COLUMN b", [Drop("documents", "b")]),
        ("DROP INDEX ix_transformation_jobs_document_stage", []),
        ("DROP TYPE transformation_stage", []),
        ("DROP VIEW v", []),
        ("UPDATE alembic_version SET version_num='0001_legacy'", []),
        ("-- DROP TABLE commented\nSELECT 'DROP TABLE nope'", []),
        ("/* DROP TABLE x */ DROP TABLE y", [Drop("y")]),
    ],
)
def test_find_drops(statement, drops):
    assert find_drops(statement) == drops


def test_split_statements_respects_quotes_comments_and_dollar_quoting():
    sql = """BEGIN;
    DROP TABLE a; -- a comment; with a semicolon
    DO $$ BEGIN RAISE EXCEPTION 'x; y'; END $$;
    SELECT 'it''s; fine', "odd;name" FROM t;
    /* block; /* nested; */ */ COMMIT;"""
    statements = split_statements(sql)
    assert len(statements) == 5
    assert "DO $$ BEGIN RAISE EXCEPTION 'x; y'; END $$" in statements[2]
    assert "odd;name" in statements[3]


def test_drops_in_the_real_downgrade_sql():
    sql = plan(load_script(str(MIGRATIONS)), "0002_data_transformation", "0001_legacy")["sql"]
    assert drops_in_script(sql) == [Drop("documents", "transform_version"), Drop("transformation_jobs")]


# -- archive names ---------------------------------------------------------------------------------
def test_archive_table_names_fit_postgresql_identifiers():
    assert archive_table_name("r1", "documents", "transform_version") == "r1__documents__transform_version"
    assert archive_table_name("r1", "jobs", None, schema="tenant") == "r1__tenant.jobs"
    long = archive_table_name("20261128T000000Z-abcd", "t" * 60, "c" * 60)
    assert len(long.encode()) <= 63
    assert long != archive_table_name("20261128T000000Z-abcd", "t" * 60, "c" * 59)


# -- secrets -----------------------------------------------------------------------------------------
CANARY = "Canary-p@ss:w/rd%41"


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://migrator:Canary-p%40ss%3Aw%2Frd%2541@db:5432/app",
        f"host=db user=migrator password='{CANARY}' dbname=app",
        f"host=db password={CANARY.replace(' ', '')} dbname=app",
        "postgresql://migrator@db/app?password=Canary-p%40ss%3Aw%2Frd%2541",
    ],
)
def test_redact_removes_every_spelling_of_the_password(dsn):
    secrets = dsn_secrets(dsn)
    assert secrets
    message = f"Cannot connect: invalid dsn: {dsn} (password {CANARY}) [{dsn.upper()}]"
    cleaned = redact(message, dsn)
    for secret in secrets:
        assert secret not in cleaned
    assert "Canary-p" not in cleaned.replace(CANARY.upper(), "") or MASK in cleaned


def test_redact_masks_uri_passwords_even_of_other_dsns():
    text = "see postgresql://u:hunter2secret@h/db and password=hunter3secret"
    cleaned = redact(text)
    assert "hunter2secret" not in cleaned and "hunter3secret" not in cleaned


def test_describe_dsn_never_shows_the_password():
    text = describe_dsn("postgresql://migrator:TopSecret99@db.example:6432/app")
    assert text == "migrator@db.example:6432/app"
    assert "TopSecret99" not in describe_dsn("host=db password=TopSecret99 user=x")
    assert "TopSecret99" not in describe_dsn("postgresql://x:TopSecret99@[broken")


def test_pgpassword_is_a_secret_too(monkeypatch):
    monkeypatch.setenv("PGPASSWORD", "EnvCanary123")
    assert redact("auth failed for EnvCanary123", "postgresql://u@h/db") == f"auth failed for {MASK}"


# -- the advisory lock key ---------------------------------------------------------------------------
def test_advisory_lock_key_is_the_documented_constant():
    assert ADVISORY_LOCK_KEY == advisory_key("emergency-rollback:schema-revert") == 7088773521838913054
    assert ((ADVISORY_LOCK_KEY >> 32) & 0xFFFFFFFF, ADVISORY_LOCK_KEY & 0xFFFFFFFF) == (1650483701, 3462870558)


# -- options ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"lock_timeout": 0}, "lock_timeout must be more than 0"),
        ({"statement_timeout": 0}, "statement_timeout must be more than 0"),
        ({"lock_attempts": 0}, "lock_attempts must be at least 1"),
        ({"lock_timeout": 5, "statement_timeout": 3}, "statement_timeout must be at least lock_timeout"),
        ({"lock_backoff": -1}, "lock_backoff must not be negative"),
        ({"run_id": "bad id; drop"}, "run_id 'bad id; drop' is not usable"),
        ({"revision": ""}, "No target revision given"),
    ],
)
def test_validate_job_refuses_values_that_cannot_work(change, message):
    with pytest.raises(RefusedError, match=message):
        validate_job({"revision": "0001_legacy", **change})


def test_validate_job_fills_defaults_and_a_run_id():
    job = validate_job({"revision": "0001_legacy", "lock_timeout": None})
    assert job["lock_timeout"] == 2.0 and job["lock_attempts"] == 5 and job["archive"] is True
    assert job["run_id"] and len(job["run_id"]) <= 40


def test_backoff_doubles_is_capped_and_jittered():
    rng = random.Random(7)
    waits = [backoff_seconds(n, 0.5, 3.0, rng) for n in range(1, 7)]
    for n, wait in enumerate(waits, start=1):
        nominal = min(3.0, 0.5 * 2 ** (n - 1))
        assert 0.8 * nominal <= wait <= 1.2 * nominal


# -- targets in the script directory (no database) ----------------------------------------------------
def test_history_is_one_linear_chain_from_the_legacy_baseline():
    script = load_script(str(MIGRATIONS))
    revisions = list(script.walk_revisions())
    assert [r.revision for r in revisions] == ["0002_data_transformation", "0001_legacy"]
    assert all(not r.is_merge_point and not r.is_branch_point for r in revisions)
    assert script.get_heads() == ["0002_data_transformation"]


def test_resolve_target():
    script = load_script(str(MIGRATIONS))
    assert resolve_target(script, "0001_legacy") == "0001_legacy"
    assert resolve_target(script, "head") == "0002_data_transformation"
    assert resolve_target(script, "base") == "base"
    with pytest.raises(RefusedError, match="Unknown revision 'nope'"):
        resolve_target(script, "nope")
    with pytest.raises(RefusedError, match="relative"):
        resolve_target(script, "-1")


def test_symbolic_target_with_multiple_heads_is_refused():
    script = load_script(str(MIGRATIONS), [str(MIGRATIONS / "versions"), str(BRANCHED)])
    with pytest.raises(RefusedError, match=r"multiple heads \(0002_data_transformation, 0002b_other_branch\)"):
        resolve_target(script, "heads")


def test_check_downgrade_refuses_upgrades_branches_and_unknown_revisions():
    script = load_script(str(MIGRATIONS), [str(MIGRATIONS / "versions"), str(BRANCHED)])
    check_downgrade(script, ("0002_data_transformation",), "0001_legacy")
    with pytest.raises(RefusedError, match="would be an upgrade"):
        check_downgrade(script, ("0001_legacy",), "0002_data_transformation")
    with pytest.raises(RefusedError, match="another branch"):
        check_downgrade(script, ("0002b_other_branch",), "0002_data_transformation")
    with pytest.raises(RefusedError, match="several revisions"):
        check_downgrade(script, ("0002_data_transformation", "0002b_other_branch"), "0001_legacy")
    with pytest.raises(RefusedError, match="does not contain"):
        check_downgrade(script, ("0009_from_the_future",), "0001_legacy")


def test_plan_sql_is_deterministic_and_covers_the_enum():
    script = load_script(str(MIGRATIONS))
    first = plan(script, "0002_data_transformation", "0001_legacy")
    assert "DROP TYPE transformation_stage" in first["sql"]
    assert first["sql"].index("DROP TABLE transformation_jobs") < first["sql"].index("DROP TYPE")
    assert [s["revision"] for s in first["steps"]] == ["0002_data_transformation"]
    other = load_script(str(MIGRATIONS), [str(MIGRATIONS / "versions"), str(FAULTY)])
    assert plan(other, "0002_data_transformation", "0001_legacy")["sql_sha256"] == first["sql_sha256"]
