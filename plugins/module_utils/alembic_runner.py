# Copyright: contributors to the emergency-rollback runbook
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The schema revert with alembic: any alembic project, one transaction per database.

`revert_database(job)` plans (check mode) or applies the downgrade of ONE database and returns a
plain dict; it is picklable and never raises, so that `revert_databases(jobs, parallel)` can run
it in worker processes (alembic's `op`/`context` are process-wide: no threads) and still report
every database. A job is a dict; `schema_revert.job_defaults()` lists its keys. The flow (lock,
plan, guard, archive, retries) is schema_revert's, the same for EF Core (`tool: efcore`, efcore.py).

The project: `config_file` (an alembic.ini, or a pyproject.toml with [tool.alembic] as alembic 1.16+
reads it) gives `script_location`, `version_locations` and the other main options, with relative
paths taken from the file's directory; or `script_location` alone. Its env.py runs unchanged:
- check mode renders the downgrade's SQL offline (`as_sql`), with `sqlalchemy.url` set to a bare
  `postgresql://`, so no credentials are needed; the output must be the SQL (the `multidb` template,
  which writes one file per database, is refused);
- apply runs it on the module's own connection, handed over as `config.attributes["connection"]`,
  alembic's documented pattern for programmatic use (cookbook, "Sharing a Connection across one or
  more programmatic migration commands", https://alembic.sqlalchemy.org/en/latest/cookbook.html).
  An env.py that does not read it (the stock templates) is refused before any DDL, naming the file
  and the lines to add; and while it runs, any other connection it opens is refused before its
  first statement: a downgrade never runs on a connection without the runbook's guards.
"""

from __future__ import annotations

import os

try:
    import alembic.ddl.postgresql  # noqa: F401 - loaded once, before worker processes fork
    import sqlalchemy.dialects.postgresql.psycopg2  # noqa: F401
    from alembic.config import Config
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    HAS_ALEMBIC = True
except ImportError:  # pragma: no cover - the module reports missing_required_lib
    HAS_ALEMBIC = False

from ansible.module_utils.pg_session import connect, redact
from ansible.module_utils.schema_alembic import (
    BASE,
    ENV_PY_FIX,
    _escape,
    _project,
    _run_env,
    alembic_config,
    check_downgrade,
    current_revisions,
    downgrade_steps,
    env_py_reads_connection,
    heads,
    load_script,
    plan,
    read_revisions,
    resolve_target,
    version_table,
)
from ansible.module_utils.schema_errors import MigrationFailed, RefusedError
from ansible.module_utils.schema_revert import backoff_seconds, job_defaults, new_run_id, revert_with, validate_job
from ansible.module_utils.sql_analysis import SqlAnalysisError, analyze
from ansible.module_utils.worker_pool import run_jobs


class ForeignConnection(MigrationFailed):
    """env.py opened a connection of its own while the downgrade ran."""


def _hook(guard):
    """before_cursor_execute: every statement through the guard, just before it runs. A string of several
    statements runs one by one here, each after its own archive, and is replaced by a no-op."""

    def before_cursor_execute(conn, cursor, statement, parameters, _context, executemany):
        first = parameters[0] if executemany and parameters else parameters
        text = cursor.mogrify(statement, first).decode() if first is not None else statement
        try:
            statements = analyze(text)
        except SqlAnalysisError as exc:
            raise MigrationFailed(f"a statement of the downgrade cannot be analyzed ({exc})") from None
        if len(statements) <= 1 or executemany:
            for stmt in statements:
                guard.before(stmt)
            return statement, parameters
        raw = conn.connection.driver_connection
        for stmt in statements:
            guard.before(stmt)
            with raw.cursor() as own:
                own.execute(stmt.text)
        return "SELECT 1 WHERE false", None

    return before_cursor_execute


class AlembicTool:
    """The alembic side of schema_revert's flow (see its docstring)."""

    def __init__(self, job: dict):
        self.job = job
        self.cfg = self.script = self.target = self.version = None

    def load(self) -> str:
        self.cfg, self.script = _project(
            self.job["script_location"], self.job["version_locations"], self.job["config_file"]
        )
        self.target = resolve_target(self.script, self.job["revision"])
        self.version = version_table(self.cfg, self.script)
        return self.target

    def read_current(self, cursor) -> tuple[str, ...]:
        return current_revisions(cursor, self.version)

    def at_target(self, current: tuple[str, ...]) -> bool:
        return (not current and self.target == BASE) or current == (self.target,)

    def check_downgrade(self, current: tuple[str, ...]) -> None:
        check_downgrade(self.script, current, self.target)

    def plan(self, current: tuple[str, ...]) -> dict:
        rendered = plan(self.script, current[0], self.target, self.cfg)
        try:
            statements = analyze(rendered["sql"])
        except SqlAnalysisError as exc:
            raise RefusedError(f"The downgrade's SQL cannot be analyzed: {exc}; nothing was changed.") from None
        revisions = [step["revision"] for step in rendered["steps"]]
        return {**rendered, "statements": statements, "revisions": revisions, "version": self.version}

    def check_apply(self) -> None:
        env_py = os.path.join(self.script.dir, "env.py")
        if not env_py_reads_connection(env_py):
            error = RefusedError(
                f"{env_py} ignores the connection the module hands it (config.attributes['connection']), so its "
                "downgrade would run on a connection without the runbook's advisory lock, timeouts and archive: "
                "refused before any DDL; add the lines of env_py_fix at the top of run_migrations_online() "
                "(alembic's documented pattern for sharing a connection), then run again."
            )
            error.details = {"env_py": env_py, "env_py_fix": ENV_PY_FIX}
            raise error

    def run(self, conn, guard) -> None:
        """alembic's downgrade on the module's connection, inside its transaction, every statement guarded."""
        cfg = Config(file_=self.cfg.config_file_name, toml_file=self.cfg.toml_file_name)
        for key, value in self.cfg.get_section(self.cfg.config_ini_section, {}).items():
            cfg.set_main_option(key, _escape(value))
        cfg.attributes.update(connection=conn, configure_logger=False)
        own = conn.engine
        hook = _hook(guard)

        def refuse_foreign(connection, *_args) -> None:
            if connection.engine is not own:
                raise ForeignConnection(
                    f"{os.path.join(self.script.dir, 'env.py')} opened a database connection of its own; a downgrade "
                    "runs only on the module's connection (config.attributes['connection'], see env_py_fix)"
                )

        event.listen(own, "before_cursor_execute", hook, retval=True)
        event.listen(Engine, "engine_connect", refuse_foreign)
        try:
            _run_env(
                cfg,
                self.script,
                fn=lambda rev, _ctx: downgrade_steps(self.script, self.target, rev),
                as_sql=False,
                destination_rev=self.target,
            )
        finally:
            event.remove(Engine, "engine_connect", refuse_foreign)
            event.remove(own, "before_cursor_execute", hook)


def _efcore_tool(job: dict):
    from ansible.module_utils.efcore import EfCoreTool  # noqa: PLC0415 - EF Core jobs only

    return EfCoreTool(job)


TOOLS = {"alembic": AlembicTool, "efcore": _efcore_tool}


def revert_database(job: dict) -> dict:
    """Plan or apply the downgrade of one database. Never raises: failures are in `failed`/`msg`."""
    return revert_with(TOOLS, job)


# -- many databases --------------------------------------------------------------------------------
def database_budget(job: dict) -> float:
    """Seconds one database may take before the watchdog stops its worker: `database_timeout`, else
    the longest a healthy revert can take with the job's settings (connection, advisory lock, every
    attempt at its statement timeout with backoff), plus a minute."""
    if job.get("database_timeout"):
        return float(job["database_timeout"])
    full = {**job_defaults(), **{k: v for k, v in job.items() if v is not None}}
    attempts = int(full["lock_attempts"])
    per_attempt = float(full["statement_timeout"]) + float(full["lock_backoff_max"])
    return float(full["connect_timeout"]) + float(full["advisory_lock_wait"]) + attempts * per_attempt + 60.0


def _lost_database(job: dict, reason: str) -> dict:
    """The result of a database whose worker hung or died: failed, with the state to check."""
    return {
        "name": job.get("name"),
        "changed": False,
        "failed": True,
        "check_mode": bool(job.get("check_mode")),
        "run_id": job.get("run_id"),
        "to_revision": None,
        "attempts": 0,
        "attempt_log": [],
        "lock_wait_seconds": 0.0,
        "msg": redact(
            f"Cannot tell whether the revert finished: {reason}. Its transaction was not committed by this run "
            "unless the database now reports the target revision: read its state (status.yml) before running again.",
            job.get("dsn"),
        ),
    }


def revert_databases(jobs: list[dict], parallel: int = 2, database_timeout: float | None = None) -> list[dict]:
    """revert_database() for every job, at most `parallel` at a time, results in job order.

    With more than one worker, each is a new interpreter (plugins/module_utils/worker_pool.py: no
    fork of this process, whose threads' locks a forked child would inherit), with a watchdog per
    database: a database that takes longer than its budget (`database_timeout`, or
    database_budget()) is reported failed, and every other database is still reverted and reported.
    """
    if database_timeout:
        jobs = [{**job, "database_timeout": database_timeout} for job in jobs]
    workers = max(1, min(int(parallel), len(jobs)))
    if workers == 1:
        return [revert_database(job) for job in jobs]
    return run_jobs(
        "ansible.module_utils.alembic_runner:revert_database", jobs, workers, database_budget, _lost_database
    )


__all__ = [
    "BASE",
    "ENV_PY_FIX",
    "HAS_ALEMBIC",
    "alembic_config",
    "backoff_seconds",
    "check_downgrade",
    "connect",
    "database_budget",
    "heads",
    "job_defaults",
    "load_script",
    "new_run_id",
    "plan",
    "read_revisions",
    "resolve_target",
    "revert_database",
    "revert_databases",
    "validate_job",
]
