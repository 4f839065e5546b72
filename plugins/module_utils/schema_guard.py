# Copyright: contributors to the emergency-rollback runbook
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The guard around a downgrade's statements: the plan's promise, the archive before each removal,
and the reconciliation before COMMIT.

`assess()` is THE decision for one statement, used by the plan (check mode: every statement of the
rendered SQL, resolved against the catalog now) and by the apply (`Guard.before`, on every statement
alembic or the EF Core script executes, just before it runs):
- the rows it removes (`schema_catalog.removals`): archivable ones are copied first (`Archiver`);
- statements that remove or rewrite rows by other means, and calls of functions that may write:
  listed as `data_statements`; refused (naming the statement and what to accept) unless archived
  (a plain DELETE/UPDATE ... WHERE, TRUNCATE, a column type change) or accepted by the operator as
  `<revision>:<sha256 of the statement>` for that very revision;
- transaction control: the downgrade runs in the module's one transaction, so a statement that ends
  it (COMMIT, ROLLBACK, ...) is refused; the migration tool's own BEGIN/COMMIT around each step of
  an offline script (alembic's, EF Core's START TRANSACTION/COMMIT) are recognised by position.

Before COMMIT, `Guard.reconcile()` compares, and any difference fails the attempt (rolled back):
1. what the plan promised (its removals, resolved at the start of the attempt) with what was
   archived (tables, columns, actions);
2. PostgreSQL's catalog before and after: every table, materialized view and column that is gone
   must have been seen (and archived) on its way out, whatever executed the drop;
3. PostgreSQL's statistics of the transaction (pg_stat_xact_user_tables): the rows deleted and
   updated in each table must be the rows archived, and a table rewritten or emptied (a new
   relfilenode) must have been archived; differences are allowed only after an accepted
   statement ran, and are then reported as `accepted_effects`;
4. the archive: each copy holds the rows its manifest row says.
"""

from __future__ import annotations

from dataclasses import dataclass

from ansible.module_utils.schema_catalog import (
    ACTIONS,
    Removal,
    count_rows,
    function_risk,
    removals,
    snapshot,
    table_tree_oids,
    xact_counters,
)
from ansible.module_utils.schema_errors import MigrationFailed, RefusedError
from ansible.module_utils.sql_analysis import Statement

_DATA_ACTIONS = (ACTIONS["truncate"], ACTIONS["delete"], ACTIONS["update"], ACTIONS["alter_type"])
_DROPPED = (ACTIONS["table"], ACTIONS["matview"])
_IN_TRANSACTION = ("SAVEPOINT", "RELEASE", "ROLLBACK_TO")


@dataclass(frozen=True)
class VersionTable:
    """The migration tool's bookkeeping table (alembic_version, "__EFMigrationsHistory")."""

    name: str
    schema: str | None = None

    def matches(self, target: tuple[str, ...] | None) -> bool:
        if not target or target[-1] != self.name:
            return False
        return len(target) == 1 or target[-2] == (self.schema or "public")

    @property
    def qualified(self) -> str:
        return ".".join('"' + p.replace('"', '""') + '"' for p in (self.schema, self.name) if p)


class Steps:
    """Which revision a statement belongs to: a step ends with its UPDATE/DELETE of the version table."""

    def __init__(self, revisions: list[str], version: VersionTable):
        self.revisions, self.version, self.index = list(revisions), version, 0

    @property
    def revision(self) -> str | None:
        return self.revisions[min(self.index, len(self.revisions) - 1)] if self.revisions else None

    def is_version(self, stmt: Statement) -> bool:
        return self.version.matches(stmt.version_target)

    def passed(self, stmt: Statement) -> None:
        if self.is_version(stmt) and stmt.version_op in ("UPDATE", "DELETE"):
            self.index += 1


@dataclass
class Assessment:
    removals: list[Removal]
    data: dict | None  # the data_statements entry, for statements that remove rows by other means
    refused: str | None  # the refusal sentence, if refused


def accept_key(revision: str | None, sha256: str) -> str:
    return f"{revision}:{sha256}"


def assess(cursor, stmt: Statement, revision: str | None, accepted: set[str]) -> Assessment:
    """The one decision about a statement (see the module docstring)."""
    found: list[Removal] = []
    reasons: list[str] = []
    for effect in stmt.effects:
        if effect.kind == "unsafe":
            reasons.append(effect.reason)
            continue
        for removal in removals(cursor, effect):
            reason = f"{removal.source}: {removal.reason}"
            if removal.archivable:
                found.append(removal)
            elif reason not in reasons:
                reasons.append(reason)
    for name in stmt.functions:
        risk = function_risk(cursor, name)
        if risk:
            reasons.append(risk)
    data = None
    if reasons or any(r.action in _DATA_ACTIONS for r in found):
        key = accept_key(revision, stmt.sha256)
        data = {
            "revision": revision,
            "sha256": stmt.sha256,
            "statement": stmt.short,
            "archived": not reasons,
            "accepted": bool(reasons) and key in accepted,
            "reasons": reasons,
        }
    refused = None
    if reasons and not data["accepted"]:
        refused = (
            f"revision {revision} runs `{stmt.short}`, which removes or rewrites rows the archive cannot preserve "
            f"({reasons[0]}); accept exactly this statement with {accept_key(revision, stmt.sha256)} "
            "(rollback_accept_data_statements, recorded in the audit), or change the migration"
        )
    return Assessment(found, data, refused)


