# Copyright: contributors to the emergency-rollback runbook
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""An alembic project, read the way the alembic command reads it, for the schema revert.

`alembic_config()`/`load_script()`: the project from `config_file` (an alembic.ini, or a
pyproject.toml with [tool.alembic] as alembic 1.16+ reads it: `script_location`,
`version_locations`, `prepend_sys_path` and the other main options, relative paths taken from the
file's directory) or from `script_location` alone. `plan()`: the SQL of a downgrade as alembic
renders it offline (`as_sql`), with `sqlalchemy.url` set to a bare `postgresql://`, so that no
credentials are needed and any template's env.py (generic, pyproject, async) renders it; the
`multidb` template, which writes one file per database instead, is refused. `version_table()`: the
version table env.py configures. `env_py_reads_connection()`: whether env.py uses the connection a
caller hands it, `config.attributes["connection"]` (alembic's cookbook, "Sharing a Connection across
one or more programmatic migration commands",
https://alembic.sqlalchemy.org/en/latest/cookbook.html#connection-sharing).
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import io
import logging
import os
import re
import sys
from pathlib import Path

try:
    from alembic.config import Config
    from alembic.runtime.environment import EnvironmentContext
    from alembic.script import ScriptDirectory
    from alembic.script.revision import RevisionError
    from alembic.util import CommandError
    from sqlalchemy import event
    from sqlalchemy.engine import Engine
except ImportError:  # pragma: no cover - the modules report missing_required_lib
    Config = EnvironmentContext = ScriptDirectory = event = Engine = None

from ansible.module_utils.pg_session import first_line
from ansible.module_utils.schema_errors import MigrationFailed, RefusedError, SchemaError
from ansible.module_utils.schema_guard import VersionTable

BASE = "base"
OFFLINE_URL = "postgresql://"  # a dialect for offline rendering, no host, no credentials
ENV_PY_FIX = [
    "# in run_migrations_online(), first: use the connection a caller hands in (alembic's cookbook,",
    "# 'Sharing a Connection across one or more programmatic migration commands')",
    'connection = config.attributes.get("connection")',
    "if connection is not None:",
    "    context.configure(connection=connection, target_metadata=target_metadata)",
    "    with context.begin_transaction():",
    "        context.run_migrations()",
    "    return",
]


# -- the project -----------------------------------------------------------------------------------
def _absolute(value: str, base: str) -> str:
    if ":" in value and not os.path.isabs(value) and not value.startswith("."):  # package resource (pkg:path)
        return value
    return value if os.path.isabs(value) else os.path.normpath(os.path.join(base, value))


def _escape(value: str) -> str:
    return value.replace("%", "%%")


def alembic_config(script_location: str, version_locations=None, config_file: str | None = None) -> Config:
    """The project's Config: from `config_file` (alembic.ini or pyproject.toml), or `script_location`."""
    if config_file:
        path = os.path.abspath(config_file)
        if not os.path.isfile(path):
            raise RefusedError(
                f"config_file {config_file} does not exist: give the project's alembic.ini or pyproject.toml."
            )
        base = os.path.dirname(path)
        ini, toml = (None, path) if path.endswith(".toml") else (path, os.path.join(base, "pyproject.toml"))
        if ini is None and os.path.isfile(os.path.join(base, "alembic.ini")):
            ini = os.path.join(base, "alembic.ini")  # alembic's pyproject template keeps the rest there
        if toml and (not os.path.isfile(toml) or b"[tool.alembic]" not in Path(toml).read_bytes()):
            toml = None
        try:
            cfg = Config(file_=ini, toml_file=toml)
            location = cfg.get_alembic_option("script_location")
            versions = cfg.get_version_locations_list()
            prepend = cfg.get_prepend_sys_paths_list()
        except Exception as exc:
            raise RefusedError(f"Cannot read config_file {config_file}: {first_line(exc)}.") from None
        if not location:
            raise RefusedError(
                f"config_file {config_file} has no script_location (in [alembic], or [tool.alembic] of "
                "pyproject.toml): point config_file at the project's alembic configuration."
            )
        cfg.set_main_option("script_location", _escape(_absolute(location, base)))
        # Relative paths are the file's, whatever the module's working directory.
        if versions and not version_locations:
            version_locations = [_absolute(v, base) for v in versions]
        if prepend:
            for entry in reversed([_absolute(p, base) for p in prepend]):
                if entry not in sys.path:
                    sys.path.insert(0, entry)
    else:
        cfg = Config()
        cfg.set_main_option("script_location", _escape(os.path.abspath(script_location)))
    if version_locations:
        cfg.set_main_option("path_separator", "os")
        cfg.set_main_option(
            "version_locations", _escape(os.pathsep.join(os.path.abspath(v) for v in version_locations))
        )
    return cfg


_SCRIPTS: dict[tuple, tuple] = {}
_PLANS: dict[tuple, dict] = {}


def load_project(script_location: str, version_locations=None, config_file: str | None = None) -> tuple:
    """(Config, ScriptDirectory), cached per process (revisions loaded once)."""
    key = (
        os.path.abspath(config_file) if config_file else None,
        os.path.abspath(script_location or "migrations"),
        tuple(os.path.abspath(v) for v in version_locations or ()),
    )
    if key not in _SCRIPTS:
        cfg = alembic_config(script_location, version_locations, config_file)
        location = cfg.get_main_option("script_location")
        if not os.path.isfile(os.path.join(location, "env.py")):
            where = (
                f"config_file {config_file}'s script_location" if config_file else f"script_location {script_location}"
            )
            raise RefusedError(
                f"{where} ({location}) is not an alembic script directory (no env.py): point it at the "
                "project's migrations directory."
            )
        for path in cfg.get_version_locations_list() or ():
            if not os.path.isdir(path):
                raise RefusedError(f"version_locations entry {path} is not a directory.")
        try:
            script = ScriptDirectory.from_config(cfg)
            script.get_heads()  # loads and checks every revision file now
        except (CommandError, RevisionError) as exc:
            raise RefusedError(f"Cannot read the revisions in {location}: {first_line(exc)}") from None
        _SCRIPTS[key] = (cfg, script)
    return _SCRIPTS[key]


def load_script(script_location: str, version_locations=None, config_file: str | None = None) -> ScriptDirectory:
    """The alembic script directory (cached per process)."""
    return load_project(script_location, version_locations, config_file)[1]


def heads(script: ScriptDirectory) -> list[str]:
    return sorted(script.get_heads())


def resolve_target(script: ScriptDirectory, revision: str) -> str:
    """A revision id (or 'base'). Refuses unknown, relative, and with multiple heads symbolic targets."""
    revision = str(revision).strip()
    if revision == BASE:
        return BASE
    if re.fullmatch(r"[+-]\d+", revision) or "@" in revision or ":" in revision:
        raise RefusedError(
            f"revision {revision!r} is relative or a range: give the rollback point's revision id (e.g. 0001_legacy)."
        )
    if revision in ("head", "heads"):
        found = heads(script)
        if len(found) != 1:
            raise RefusedError(
                f"The script directory has multiple heads ({', '.join(found)}), so {revision!r} is ambiguous: "
                "give the target's revision id."
            )
        return found[0]
    try:
        resolved = script.get_revision(revision)
    except (CommandError, RevisionError) as exc:
        raise RefusedError(
            f"Unknown revision {revision!r}: {first_line(exc)}; the script directory has {', '.join(_all_ids(script))}."
        ) from None
    if resolved is None:
        raise RefusedError(f"Unknown revision {revision!r}.")
    return resolved.revision


def _all_ids(script: ScriptDirectory) -> list[str]:
    return [s.revision for s in reversed(list(script.walk_revisions()))]


def ancestors(script: ScriptDirectory, revision: str) -> set[str]:
    """`revision` and every revision below it."""
    return {s.revision for s in script.iterate_revisions(revision, BASE)}


def check_downgrade(script: ScriptDirectory, current: tuple[str, ...], target: str) -> None:
    """Refuse (RefusedError) unless `target` is reached from `current` by downgrades only."""
    for rev in current:
        try:
            script.get_revision(rev)
        except (CommandError, RevisionError):
            raise RefusedError(
                f"The database is at revision {rev}, which the script directory does not contain: "
                "run the rollback with the migrations of the release that is deployed."
            ) from None
    if len(current) > 1:
        raise RefusedError(
            f"The database is at several revisions ({', '.join(current)}) of a branched history, so a downgrade "
            "to one target is ambiguous: revert each branch by hand, or merge the heads first."
        )
    if not current:
        raise RefusedError(f"The database is at base (no revision applied): reaching {target} would be an upgrade.")
    if target == BASE:
        return
    if target not in ancestors(script, current[0]):
        if current[0] in ancestors(script, target):
            raise RefusedError(
                f"Target {target} is newer than the current revision {current[0]}: that would be an upgrade, "
                "which a rollback never does."
            )
        raise RefusedError(
            f"Target {target} is not an ancestor of the current revision {current[0]} (another branch): "
            "choose a revision below the current one."
        )


def downgrade_steps(script: ScriptDirectory, target: str, current: str | None) -> list:
    """alembic's downgrade steps from `current` to `target`, newest first: the `fn` an EnvironmentContext
    runs, exactly as `alembic.command.downgrade` builds it. The ONE call of alembic's private
    `ScriptDirectory._downgrade_revs` (alembic has no public equivalent that returns the steps);
    tests/unit/test_alembic_project.py pins its behaviour against `command.downgrade`'s output."""
    return script._downgrade_revs(target, current)


# -- the database's revision ---------------------------------------------------------------------
def read_revisions(cursor, version: VersionTable | None = None) -> tuple[str, ...] | None:
    """The revisions in the version table (empty at base), or None without that table."""
    version = version or VersionTable("alembic_version")
    cursor.execute("SELECT to_regclass(%s) IS NOT NULL", (version.qualified,))
    if not cursor.fetchone()[0]:
        return None
    cursor.execute(f"SELECT version_num FROM {version.qualified} ORDER BY version_num")  # noqa: S608 - quoted name
    return tuple(row[0] for row in cursor.fetchall())


def current_revisions(cursor, version: VersionTable | None = None) -> tuple[str, ...]:
    """The revisions in the version table; RefusedError if the table is missing."""
    found = read_revisions(cursor, version)
    if found is None:
        raise RefusedError(
            f"The database has no {(version or VersionTable('alembic_version')).name} table: it is not managed by "
            "these migrations (wrong database, or never deployed); nothing to revert."
        )
    return found


# -- running the project's env.py --------------------------------------------------------------------
@contextlib.contextmanager
def _contained():
    """env.py may call logging.config.fileConfig and print: keep both out of the module's process."""
    root = logging.getLogger()
    saved_root = (root.level, list(root.handlers))
    saved = {
        name: (lg.disabled, lg.level, list(lg.handlers), lg.propagate)
        for name, lg in logging.Logger.manager.loggerDict.items()
        if isinstance(lg, logging.Logger)
    }
    sink = io.StringIO()
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            yield sink
    finally:
        root.setLevel(saved_root[0])
        root.handlers[:] = saved_root[1]
        for name, lg in list(logging.Logger.manager.loggerDict.items()):
            if isinstance(lg, logging.Logger):
                disabled, level, handlers, propagate = saved.get(name, (False, logging.NOTSET, [], True))
                lg.disabled, lg.level, lg.handlers[:], lg.propagate = disabled, level, handlers, propagate


def _run_env(cfg: Config, script: ScriptDirectory, **kw):
    """Run env.py under an EnvironmentContext; returns its MigrationContext (None if never configured)."""
    with _contained(), EnvironmentContext(cfg, script, **kw) as env:
        try:
            script.run_env()
        except SystemExit as exc:  # env.py exits when it misses a setting
            raise RefusedError(f"the project's env.py stopped: {first_line(exc)}") from None
        try:
            return env.get_context()
        except Exception:
            return None


class ForeignConnection(MigrationFailed):
    """env.py opened a connection of its own while a migration ran on the module's connection."""


def run_on_connection(project: Config, script: ScriptDirectory, conn, *, fn, destination: str, what: str) -> None:
    """Run env.py online on the caller's connection, inside the caller's transaction (`fn`: alembic's steps
    to `destination`): env.py gets the connection in config.attributes, and any connection of its own is
    refused (ForeignConnection) before its first statement; `what` says which migration ("a downgrade")."""
    cfg = Config(file_=project.config_file_name, toml_file=project.toml_file_name)
    for key, value in project.get_section(project.config_ini_section, {}).items():
        cfg.set_main_option(key, _escape(value))
    cfg.attributes.update(connection=conn, configure_logger=False)
    own = conn.engine

    def refuse_foreign(connection, *_args) -> None:
        if connection.engine is not own:
            raise ForeignConnection(
                f"{os.path.join(script.dir, 'env.py')} opened a database connection of its own; {what} runs only "
                "on the module's connection (config.attributes['connection'], see env_py_fix)"
            )

    event.listen(Engine, "engine_connect", refuse_foreign)
    try:
        _run_env(cfg, script, fn=fn, as_sql=False, destination_rev=destination)
    finally:
        event.remove(Engine, "engine_connect", refuse_foreign)


def _offline_config(job_cfg: Config, **attributes) -> Config:
    buffer = io.StringIO()
    cfg = Config(file_=job_cfg.config_file_name, toml_file=job_cfg.toml_file_name, output_buffer=buffer, stdout=buffer)
    for key, value in job_cfg.get_section(job_cfg.config_ini_section, {}).items():
        if key in ("script_location", "version_locations", "path_separator"):
            cfg.set_main_option(key, _escape(value))
    cfg.set_main_option("sqlalchemy.url", OFFLINE_URL)  # no credentials: nothing connects offline
    cfg.attributes["configure_logger"] = False
    cfg.attributes.update(attributes)
    return cfg


_VERSION_TABLES: dict[int, VersionTable] = {}


def version_table(cfg: Config, script: ScriptDirectory) -> VersionTable:
    """The version table env.py configures (version_table, version_table_schema), from an offline run."""
    if id(script) not in _VERSION_TABLES:
        _VERSION_TABLES[id(script)] = _version_table(cfg, script)
    return _VERSION_TABLES[id(script)]


def _version_table(cfg: Config, script: ScriptDirectory) -> VersionTable:
    databases = cfg.get_main_option("databases")
    if databases:
        raise RefusedError(
            f"The alembic project is the multidb template (databases = {databases}): its env.py migrates several "
            "databases at once with their own connections, while schema_migration reverts one database per call "
            "on its own guarded connection; give each database an alembic configuration of its own"
        )
    try:
        context = _run_env(_offline_config(cfg), script, fn=lambda _rev, _ctx: [], as_sql=True)
    except SchemaError:
        raise
    except Exception as exc:
        raise RefusedError(
            f"The project's env.py fails in offline mode: {type(exc).__name__}: {first_line(exc)}"
        ) from None
    if context is None:
        return VersionTable("alembic_version")
    return VersionTable(context.version_table, context.version_table_schema)


def plan(script: ScriptDirectory, current: str, target: str, cfg: Config | None = None) -> dict:
    """steps, the exact SQL alembic renders for the range (offline mode), and its sha256. Cached."""
    cfg = cfg or alembic_config(script.dir)
    key = (id(script), current, target)
    if key not in _PLANS:
        steps = [
            {"revision": s.revision.revision, "down_revision": s.revision.down_revision, "doc": s.doc}
            for s in downgrade_steps(script, target, current)
        ]
        offline = _offline_config(cfg)
        try:
            _run_env(
                offline,
                script,
                fn=lambda rev, _ctx: downgrade_steps(script, target, rev),
                as_sql=True,
                starting_rev=current,
                destination_rev=target,
            )
        except SchemaError:
            raise
        except Exception as exc:
            raise RefusedError(
                f"The project's env.py fails in offline mode, so the plan cannot be rendered: {type(exc).__name__}: "
                f"{first_line(exc)}"
            ) from None
        sql = offline.output_buffer.getvalue()
        if steps and not sql.strip():
            raise RefusedError(
                "alembic rendered no SQL for the downgrade: the project's env.py writes it elsewhere (as alembic's "
                "multidb template does, one file per database); use an env.py that renders to alembic's output"
            )
        _PLANS[key] = {"steps": steps, "sql": sql, "sql_sha256": hashlib.sha256(sql.encode()).hexdigest()}
    return dict(_PLANS[key])


def env_py_reads_connection(path: str) -> bool:
    """Whether env.py reads config.attributes["connection"] (or .get("connection")) anywhere."""
    try:
        tree = ast.parse(Path(path).read_text())
    except (OSError, SyntaxError):
        return False
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and _is_attributes(node.value) and _is_connection(node.slice):
            return True
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "get"
            and _is_attributes(node.func.value)
            and node.args
            and _is_connection(node.args[0])
        ):
            return True
    return False


def _is_attributes(node) -> bool:
    return isinstance(node, ast.Attribute) and node.attr == "attributes"


def _is_connection(node) -> bool:
    return isinstance(node, ast.Constant) and node.value == "connection"
