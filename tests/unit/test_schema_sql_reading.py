"""The pure-Python parts of the schema revert: reading SQL with PostgreSQL's parser, names, secrets,
options, targets."""

import hashlib
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
from ansible.module_utils.schema_archive import archive_table_name
from ansible.module_utils.schema_errors import RefusedError
from ansible.module_utils.sql_analysis import SqlAnalysisError, analyze

ROOT = Path(__file__).resolve().parents[2]
MIGRATIONS = ROOT / "migrations"
FAULTY = ROOT / "tests" / "data" / "faulty_versions"
BRANCHED = ROOT / "tests" / "data" / "branched_versions"


def _effects(sql: str) -> list[tuple]:
    """(kind, objtype, name, column, cascade, missing_ok) of every effect of every statement."""
    return [(e.kind, e.objtype, e.name, e.column, e.cascade, e.missing_ok) for s in analyze(sql) for e in s.effects]


# -- what a statement does to data (pglast: PostgreSQL's own parser) -----------------------------------
@pytest.mark.parametrize(
    ("sql", "effects"),
    [
        ("DROP TABLE transformation_jobs", [("drop", "table", ("transformation_jobs",), None, False, False)]),
        (
            '\nDROP TABLE IF EXISTS public.jobs, "Audit Log" CASCADE',
            [
                ("drop", "table", ("public", "jobs"), None, True, True),
                ("drop", "table", ("Audit Log",), None, True, True),
            ],
        ),
        ("drop\n  table  Public.Jobs", [("drop", "table", ("public", "jobs"), None, False, False)]),
        ("/* DROP TABLE x */ DrOp TaBlE y -- z", [("drop", "table", ("y",), None, False, False)]),
        (
            "DROP VIEW v; DROP TABLE a; drop table b",
            [
                ("drop", "view", ("v",), None, False, False),
                ("drop", "table", ("a",), None, False, False),
                ("drop", "table", ("b",), None, False, False),
            ],
        ),
        (
            "ALTER TABLE documents DROP COLUMN transform_version",
            [
                ("drop_column", "table", ("documents",), "transform_version", False, False),
            ],
        ),
        (
            'ALTER TABLE IF EXISTS s."Docs" DROP COLUMN IF EXISTS "Mixed", ADD COLUMN x int, DROP y CASCADE',
            [
                ("drop_column", "table", ("s", "Docs"), "Mixed", False, True),
                ("drop_column", "table", ("s", "Docs"), "y", True, True),
            ],
        ),
        ("ALTER TABLE t ALTER COLUMN c TYPE int USING c::int", [("alter_type", "table", ("t",), "c", False, False)]),
        ("DROP MATERIALIZED VIEW mv", [("drop", "matview", ("mv",), None, False, False)]),
        ("DROP SCHEMA feature CASCADE", [("drop", "schema", ("feature",), None, True, False)]),
        ("DROP TYPE stage CASCADE", [("drop", "type", ("stage",), None, True, False)]),
        ("TRUNCATE a", [("truncate", "table", ("a",), None, False, False)]),
        ("DELETE FROM jobs WHERE stage = 'failed'", [("delete", "table", ("jobs",), None, False, False)]),
        ("UPDATE t SET a = 1", [("update", "table", ("t",), None, False, False)]),
        # Nothing with rows: schema objects only, and commented or quoted look-alikes.
        ("ALTER TABLE documents DROP CONSTRAINT documents_pkey", []),
        ("ALTER TABLE documents ALTER COLUMN status DROP DEFAULT", []),
        ("DROP INDEX ix_transformation_jobs_document_stage", []),
        ("DROP TRIGGER t ON x CASCADE", []),
        ("-- DROP TABLE commented\nSELECT 'DROP TABLE nope'", []),
        ("CREATE TABLE x (id int); COMMENT ON TABLE x IS 'drop table y'", []),
    ],
)
def test_what_each_statement_does(sql, effects):
    assert _effects(sql) == effects