def _transaction_problem(stmt: Statement, previous: Statement | None, steps: Steps) -> str | None:
    """A transaction statement of an offline script that is not the tool's own BEGIN/COMMIT of a step."""
    kind = stmt.transaction
    if kind in ("BEGIN", "START"):
        return None
    if kind in ("COMMIT", "END") and (previous is None or steps.is_version(previous)):
        return None
    return (
        f"revision {steps.revision} runs `{stmt.short}` inside its downgrade, which would end the transaction "
        "halfway (a migration that commits, alembic's autocommit_block, EF Core's suppressed transaction around "
        "e.g. CREATE INDEX CONCURRENTLY): the revert must be one transaction; move that statement out of the "
        "migration"
    )


def check_plan(cursor, statements: list[Statement], steps: Steps, accepted: set[str], count: bool = True) -> dict:
    """The plan's promise: {drops, data_statements, refusals, planned}. Reads the catalog only."""
    drops, data_statements, refusals, planned = [], [], [], []
    previous = None
    for stmt in statements:
        if stmt.transaction:
            problem = _transaction_problem(stmt, previous, steps)
            if problem:
                refusals.append(problem)
            continue
        if steps.is_version(stmt):
            steps.passed(stmt)
            previous = stmt
            continue
        previous = stmt
        assessment = assess(cursor, stmt, steps.revision, accepted)
        if assessment.data:
            data_statements.append(assessment.data)
        if assessment.refused:
            refusals.append(assessment.refused)
        for removal in assessment.removals:
            planned.append(removal)
            if removal.optional and removal.oid is None:
                continue  # IF EXISTS of an object that is not there now
            rows = count_rows(cursor, removal) if count else None
            drops.append(
                {
                    "schema": removal.schema,
                    "table": removal.table,
                    "column": removal.column,
                    "rows": rows,
                    "action": removal.action,
                    "revision": steps.revision,
                }
            )
    return {"drops": drops, "data_statements": data_statements, "refusals": refusals, "planned": planned}


def refusal_message(refusals: list[str]) -> str:
    more = f" (and {len(refusals) - 1} more, see data_statements)" if len(refusals) > 1 else ""
    return f"Refused: {refusals[0]}{more}; nothing was changed."


