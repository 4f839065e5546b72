# Copyright: contributors to the emergency-rollback runbook
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""One archive entry staged for its restore: the archived rows in a temporary table, cast back to the
column types of now, and the conflicts found so far (see schema_restore.py for the whole restore).

A value the type no longer accepts (`pg_input_is_valid`, PostgreSQL 16) is kept out of the stage and
reported (`invalid_value`); a staged row that would break a foreign key (`missing_reference`) or a
unique index (`duplicate_unique`) is found by `_blocked()`. Conflicts carry kind, count and at most
MAX_KEYS keys, never a row's contents.
"""

from __future__ import annotations

try:
    from psycopg2 import sql as pgsql
except ImportError:  # pragma: no cover - the module reports missing_required_lib
    pgsql = None

from ansible.module_utils.restore_catalog import (
    all_of,
    any_of,
    foreign_keys,
    match,
    qualified,
    render_key,
    unique_indexes,
)
from ansible.module_utils.restore_manifest import ARCHIVE_SCHEMA, DROP_COLUMN, DROP_TABLE, MAX_KEYS, describe_entry


class Unrestorable(Exception):
    """None of an entry's rows can be restored (kind, note): every archived row is a conflict."""

    def __init__(self, kind: str, note: str):
        super().__init__(note)
        self.kind, self.note = kind, note


