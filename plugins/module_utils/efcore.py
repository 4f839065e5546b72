# Copyright: contributors to the emergency-rollback runbook
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The schema revert of an EF Core-managed PostgreSQL database, from a down script.

An EF Core shop produces its rollback SQL in its pipeline with
`dotnet ef migrations script <Current> <Previous>` (https://learn.microsoft.com/ef/core/managing-schemas/
migrations/applying#sql-scripts): reviewable, the same artifact for every environment. For PostgreSQL
(Npgsql provider, EF Core 8) a down script is, per migration, newest first (EF Core's
Migrator.GenerateScript and HistoryRepository.GetDeleteScript, dotnet/efcore v8.0.30):

    START TRANSACTION;
    <the migration's Down() operations, each `...;` followed by a blank line>
    DELETE FROM "__EFMigrationsHistory"
    WHERE "MigrationId" = '<id>';
    COMMIT;

`EfCoreTool` is the EF Core side of schema_revert's flow (the same lock, plan check, guard, archive,
retries and reconciliation as alembic). It reads the applied migrations from "__EFMigrationsHistory",
and accepts the script only if it reverts exactly from the newest applied migration to the target:
the history rows it deletes, in order, must be every applied migration above the target, newest
first. Refused: an up script (it inserts history rows, or creates the history table), an idempotent
script (`--idempotent` wraps every command in a DO block on the history), another range, a history
that does not match, statements outside EF's transactions (EF suppresses the transaction for e.g.
CREATE INDEX CONCURRENTLY, which cannot run in the module's one transaction). EF's own
START TRANSACTION;/COMMIT; are stripped: the whole script runs in the module's transaction. The
plan's SQL is the script as written, and its sha256 the file's.
"""

from __future__ import annotations

import hashlib
import os

from ansible.module_utils.schema_errors import RefusedError
from ansible.module_utils.schema_guard import VersionTable
from ansible.module_utils.sql_analysis import SqlAnalysisError, analyze

HISTORY = VersionTable("__EFMigrationsHistory")
INITIAL = "0"  # EF Core's name for the empty database (Migration.InitialDatabase)


def read_history(cursor) -> list[str] | None:
    """The applied MigrationIds, oldest first (EF orders them by id), or None without the history table."""
    cursor.execute("SELECT to_regclass(%s) IS NOT NULL", (HISTORY.qualified,))
    if not cursor.fetchone()[0]:
        return None
    cursor.execute(f'SELECT "MigrationId" FROM {HISTORY.qualified} ORDER BY "MigrationId"')  # noqa: S608 - constant
    return [row[0] for row in cursor.fetchall()]


def read_history_revisions(cursor) -> tuple[str, ...] | None:
    """schema_state's revision of an EF Core database: (newest applied MigrationId,), () when none."""
    history = read_history(cursor)
    if history is None:
        return None
    return (history[-1],) if history else ()


def _history_literal(stmt) -> str | None:
    """The MigrationId a history DELETE/INSERT names (its one string literal)."""
    import re  # noqa: PLC0415

    found = re.findall(r"'((?:[^']|'')*)'", stmt.text)
    return found[0].replace("''", "'") if found else None


def read_script(path: str | None) -> tuple[str, str]:
    """(text, sha256 of the file's bytes); RefusedError for a missing or unreadable file."""
    if not path:
        raise RefusedError(
            "tool efcore needs script: the down script of `dotnet ef migrations script <Current> <Previous>`."
        )
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise RefusedError(f"Cannot read the EF Core script {path}: {exc.strerror}.") from None
    return data.decode("utf-8-sig"), hashlib.sha256(data).hexdigest()


def history_heads(path: str | None) -> list[str]:
    """schema_state's heads for EF Core: the newest migration the script names (none without a script)."""
    if not path:
        return []
    text, _sha = read_script(path)
    try:
        statements = analyze(text)
    except SqlAnalysisError as exc:
        raise RefusedError(f"The EF Core script {path} cannot be parsed: {exc}.") from None
    named = [_history_literal(s) for s in statements if HISTORY.matches(s.version_target)]
    return [max(n for n in named if n)] if any(named) else []