@pytest.mark.parametrize(
    ("sql", "reason"),
    [
        ("DO $$ BEGIN DELETE FROM x; END $$", "a DO block can do anything"),
        ("CALL purge()", "CALL runs a procedure"),
        ("WITH d AS (DELETE FROM t RETURNING *) SELECT 1", "a WITH clause modifies data"),
        ("INSERT INTO t VALUES (1) ON CONFLICT (id) DO UPDATE SET v = 1", "ON CONFLICT DO UPDATE"),
        ("MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE", "MERGE"),
        ("REFRESH MATERIALIZED VIEW mv", "RefreshMatViewStmt is not known"),
        ("DROP COLLATION c CASCADE", "what it takes with it is not resolved"),
    ],
)
def test_statements_the_archive_cannot_follow_are_unsafe(sql, reason):
    [statement] = analyze(sql)
    assert [e.kind for e in statement.effects] == ["unsafe"]
    assert reason in statement.effects[0].reason


def test_deletes_and_updates_are_archivable_only_when_their_rows_can_be_selected_first():
    [plain] = analyze("DELETE FROM ONLY public.jobs AS j WHERE j.stage = 'failed'")[0].effects
    assert plain.archivable and plain.only and plain.alias == "j" and plain.where == "j.stage = 'failed'"
    [subquery] = analyze("DELETE FROM jobs WHERE id IN (SELECT id FROM other)")[0].effects
    assert not subquery.archivable and "subquery" in subquery.reason
    [using] = analyze("DELETE FROM jobs USING other WHERE jobs.id = other.id")[0].effects
    assert not using.archivable and "USING" in using.reason
    [update] = analyze("UPDATE t SET a = 1, b = b + 1 WHERE random() < 0.5")[0].effects
    assert update.archivable and update.set_columns == ("a", "b") and update.where_functions == (("random",),)


def test_function_calls_are_listed_for_the_catalog_to_judge():
    [call] = analyze("SELECT purge_sessions(30), now()")
    assert call.functions == (("purge_sessions",), ("now",)) and call.effects == ()
    [view] = analyze("CREATE VIEW v AS SELECT purge_sessions(30)")
    assert view.functions == ()  # a view's query does not run when it is created


def test_the_version_table_and_transactions_are_recognised():
    statements = analyze(
        "BEGIN; UPDATE alembic_version SET version_num='0001' WHERE alembic_version.version_num = '0002'; COMMIT;"
    )
    assert [s.transaction for s in statements] == ["BEGIN", None, "COMMIT"]
    assert (statements[1].version_target, statements[1].version_op) == (("alembic_version",), "UPDATE")
    ef = analyze('DELETE FROM "__EFMigrationsHistory"\nWHERE "MigrationId" = \'20240101_X\';')
    assert (ef[0].version_target, ef[0].version_op) == (("__EFMigrationsHistory",), "DELETE")


def test_a_statement_is_accepted_by_the_sha256_of_its_canonical_form():
    one = analyze("delete from jobs   where stage='failed' -- why")[0]
    two = analyze("DELETE FROM jobs WHERE stage = 'failed'")[0]
    three = analyze("DELETE FROM jobs WHERE stage = 'done'")[0]
    assert one.sha256 == two.sha256 != three.sha256
    assert one.sha256 == hashlib.sha256(b"DELETE FROM jobs WHERE stage = 'failed'").hexdigest()
    assert one.text.startswith("delete from jobs   where stage='failed'")  # shown as written


def test_text_postgresql_rejects_is_an_error_naming_the_line():
    with pytest.raises(SqlAnalysisError, match="line 2"):
        analyze("SELECT 1;\nDROP TABLEE x;")


def test_the_real_downgrade_sql():
    sql = plan(load_script(str(MIGRATIONS)), "0002_data_transformation", "0001_legacy")["sql"]
    effects = [(e.kind, e.name, e.column) for s in analyze(sql) for e in s.effects]
    assert ("drop_column", ("documents",), "transform_version") in effects
    assert ("drop", ("transformation_jobs",), None) in effects


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
        ({"tool": "flyway"}, "tool 'flyway' is not supported"),
        ({"accept_data_statements": ["0002:abc"]}, "is not <revision>:<sha256>"),
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


def test_accepted_statements_are_normalised():
    sha = "AB" * 32
    job = validate_job(
        {"revision": "0001_legacy", "accept_data_statements": f" 0003_Cleanup:{sha} ,0003_Cleanup:{sha}"}
    )
    assert job["accept_data_statements"] == [f"0003_Cleanup:{sha.lower()}"]


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
