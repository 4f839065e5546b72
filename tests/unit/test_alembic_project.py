"""Any alembic project, read as the alembic command reads it (no database: offline rendering only).

Projects are made by the real `alembic init -t <template>` in a temporary directory, with the
repository's revisions copied in. Also pins the one private alembic call the runbook makes.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from ansible.module_utils.schema_alembic import (
    alembic_config,
    downgrade_steps,
    env_py_reads_connection,
    load_script,
    plan,
    version_table,
)
from ansible.module_utils.schema_errors import RefusedError
from ansible.module_utils.schema_guard import VersionTable

ROOT = Path(__file__).resolve().parents[2]
MIGRATIONS = ROOT / "migrations"
ALEMBIC = Path(sys.executable).parent / "alembic"
HEAD, LEGACY = "0002_data_transformation", "0001_legacy"
CONFIG_FILES = {
    "generic": "alembic.ini",
    "pyproject": "pyproject.toml",
    "async": "alembic.ini",
    "pyproject_async": "pyproject.toml",
}


def init_project(tmp_path: Path, template: str) -> Path:
    """`alembic init -t <template> migrations` in tmp_path, with the repository's revisions."""
    subprocess.run(
        [str(ALEMBIC), "init", "-t", template, "migrations"], cwd=tmp_path, check=True, capture_output=True, timeout=60
    )
    for revision in (MIGRATIONS / "versions").glob("0*.py"):
        shutil.copy(revision, tmp_path / "migrations" / "versions")
    return tmp_path


def _repo_sql() -> str:
    script = load_script(str(MIGRATIONS))
    return plan(script, HEAD, LEGACY)["sql"]


def test_downgrade_steps_is_what_alembic_command_downgrade_runs():
    """The one private call (ScriptDirectory._downgrade_revs) pinned against alembic's public command."""
    script = load_script(str(MIGRATIONS))
    steps = downgrade_steps(script, LEGACY, HEAD)
    assert [s.revision.revision for s in steps] == [HEAD]
    assert [s.is_upgrade for s in steps] == [False]
    assert [s.revision.revision for s in downgrade_steps(script, "base", HEAD)] == [HEAD, LEGACY]
    assert downgrade_steps(script, HEAD, HEAD) == []
    # The SQL our EnvironmentContext renders is exactly what `alembic downgrade --sql HEAD:LEGACY` renders.
    buffer = io.StringIO()
    cfg = Config(output_buffer=buffer, stdout=buffer)
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["configure_logger"] = False
    command.downgrade(cfg, f"{HEAD}:{LEGACY}", sql=True)
    assert buffer.getvalue() == _repo_sql()


@pytest.mark.parametrize("template", sorted(CONFIG_FILES))
def test_every_template_plans_offline_without_credentials(tmp_path, template):
    project = init_project(tmp_path, template)
    config_file = project / CONFIG_FILES[template]
    cfg = alembic_config("ignored", None, str(config_file))
    script = load_script("ignored", None, str(config_file))
    assert Path(script.dir) == project / "migrations"
    assert version_table(cfg, script) == VersionTable("alembic_version")
    # The template's sqlalchemy.url (driver://user:pass@localhost/dbname) is never used.
    assert plan(script, HEAD, LEGACY, cfg)["sql"] == _repo_sql()
    assert not env_py_reads_connection(str(project / "migrations" / "env.py"))


def test_the_pyproject_template_is_read_from_either_of_its_files(tmp_path):
    project = init_project(tmp_path, "pyproject")
    assert "script_location" not in (project / "alembic.ini").read_text().split("[loggers]")[0]
    for name in ("pyproject.toml", "alembic.ini"):
        script = load_script("ignored", None, str(project / name))
        assert Path(script.dir) == project / "migrations"


def test_relative_paths_are_the_config_files_not_the_working_directory(tmp_path, monkeypatch):
    project = init_project(tmp_path, "generic")
    ini = project / "alembic.ini"
    ini.write_text(ini.read_text().replace("script_location = %(here)s/migrations", "script_location = migrations"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert Path(load_script("ignored", None, str(ini)).dir) == project / "migrations"


def test_the_multidb_template_is_refused_in_one_sentence(tmp_path):
    project = init_project(tmp_path, "multidb")
    cfg = alembic_config("ignored", None, str(project / "alembic.ini"))
    script = load_script("ignored", None, str(project / "alembic.ini"))
    with pytest.raises(RefusedError, match="multidb template") as refused:
        version_table(cfg, script)
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.ini", None, "does not exist"),
        ("empty.ini", "[alembic]\n", "has no script_location"),
        ("broken.ini", "[alembic\nscript_location = x\n", "Cannot read config_file"),
    ],
)
def test_a_config_file_that_cannot_work_is_refused(tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(RefusedError, match=message):
        load_script("ignored", None, str(path))


def test_the_repository_env_py_reads_the_shared_connection():
    assert env_py_reads_connection(str(MIGRATIONS / "env.py"))
