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
    from sqlalchemy import event

    HAS_ALEMBIC = True
except ImportError:  # pragma: no cover - the module reports missing_required_lib
    HAS_ALEMBIC = False

from ansible.module_utils.pg_session import connect
from ansible.module_utils.schema_alembic import (
    BASE,
    ENV_PY_FIX,
    ForeignConnection,
    alembic_config,
    check_downgrade,
    current_revisions,
    downgrade_steps,
    env_py_reads_connection,
    heads,
    load_project,
    load_script,
    plan,
    read_revisions,
    resolve_target,
    run_on_connection,
    version_table,
)
from ansible.module_utils.schema_errors import MigrationFailed, RefusedError
from ansible.module_utils.schema_jobs import backoff_seconds, database_budget, lost_result, run_databases
from ansible.module_utils.schema_revert import job_defaults, new_run_id, revert_with, validate_job
from ansible.module_utils.sql_analysis import SqlAnalysisError, analyze


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
        self.cfg, self.script = load_project(
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
        own = conn.engine
        hook = _hook(guard)
        event.listen(own, "before_cursor_execute", hook, retval=True)
        try:
            run_on_connection(
                self.cfg,
                self.script,
                conn,
                fn=lambda rev, _ctx: downgrade_steps(self.script, self.target, rev),
                destination=self.target,
                what="a downgrade",
            )
        finally:
            event.remove(own, "before_cursor_execute", hook)


def _efcore_tool(job: dict):
    from ansible.module_utils.efcore import EfCoreTool  # noqa: PLC0415 - EF Core jobs only

    return EfCoreTool(job)


TOOLS = {"alembic": AlembicTool, "efcore": _efcore_tool}


def revert_database(job: dict) -> dict:
    """Plan or apply the downgrade of one database. Never raises: failures are in `failed`/`msg`."""
    return revert_with(TOOLS, job)


# -- many databases --------------------------------------------------------------------------------
def _lost_database(job: dict, reason: str) -> dict:
    return lost_result(job, reason, "revert")


def revert_databases(jobs: list[dict], parallel: int = 2, database_timeout: float | None = None) -> list[dict]:
    """revert_database() for every job, at most `parallel` at a time, results in job order: with more than
    one worker, each in a new interpreter under a watchdog (schema_jobs.run_databases)."""
    return run_databases(
        "ansible.module_utils.alembic_runner:revert_database",
        revert_database,
        jobs,
        parallel=parallel,
        database_timeout=database_timeout,
        lost=_lost_database,
    )


__all__ = [
    "BASE",
    "ENV_PY_FIX",
    "HAS_ALEMBIC",
    "ForeignConnection",
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