class StagedEntry:
    """The state and the staging of one manifest entry's restore; schema_restore._Entry does the restore."""

    def __init__(self, cursor, entry: dict, *, apply: bool, fresh_columns: set, stage_name: str):
        self.cur, self.entry, self.apply = cursor, entry, apply
        self.fresh_columns = fresh_columns
        self.column = entry.get("source_column")
        self.action = entry.get("action") or (DROP_COLUMN if self.column else DROP_TABLE)
        self.values: list[str] | None = None  # the columns written back by key (column and value modes)
        self.archive = pgsql.Identifier(ARCHIVE_SCHEMA, entry["archive_table"])
        self.stage = pgsql.Identifier("pg_temp", stage_name)
        self.report = {
            "id": entry["id"],
            "run_id": entry["run_id"],
            "source": describe_entry(entry),
            "schema": entry["source_schema"],
            "table": entry["source_table"],
            "column": self.column,
            "action": self.action,
            "archive_table": f'{ARCHIVE_SCHEMA}."{entry["archive_table"]}"',
            "archived_rows": entry["row_count"],
            "restored": 0,
            "already_present": 0,
            "conflict_rows": 0,
            "conflicts": [],
            "predicted": False,
            "note": "",
            "outcome": "",
        }

    def _count(self, statement, params=()) -> int:
        self.cur.execute(statement, params)
        return int(self.cur.fetchone()[0])

    def _keys(self, source, alias: str, keys: list[str], condition) -> list[str]:
        if not keys:
            return []
        columns = pgsql.SQL(", ").join(
            pgsql.SQL("{}.{}::text").format(pgsql.SQL(alias), pgsql.Identifier(k)) for k in keys
        )
        order = pgsql.SQL(", ").join(pgsql.SQL("{}.{}").format(pgsql.SQL(alias), pgsql.Identifier(k)) for k in keys)
        self.cur.execute(
            pgsql.SQL("SELECT {} FROM {} {} WHERE {} ORDER BY {} LIMIT {}").format(
                columns, source, pgsql.SQL(alias), condition, order, pgsql.Literal(MAX_KEYS)
            )
        )
        return [render_key(keys, row) for row in self.cur.fetchall()]

    def conflict(self, kind: str, rows: int, keys: list[str] | None = None, **detail) -> None:
        if rows:
            self.report["conflicts"].append({"kind": kind, "rows": rows, "keys": keys or [], **detail})

    def _blocking(self, kind: str, present, condition, constraint: str):
        """`condition`, after recording as a conflict of `kind` the staged rows (of those `present`) it holds for."""
        where = pgsql.SQL("{} AND {}").format(present, condition)
        rows = self._count(pgsql.SQL("SELECT count(*) FROM {} s WHERE {}").format(self.stage, where))
        keys = self._keys(self.stage, "s", self.keys, where) if rows else []
        self.conflict(kind, rows, keys, constraint=constraint)
        return condition

    def _stage(self, archive_columns: dict, target_columns: dict, columns: list[str]) -> None:
        """CREATE the staging table: `columns` of the archive, cast to the table's types, valid rows only."""
        exprs, checks = [], []
        for name in columns:
            ident = pgsql.Identifier(name)
            source_type = archive_columns[name]["type"]
            target_type = target_columns[name]["type"] if name in target_columns else source_type
            if source_type == target_type:
                exprs.append(pgsql.SQL("a.{}").format(ident))
                continue
            exprs.append(pgsql.SQL("CAST(a.{}::text AS {}) AS {}").format(ident, pgsql.SQL(target_type), ident))
            checks.append(
                (
                    name,
                    pgsql.SQL("(a.{} IS NULL OR pg_input_is_valid(a.{}::text, {}))").format(
                        ident, ident, pgsql.Literal(target_type)
                    ),
                )
            )
        valid = all_of([check for _name, check in checks])
        self.entry_invalid = 0
        for name, check in checks:
            rows = self._count(pgsql.SQL("SELECT count(*) FROM {} a WHERE NOT {}").format(self.archive, check))
            if rows:
                keys = self._keys(self.archive, "a", self.keys, pgsql.SQL("NOT ") + check)
                self.conflict("invalid_value", rows, keys, column=name, type=target_columns[name]["type"])
        if checks:
            self.entry_invalid = self._count(
                pgsql.SQL("SELECT count(*) FROM {} a WHERE NOT ({})").format(self.archive, valid)
            )
        self.cur.execute(pgsql.SQL("DROP TABLE IF EXISTS {}").format(self.stage))
        self.cur.execute(
            pgsql.SQL("CREATE TEMP TABLE {} ON COMMIT DROP AS SELECT {} FROM {} a WHERE {}").format(
                pgsql.Identifier(self.stage.strings[-1]), pgsql.SQL(", ").join(exprs), self.archive, valid
            )
        )

    def _blocked(self, columns: list[str], present) -> pgsql.Composable:
        """A condition on staged rows `s` true where writing them would break a foreign key or a unique index,
        and the conflicts it finds (among the rows that `present` says would be written)."""
        blocked = []
        for fk in foreign_keys(self.cur, self.target_oid):
            if not set(fk.columns) <= set(columns) or (self.values and not set(self.values) & set(fk.columns)):
                continue
            ref = qualified(self.cur, fk.ref_oid)
            ok = pgsql.SQL("({} OR EXISTS (SELECT 1 FROM {} r WHERE {}){})").format(
                any_of([pgsql.SQL("s.{} IS NULL").format(pgsql.Identifier(c)) for c in fk.columns]),
                ref,
                all_of(
                    [
                        pgsql.SQL("r.{} = s.{}").format(pgsql.Identifier(rc), pgsql.Identifier(c))
                        for c, rc in zip(fk.columns, fk.ref_columns, strict=True)
                    ]
                ),
                # A row referencing another restored row of the same table is fine: inserted together.
                pgsql.SQL(" OR EXISTS (SELECT 1 FROM {} s2 WHERE {})").format(
                    self.stage,
                    all_of(
                        [
                            pgsql.SQL("s2.{} = s.{}").format(pgsql.Identifier(rc), pgsql.Identifier(c))
                            for c, rc in zip(fk.columns, fk.ref_columns, strict=True)
                        ]
                    ),
                )
                if fk.ref_oid == self.target_oid and set(fk.ref_columns) <= set(columns)
                else pgsql.SQL(""),
            )
            blocked.append(self._blocking("missing_reference", present, pgsql.SQL("NOT ") + ok, fk.name))
        for name, unique_columns in unique_indexes(self.cur, self.target_oid):
            if not set(unique_columns) <= set(columns) or (self.values and not set(self.values) & set(unique_columns)):
                continue
            if set(unique_columns) <= set(self.keys):
                continue  # the key itself: that is what `present` is about
            condition = pgsql.SQL("EXISTS (SELECT 1 FROM {} t WHERE {} AND NOT ({}))").format(
                self.target, match("t", "s", unique_columns), match("t", "s", self.keys)
            )
            blocked.append(self._blocking("duplicate_unique", present, condition, name))
        return any_of(blocked)