class EfCoreTool:
    """The EF Core side of schema_revert's flow (see the module docstring)."""

    def __init__(self, job: dict):
        self.job = job
        self.path = job.get("script")
        self.history: list[str] = []
        self.text = self.sha256 = self.target = None
        self.statements = []

    def load(self) -> str:
        self.text, self.sha256 = read_script(self.path)
        try:
            self.statements = analyze(self.text)
        except SqlAnalysisError as exc:
            raise RefusedError(f"The EF Core script {self.path} cannot be parsed: {exc}.") from None
        self.target = str(self.job["revision"]).strip()
        self._check_shape()
        return self.target

    def _check_shape(self) -> None:
        name = os.path.basename(self.path)
        for stmt in self.statements:
            if stmt.node == "DoStmt" and HISTORY.name in stmt.text:
                raise RefusedError(
                    f"{name} is an idempotent script (--idempotent): generate the plain down script with "
                    "`dotnet ef migrations script <Current> <Previous>` and run again."
                )
            if stmt.node == "CreateStmt" and stmt.text.find(HISTORY.name) >= 0:
                raise RefusedError(
                    f"{name} creates the migrations history: it is an up script from an empty database, not a down "
                    "script."
                )
            if HISTORY.matches(stmt.version_target) and stmt.version_op == "INSERT":
                raise RefusedError(
                    f"{name} inserts into {HISTORY.name} ({_history_literal(stmt)}): it is an up script; the "
                    "rollback needs `dotnet ef migrations script <Current> <Previous>`."
                )
        if not self.deleted:
            raise RefusedError(f"{name} deletes no row of {HISTORY.name}: it is not an EF Core down script.")

    @property
    def deleted(self) -> list[str]:
        """The MigrationIds the script's history DELETEs remove, in the script's order."""
        return [
            _history_literal(s)
            for s in self.statements
            if HISTORY.matches(s.version_target) and s.version_op == "DELETE"
        ]

    def read_current(self, cursor) -> tuple[str, ...]:
        history = read_history(cursor)
        if history is None:
            raise RefusedError(
                f"The database has no {HISTORY.name} table: it is not managed by EF Core migrations (wrong "
                "database, or never deployed); nothing to revert."
            )
        self.history = history
        return (history[-1],) if history else ()

    def at_target(self, current: tuple[str, ...]) -> bool:
        return (not current and self.target == INITIAL) or current == (self.target,)

    def check_downgrade(self, current: tuple[str, ...]) -> None:
        if self.target != INITIAL and self.target not in self.history:
            raise RefusedError(
                f"Target {self.target} is not an applied migration of this database (its history holds "
                f"{', '.join(self.history) or 'nothing'}): give the MigrationId to return to."
            )
        expected = sorted((m for m in self.history if self.target == INITIAL or m > self.target), reverse=True)
        deleted = self.deleted
        if deleted != expected:
            raise RefusedError(
                f"{os.path.basename(self.path)} reverts {', '.join(deleted)}, but going from {current[0]} to "
                f"{self.target} reverts {', '.join(expected)}: generate it with `dotnet ef migrations script "
                f"{current[0]} {self.target}` for this database."
            )

    def plan(self, current: tuple[str, ...]) -> dict:
        steps, ids = [], self.deleted
        for index, migration in enumerate(ids):
            down = ids[index + 1] if index + 1 < len(ids) else (None if self.target == INITIAL else self.target)
            steps.append({"revision": migration, "down_revision": down, "doc": f"EF Core migration {migration}"})
        return {
            "steps": steps,
            "sql": self.text,
            "sql_sha256": self.sha256,
            "statements": self.statements,
            "revisions": ids,
            "version": HISTORY,
        }

    def check_apply(self) -> None:
        """Nothing more: the plan check refused statements outside EF's own transactions."""

    def run(self, conn, guard) -> None:
        """The script's statements, EF's START TRANSACTION/COMMIT stripped, each through the guard."""
        raw = conn.connection.driver_connection
        with raw.cursor() as cursor:
            for stmt in self.statements:
                if stmt.transaction in ("BEGIN", "START", "COMMIT", "END"):
                    continue  # EF's own, around each migration: the module's one transaction replaces them
                guard.before(stmt)
                cursor.execute(stmt.text)