class Guard:
    """One apply attempt: `begin()` after SET LOCAL, `before(stmt)` before every statement, `reconcile()`
    before COMMIT. Raises RefusedError/MigrationFailed; the caller rolls back."""

    def __init__(self, conn, archiver, steps: Steps, accepted: set[str], planned_statements: list[Statement]):
        self.conn, self.archiver, self.steps, self.accepted = conn, archiver, steps, accepted
        self.planned_statements = planned_statements
        self.planned: list[Removal] = []
        self.seen: list[tuple[Removal, dict]] = []
        self.data_statements: list[dict] = []
        self.accepted_ran = False
        self.accepted_effects: list[dict] = []
        self.rewritten: set[int] = set()  # tables an ALTER TABLE touched
        self.truncated: set[int] = set()  # tables truncated (and archived): their counters restart
        self.captured: dict[int, tuple[int, int]] = {}
        self._start: dict = {}
        self._counters: dict = {}
        self._version_oid = None

    def begin(self) -> None:
        with self.conn.cursor() as cur:
            plan_steps = Steps(self.steps.revisions, self.steps.version)
            self.planned = check_plan(cur, self.planned_statements, plan_steps, self.accepted, count=False)["planned"]
            self._start = snapshot(cur)
            self._counters = xact_counters(cur)
            cur.execute("SELECT to_regclass(%s)::oid", (self.steps.version.qualified,))
            self._version_oid = cur.fetchone()[0]

    def before(self, stmt: Statement) -> None:
        if stmt.transaction:
            # Online, nothing may end the transaction; a BEGIN inside it is only a warning of PostgreSQL's.
            problem = None if stmt.transaction in _IN_TRANSACTION else _transaction_problem(stmt, stmt, self.steps)
            if problem:
                raise RefusedError(problem)
            return
        if self.steps.is_version(stmt):
            self.steps.passed(stmt)
            return
        revision = self.steps.revision
        with self.conn.cursor() as cur:
            assessment = assess(cur, stmt, revision, self.accepted)
            if assessment.refused:
                raise RefusedError(assessment.refused)
            if assessment.data:
                self.data_statements.append(assessment.data)
                self.accepted_ran = self.accepted_ran or assessment.data["accepted"]
            if stmt.altered:  # ALTER TABLE may rewrite the table (a new relfilenode), keeping its rows
                self.rewritten.update(table_tree_oids(cur, stmt.altered))
            for removal in assessment.removals:
                if removal.oid is None:
                    continue  # not there: the statement has IF EXISTS, or fails
                if removal.action in _DROPPED:
                    self.captured.update(xact_counters(cur, [removal.oid]))
                if removal.action == ACTIONS["truncate"]:
                    self.truncated.add(removal.oid)
                self.seen.append((removal, self.archiver.archive(removal, revision, stmt.sha256)))

    # -- before COMMIT ---------------------------------------------------------------------------
    def reconcile(self) -> None:
        problems = self._against_plan()
        with self.conn.cursor() as cur:
            end = snapshot(cur)
            counters = xact_counters(cur)
        problems += self._against_catalog(end)
        problems += self._against_statistics(end, counters)
        problems += self.archiver.verify()
        if problems:
            more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
            raise MigrationFailed(
                "the archive does not match what left the database: " + "; ".join(problems[:3]) + more
            )

    def _against_plan(self) -> list[str]:
        seen = [removal for removal, _entry in self.seen]
        unmatched = list(seen)
        problems = []
        for promised in self.planned:
            match = next((s for s in unmatched if promised.matches(s)), None)
            if match is not None:
                unmatched.remove(match)
            elif not promised.optional and promised.oid is not None:
                problems.append(f"the plan promised {promised.describe()}, which the downgrade did not remove")
        problems += [f"{s.describe()} was removed but is not in the plan" for s in unmatched]
        return problems

    def _against_catalog(self, end: dict) -> list[str]:
        seen_tables = {r.oid for r, _e in self.seen if r.action in _DROPPED}
        seen_columns = {(r.oid, r.column) for r, _e in self.seen if r.action == ACTIONS["column"]}
        problems = []
        for oid, (schema, name, relkind, _node) in self._start["relations"].items():
            if oid not in end["relations"] and relkind in ("r", "m") and oid not in seen_tables:
                problems.append(self._unseen(f"{schema}.{name}", "was dropped without the archive seeing it"))
        for (oid, attnum), column in self._start["columns"].items():
            if oid in end["relations"] and (oid, attnum) not in end["columns"] and (oid, column) not in seen_columns:
                schema, name = self._start["relations"][oid][:2]
                problems.append(self._unseen(f"{schema}.{name}.{column}", "was dropped without the archive seeing it"))
        return [p for p in problems if p]

    def _unseen(self, what: str, problem: str) -> str | None:
        if self.accepted_ran:
            self.accepted_effects.append({"table": what, "dropped": True})
            return None
        return f"{what} {problem}"

    def _against_statistics(self, end: dict, counters: dict) -> list[str]:
        if not self.archiver.enabled:
            return []
        expected: dict[int, list[int]] = {}
        for removal, entry in self.seen:
            if removal.action in (ACTIONS["update"], ACTIONS["delete"]):
                slot = 0 if removal.action == ACTIONS["update"] else 1
                expected.setdefault(removal.oid, [0, 0])[slot] += entry["rows"] or 0
        problems = []
        for oid, (schema, name, relkind, filenode) in self._start["relations"].items():
            if relkind != "r" or oid == self._version_oid:
                continue
            now = counters.get(oid) if oid in end["relations"] else self.captured.get(oid)
            if now is None:
                continue  # dropped unseen: reported by the catalog check
            base = self._counters.get(oid, (0, 0))
            updated, deleted = now[0] - base[0], now[1] - base[1]
            want = expected.get(oid, [0, 0])
            rewritten = oid in end["relations"] and end["relations"][oid][3] != filenode
            label = f"{schema}.{name}"
            if oid not in self.truncated and (updated, deleted) != tuple(want):
                if self.accepted_ran:
                    self.accepted_effects.append(
                        {
                            "table": label,
                            "rows_deleted": max(deleted - want[1], 0),
                            "rows_updated": max(updated - want[0], 0),
                        }
                    )
                else:
                    problems.append(
                        f"{label} had {deleted} row(s) deleted and {updated} updated, the archive holds {want[1]} and "
                        f"{want[0]}"
                    )
            if rewritten and oid not in self.rewritten and oid not in self.truncated:
                if self.accepted_ran:
                    self.accepted_effects.append({"table": label, "rewritten": True})
                else:
                    problems.append(f"{label} was emptied or rewritten by a statement the archive did not see")
        return problems

    def result(self) -> dict:
        return {"data_statements": self.data_statements, "accepted_effects": self.accepted_effects}
