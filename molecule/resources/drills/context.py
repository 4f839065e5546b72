"""Where a drill keeps its state, how it reaches the stack and the database, and the playbook environment."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import psycopg2
from psycopg2 import sql as pgsql

ROOT = Path(__file__).resolve().parents[3]
RUN_DIR = ROOT / ".run" / "molecule"
RESULTS_DIR = RUN_DIR / "results"
# The stack all scenarios share; DRILL_STACK_DIR moves it (e.g. to run two checkouts side by side).
STACK_DIR = Path(os.environ.get("DRILL_STACK_DIR") or RUN_DIR / "stack").resolve()
VENV_BIN = Path(sys.executable).parent

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from plugins.plugin_utils.module_utils_path import add_module_utils_path  # noqa: E402

add_module_utils_path()  # our module_utils import each other as ansible.module_utils.<name>

from ansible.module_utils.schema_fingerprint import fingerprint as _fingerprint  # noqa: E402

from rehearsal.stack import Stack  # noqa: E402

FLAG = "DataTransformationFeature"
FAULTY_REVISION = "0003_faulty_downgrade"
FAULTY_INI = ROOT / "tests" / "data" / "faulty_versions" / "alembic.ini"
VERSION_LOCATIONS = [str(ROOT / "migrations" / "versions"), str(ROOT / "tests" / "data" / "faulty_versions")]

# What the rollback's environment must not inherit from the shell that runs molecule: molecule's and
# Ansible's own settings (the rollback uses the repository's ansible.cfg), another stack's connection
# details, an audit destination, and the CI systems' identity of the operator (the drill names its
# operator with -e operator=..., so that the audit record's operator is known).
_STRIPPED_PREFIXES = ("ANSIBLE_", "MOLECULE_", "ROLLBACK_", "FF_", "SMTP_", "SINK_", "APP_", "PROMETHEUS_")
_STRIPPED = {
    "PYTHONPATH",
    "PGPASSWORD",
    "SLACK_WEBHOOK_URL",
    "REHEARSAL_RUN_DIR",
    "GITHUB_ACTOR",
    "GITLAB_USER_LOGIN",
    "BUILD_USER_ID",
    "CI_JOB_URL",
    "BUILD_URL",
    "GITHUB_RUN_ID",
}


class DrillError(RuntimeError):
    """The drill itself could not do what it was asked (not the rollback failing as planned)."""


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_utc(text: str) -> float:
    """Epoch seconds of the audit's ISO timestamps ('2026-11-28T00:58:14.653Z')."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def stack() -> Stack:
    found = Stack(STACK_DIR)
    if not found.exists():
        raise DrillError(f"no rehearsal stack in {STACK_DIR}: run `molecule create` (or make rehearse) first")
    return found


def audit_key(audit_file: Path) -> str:
    """The key that seals this audit file's records (as AWX's audit credential would inject it), kept beside
    it (0600) so that the verifier can check the seals; created on first use."""
    path = audit_file.with_name(audit_file.name + ".key")
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32))
    return path.read_text().strip()


