"""Any alembic project, against real PostgreSQL 16: projects made by the real `alembic init -t <template>`.

Each template: check mode plans without credentials; apply is refused before any DDL, naming env.py
and the lines to add (the stock env.py ignores the module's connection); after adding those lines,
apply reverts under every guard. An env.py that reads the connection but opens its own anyway is
stopped before its first statement. The multidb template is refused in the plan.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from ansible.module_utils.schema_alembic import ENV_PY_FIX

from tests.fixtures.schema import HEAD, LEGACY, AppDatabase, revert
from tests.unit.test_alembic_project import CONFIG_FILES, init_project

pytestmark = pytest.mark.integration


def add_connection_sharing(env_py: Path) -> None:
    """Insert ENV_PY_FIX at the top of run_migrations_online(), after its docstring: what a user does."""
    source = env_py.read_text()
    function = next(
        node
        for node in ast.parse(source).body
        if isinstance(node, ast.FunctionDef) and node.name == "run_migrations_online"
    )
    first = function.body[0]
    after = (
        first.end_lineno if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) else first.lineno - 1
    )
    lines = source.splitlines()
    lines[after:after] = ["    " + line for line in ENV_PY_FIX]
    env_py.write_text("\n".join(lines) + "\n")


def _unchanged(db: AppDatabase, fingerprint: str) -> None:
    assert db.fingerprint() == fingerprint and db.revision() == HEAD
    assert "rollback_archive" not in db.schemas()


@pytest.mark.parametrize("template", sorted(CONFIG_FILES))
def test_a_new_users_project_is_planned_refused_then_reverted_after_the_documented_change(tmp_path, app_db, template):
    project = init_project(tmp_path, template)
    config_file = str(project / CONFIG_FILES[template])
    env_py = project / "migrations" / "env.py"
    before = app_db.fingerprint()

    plan = revert(app_db, config_file=config_file, script_location=None, check_mode=True)
    assert not plan["failed"], plan["msg"]
    assert plan["sql_sha256"] == revert(app_db, check_mode=True)["sql_sha256"]  # the repository's own project
    assert [(d["table"], d["column"], d["rows"]) for d in plan["drops"]] == [
        ("documents", "transform_version", 40),
        ("transformation_jobs", None, 20),
    ]

    refused = revert(app_db, config_file=config_file, expected_sql_sha256=plan["sql_sha256"])
    assert refused["failed"] and refused["changed"] is False
    assert str(env_py) in refused["msg"] and "refused before any DDL" in refused["msg"]
    assert "\n" not in refused["msg"]
    assert refused["env_py"] == str(env_py) and refused["env_py_fix"] == ENV_PY_FIX
    _unchanged(app_db, before)

    add_connection_sharing(env_py)
    result = revert(app_db, config_file=config_file, expected_sql_sha256=plan["sql_sha256"], run_id=f"tpl-{template}")
    assert not result["failed"], result["msg"]
    assert result["changed"] and app_db.revision() == LEGACY
    assert app_db.fingerprint() == app_db.legacy_fingerprint
    assert result["archive"]["rows"] == 60


def test_an_env_py_that_opens_its_own_connection_is_stopped_before_its_first_statement(tmp_path, app_db):
    """It mentions config.attributes["connection"], but connects with the URL of alembic.ini anyway."""
    project = init_project(tmp_path, "generic")
    env_py = project / "migrations" / "env.py"
    source = env_py.read_text().replace(
        "config = context.config",
        'config = context.config\nshared = config.attributes.get("connection")  # read, then ignored',
    )
    env_py.write_text(source)
    ini = project / "alembic.ini"
    ini.write_text(
        ini.read_text().replace(
            "driver://user:pass@localhost/dbname",
            app_db.dsn.replace("postgresql://", "postgresql+psycopg2://").replace("%", "%%"),
        )
    )
    before = app_db.fingerprint()

    result = revert(app_db, config_file=str(ini))

    assert result["failed"] and "opened a database connection of its own" in result["msg"], result["msg"]
    assert "rolled back" in result["msg"]
    _unchanged(app_db, before)


def test_the_multidb_template_is_refused_in_the_plan(tmp_path, app_db):
    project = init_project(tmp_path, "multidb")
    before = app_db.fingerprint()
    result = revert(app_db, config_file=str(project / "alembic.ini"), check_mode=True)
    assert result["failed"] and "multidb template" in result["msg"], result["msg"]
    _unchanged(app_db, before)