def playbook_env(the_stack: Stack, audit_file: Path, overrides: dict[str, str] | None = None) -> dict[str, str]:
    """The environment an operator's shell has after `eval "$(python -m rehearsal env)"`, and nothing of molecule's."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(_STRIPPED_PREFIXES) and key not in _STRIPPED
    }
    env.update(the_stack.env())
    env["ANSIBLE_CONFIG"] = str(ROOT / "ansible.cfg")
    env["ROLLBACK_AUDIT_FILE"] = str(audit_file)
    env["ROLLBACK_AUDIT_KEY"] = audit_key(audit_file)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(overrides or {})
    return env


# -- the database ----------------------------------------------------------------------------
@contextlib.contextmanager
def connect(the_stack: Stack, role: str = "migrator", application_name: str = "molecule-drill"):
    conn = psycopg2.connect(the_stack.dsn(role=role), application_name=application_name, connect_timeout=10)
    conn.autocommit = True
    try:
        yield conn
    finally:
        conn.close()


def query(the_stack: Stack, sql: str, params: tuple = ()) -> list[tuple]:
    with connect(the_stack) as conn, conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchall() if cur.description else []


def revision(the_stack: Stack) -> str | None:
    rows = query(the_stack, "SELECT version_num FROM alembic_version")
    return rows[0][0] if rows else None


def fingerprint(the_stack: Stack) -> str:
    """The schema fingerprint, computed as the runbook computes it (search_path pg_catalog: every name qualified)."""
    with connect(the_stack) as conn, conn.cursor() as cur:
        cur.execute("SET search_path TO pg_catalog")
        return _fingerprint(cur)


def archive_tables(the_stack: Stack) -> list[dict]:
    """Every copy in rollback_archive.manifest (an empty list when the schema does not exist)."""
    exists = query(the_stack, "SELECT to_regclass('rollback_archive.manifest') IS NOT NULL")[0][0]
    if not exists:
        return []
    rows = query(
        the_stack,
        """SELECT run_id, source_table, source_column, archive_table, row_count, from_revision, to_revision
           FROM rollback_archive.manifest ORDER BY id""",
    )
    keys = ("run_id", "source_table", "source_column", "archive_table", "row_count", "from_revision", "to_revision")
    return [dict(zip(keys, row, strict=True)) for row in rows]


def archive_count(the_stack: Stack, archive_table: str, where: str = "") -> int:
    """Rows of one archive table (its bare name, as rollback_archive.manifest lists it), optionally filtered."""
    statement = pgsql.SQL("SELECT count(*) FROM {}").format(pgsql.Identifier("rollback_archive", archive_table))
    if where:
        statement = pgsql.SQL("{} WHERE {}").format(statement, pgsql.SQL(where))
    with connect(the_stack) as conn, conn.cursor() as cur:
        cur.execute(statement)
        return cur.fetchone()[0]


def archive_column(the_stack: Stack, archive_table: str, column: str) -> list:
    statement = pgsql.SQL("SELECT {} FROM {}").format(
        pgsql.Identifier(column), pgsql.Identifier("rollback_archive", archive_table)
    )
    with connect(the_stack) as conn, conn.cursor() as cur:
        cur.execute(statement)
        return [row[0] for row in cur.fetchall()]


def table_exists(the_stack: Stack, name: str) -> bool:
    return query(the_stack, "SELECT to_regclass(%s) IS NOT NULL", (name,))[0][0]


# -- a scenario's folder -----------------------------------------------------------------------
class Scenario:
    """The state of one scenario's drill: .run/molecule/<name>/state.json and the files next to it."""

    def __init__(self, name: str):
        if not name or "/" in name or name.startswith("."):
            raise DrillError(f"bad scenario name {name!r}")
        self.name = name
        self.dir = RUN_DIR / name
        self.state_file = self.dir / "state.json"
        self.audit_file = self.dir / "audit.jsonl"
        self.results_file = RESULTS_DIR / f"{name}.json"

    def clean(self) -> None:
        """A fresh folder: a new drill starts from nothing the previous one left (audit trail included)."""
        if self.dir.exists():
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True)

    @property
    def state(self) -> dict:
        if not self.state_file.exists():
            raise DrillError(f"scenario {self.name} was not prepared: no {self.state_file}")
        return json.loads(self.state_file.read_text())

    def save(self, state: dict) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2, sort_keys=True, default=str) + "\n")
        tmp.replace(self.state_file)

    def update(self, **changes) -> dict:
        state = self.state
        state.update(changes)
        self.save(state)
        return state

    def add_runs(self, runs: list[dict]) -> dict:
        state = self.state
        state.setdefault("runs", []).extend(runs)
        state["updated"] = time.time()
        self.save(state)
        return state

    def unique_label(self, label: str) -> str:
        """`label`, or `label#2`, `label#3`... when the scenario ran it already (molecule's idempotence)."""
        taken = {run["label"] for run in self.state.get("runs", [])}
        if label not in taken:
            return label
        number = 2
        while f"{label}#{number}" in taken:
            number += 1
        return f"{label}#{number}"
