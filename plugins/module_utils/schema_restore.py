# Copyright: contributors to the emergency-rollback runbook
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The way forward: the rows a rollback archived come back when the upgrade recreates their tables and columns.

A rollback's schema revert copies the rows of what its downgrade removes into
`rollback_archive."<run_id>__<table>[__<column>]"` and lists each copy in `rollback_archive.manifest`
(plugins/module_utils/schema_archive.py). This file reads the manifest by its documented columns only
(docs/interfaces.md: id, run_id, archived_at, from_revision, to_revision, source_schema, source_table,
source_column, archive_table, key_columns, row_count), and adds its own, with `ALTER TABLE ... ADD
COLUMN IF NOT EXISTS` the first time it writes: `restored_at`, `restored_by`, `restore_run_id`,
`restored_rows`, `restore_conflict_rows`, `restore_outcome` (the restore) and `purged_at`,
`purged_by`, `purge_run_id` (the retention's purge, plugins/module_utils/archive_retention.py).

Which archives: those not restored and not purged whose `from_revision` the database is back at (or
beyond) after the upgrade: the schema they were taken from exists again. Each is restored once: the
manifest row is marked in the same transaction, and a marked row is never read for restoring again.

What restoring one manifest entry does, inside the caller's transaction (schema_upgrade: the same
transaction as the upgrade, behind the runbook's advisory lock and lock/statement timeouts):
- The archived rows are staged in a temporary table, each value cast back to the column's type now
  (values of ENUMs, domains and other non-built-in types were archived as text). A value the type no
  longer accepts (`pg_input_is_valid`, PostgreSQL 16) is a conflict, `invalid_value`.
What was archived is the manifest's `action` (NULL in older manifests: a dropped table or column):
- A dropped table, or rows a downgrade deleted or truncated (`drop table`, `delete`, `truncate`):
  every staged row whose key (`key_columns`, the table's primary key; the whole row without one) is
  absent is inserted; a row
  whose key exists with the same data counts as already present; a row whose key exists with other
  data is NOT overwritten: conflict `different`. A row whose foreign key points at a row that is gone
  (`missing_reference`) or that would duplicate a unique value (`duplicate_unique`) is not inserted.
  Then every sequence of the table's integer columns (bigserial, identity) is moved past the highest
  restored value, so that the application's next insert does not collide with a restored key.
- Values a downgrade rewrote (`update`: the key and the old values of the columns it set) or retyped
  (`change column type`): the row stayed, and the application may have written it since, so they are
  compared, never written: a different value is a conflict `different`, a row that is gone `missing_row`.
- A dropped materialized view: derived rows, computed again by the upgrade; nothing to restore.
- A dropped column (`drop column`): the archived value is written back by key (`UPDATE ... FROM`) where this
  transaction (re)created the column (its values are the upgrade's defaults). Where the column existed
  before the transaction began, someone may have written it since: a different value is a conflict
  `different`, left alone. A key that no longer exists is a conflict `missing_row`.
- The target table or column missing after the upgrade (`no_table`, `no_column`), a relation that is
  not a table (`not_a_table`), an archived column the table no longer has (`column_gone`: the rows are
  restored without it), or an archive whose row count differs from the manifest (`archive_count`) are
  conflicts too.
Tables are restored before columns, and a table before the tables that reference it.

Conflicts are reported by table, kind, row count and up to MAX_KEYS keys: never the contents of a
row, which may be personal data. A row the restore did not write stays in the archive table (until
the retention purges it). Whether conflicts stop the deployment is the caller's decision
(plugins/module_utils/upgrade_runner.py): by default they do, and the whole transaction, upgrade
included, is rolled back.

Check mode (`apply=False`) changes nothing and runs no upgrade: where the target table and column
exist already the analysis is exact; where the upgrade would create them it is a prediction (every
row restored; for a column, every row whose key exists), said in each entry's `note`.
"""

from __future__ import annotations

try:
    from psycopg2 import sql as pgsql
except ImportError:  # pragma: no cover - the module reports missing_required_lib
    pgsql = None

from ansible.module_utils.restore_catalog import (
    columns_of,
    match,
    relation,
    same_text,
)
from ansible.module_utils.restore_manifest import (
    ARCHIVE_SCHEMA,
    DROP_COLUMN,
    DROP_MATVIEW,
    INTEGER_TYPES,
    VALUE_ACTIONS,
)
from ansible.module_utils.restore_stage import StagedEntry, Unrestorable


class _Entry(StagedEntry):
    """The restore of one manifest entry (see the module docstring); `run()` returns its report."""

    def run(self) -> dict:
        try:
            self._run()
        except Unrestorable as stop:
            self.conflict(stop.kind, self.entry["row_count"])
            self.report.update(conflict_rows=self.entry["row_count"], note=stop.note)
        return self.report

    def _locate(self) -> tuple[dict, dict, int] | None:
        """(archive columns, table columns, archived rows); None when check mode predicts instead."""
        cur, entry = self.cur, self.entry
        archive = relation(cur, ARCHIVE_SCHEMA, entry["archive_table"])
        if not archive:
            raise Unrestorable("archive_missing", f"the archive table {self.report['archive_table']} is gone")
        archived = self._count(pgsql.SQL("SELECT count(*) FROM {}").format(self.archive))
        if archived != entry["row_count"]:
            self.conflict("archive_count", abs(archived - entry["row_count"]), archive_rows=archived)
        archive_columns = columns_of(cur, archive[0])
        target = relation(cur, entry["source_schema"], entry["source_table"])
        if not target and not self.apply:
            self._predict_new_table(archived)
            return None
        if not target:
            raise Unrestorable("no_table", f"{self.report['schema']}.{self.report['table']} does not exist")
        if target[1] not in ("r", "p"):
            raise Unrestorable("not_a_table", f"{self.report['source']} is not a table (relkind {target[1]})")
        self.target_oid = target[0]
        self.target = pgsql.Identifier(entry["source_schema"], entry["source_table"])
        target_columns = columns_of(cur, target[0])
        keys = list(entry["key_columns"]) or [c for c in archive_columns if c in target_columns and c != self.column]
        missing_keys = [k for k in keys if k not in archive_columns or k not in target_columns]
        if missing_keys or not keys:
            raise Unrestorable(
                "no_key", f"key column(s) {', '.join(missing_keys) or '(none)'} not in both the archive and the table"
            )
        self.keys = keys
        return archive_columns, target_columns, archived

    def _run(self) -> None:
        if self.action == DROP_MATVIEW:
            # Derived rows: the upgrade's CREATE MATERIALIZED VIEW (or a REFRESH) computes them again.
            self.entry_invalid = self.blocked_rows = 0
            self.report["note"] = "a materialized view: its rows are computed again (REFRESH), not restored"
            return
        located = self._locate()
        if located is None:
            return
        archive_columns, target_columns, archived = located
        columns = self._columns(archive_columns, target_columns)
        if columns is None:
            return
        self._stage(archive_columns, target_columns, columns)
        # A column this transaction created holds the upgrade's defaults: the archived values replace them.
        # Values a downgrade rewrote or retyped may have been written since: never overwritten.
        fresh = (
            self.action == DROP_COLUMN
            and (self.report["schema"], self.report["table"], self.column) in self.fresh_columns
        )
        if self.apply and not fresh:
            # A table or column that existed before this transaction: nobody else writes it until COMMIT.
            self.cur.execute(pgsql.SQL("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE").format(self.target))
        if self.values is None:
            self._restore_rows(target_columns, columns)
        else:
            self._restore_values(fresh)
        self.report["conflict_rows"] = (
            self.entry_invalid
            + self.blocked_rows
            + abs(archived - self.entry["row_count"])
            + sum(c["rows"] for c in self.report["conflicts"] if c["kind"] == "column_gone")
        )

    def _columns(self, archive_columns: dict, target_columns: dict) -> list[str] | None:
        """The archive's columns to stage (and sets self.values for the column and value modes); None when
        check mode predicts instead (the upgrade would create the column)."""
        if self.action in VALUE_ACTIONS:
            # The key and the old values of the columns a downgrade rewrote (UPDATE) or retyped.
            self.values = [c for c in archive_columns if c not in self.keys and (not self.column or c == self.column)]
            gone = [c for c in self.values if c not in target_columns]
            if gone or not self.values:
                raise Unrestorable("no_column", f"{self.report['source']}: column(s) {', '.join(gone)} do not exist")
            columns = [*self.keys, *self.values]
        elif self.column is not None:
            if self.column not in archive_columns:
                raise Unrestorable("archive_missing", f"the archive has no column {self.column}")
            if self.column not in target_columns and not self.apply:
                self._predict_new_column(archive_columns, target_columns)
                return None
            if self.column not in target_columns:
                raise Unrestorable("no_column", f"{self.report['source']} does not exist")
            if target_columns[self.column]["generated"]:
                raise Unrestorable("generated_column", f"{self.report['source']} is a generated column")
            self.values = [self.column]
            columns = [*self.keys, self.column]
        else:
            columns = [c for c in archive_columns if c in target_columns]
            for gone in (c for c in archive_columns if c not in target_columns):
                statement = pgsql.SQL("SELECT count(*) FROM {} WHERE {} IS NOT NULL")
                self.conflict(
                    "column_gone", self._count(statement.format(self.archive, pgsql.Identifier(gone))), column=gone
                )
        return columns

    def _restore_rows(self, target_columns: dict, columns: list[str]) -> None:
        has_key = pgsql.SQL("EXISTS (SELECT 1 FROM {} t WHERE {})").format(self.target, match("t", "s", self.keys))
        data = [c for c in columns if c not in self.keys]
        same = pgsql.SQL("EXISTS (SELECT 1 FROM {} t WHERE {} AND {})").format(
            self.target, match("t", "s", self.keys), same_text("t", "s", data)
        )
        self.report["already_present"] = self._count(
            pgsql.SQL("SELECT count(*) FROM {} s WHERE {}").format(self.stage, same)
        )
        different = pgsql.SQL("{} AND NOT {}").format(has_key, same)
        rows = self._count(pgsql.SQL("SELECT count(*) FROM {} s WHERE {}").format(self.stage, different))
        self.conflict("different", rows, self._keys(self.stage, "s", self.keys, different) if rows else [])
        missing = pgsql.SQL("NOT ") + has_key
        blocked = self._blocked(columns, missing)
        self.blocked_rows = rows + self._count(
            pgsql.SQL("SELECT count(*) FROM {} s WHERE {} AND {}").format(self.stage, missing, blocked)
        )
        insertable = [c for c in columns if not target_columns[c]["generated"]]
        writable = pgsql.SQL("{} AND NOT {}").format(missing, blocked)
        if not self.apply:
            self.report["restored"] = self._count(
                pgsql.SQL("SELECT count(*) FROM {} s WHERE {}").format(self.stage, writable)
            )
            return
        overriding = any(target_columns[c]["identity"] == "a" for c in insertable)
        names = pgsql.SQL(", ").join(pgsql.Identifier(c) for c in insertable)
        self.cur.execute(
            pgsql.SQL("INSERT INTO {} ({}){} SELECT {} FROM {} s WHERE {}").format(
                self.target,
                names,
                pgsql.SQL(" OVERRIDING SYSTEM VALUE") if overriding else pgsql.SQL(""),
                pgsql.SQL(", ").join(pgsql.SQL("s.{}").format(pgsql.Identifier(c)) for c in insertable),
                self.stage,
                writable,
            )
        )
        self.report["restored"] = self.cur.rowcount
        self._advance_sequences(target_columns, insertable)

    def _advance_sequences(self, target_columns: dict, columns: list[str]) -> None:
        """Every sequence owned by a restored integer column past its highest value (nextval never collides)."""
        schema, table = self.entry["source_schema"], self.entry["source_table"]
        for name in columns:
            if target_columns[name]["type"] not in INTEGER_TYPES:
                continue
            self.cur.execute(
                "SELECT pg_get_serial_sequence(format('%%I.%%I', %s::text, %s::text), %s)", (schema, table, name)
            )
            sequence = self.cur.fetchone()[0]
            if not sequence:
                continue
            self.cur.execute(
                pgsql.SQL(
                    """SELECT setval(%s::regclass, m) FROM (SELECT max({}) AS m FROM {}) x, {} q
                       WHERE m IS NOT NULL AND m > CASE WHEN q.is_called THEN q.last_value ELSE q.last_value - 1 END"""
                ).format(pgsql.Identifier(name), self.target, pgsql.SQL(sequence)),
                (sequence,),
            )

    def _restore_values(self, fresh: bool) -> None:
        """The archived values of `self.values` written back by key where `fresh` (a column this transaction
        created); elsewhere only compared: a different value is a conflict, a missing row too."""
        values = self.values
        has_key = pgsql.SQL("EXISTS (SELECT 1 FROM {} t WHERE {})").format(self.target, match("t", "s", self.keys))
        same = pgsql.SQL("EXISTS (SELECT 1 FROM {} t WHERE {} AND {})").format(
            self.target, match("t", "s", self.keys), same_text("t", "s", values)
        )
        missing = pgsql.SQL("NOT ") + has_key
        rows = self._count(pgsql.SQL("SELECT count(*) FROM {} s WHERE {}").format(self.stage, missing))
        self.conflict("missing_row", rows, self._keys(self.stage, "s", self.keys, missing) if rows else [])
        self.report["already_present"] = self._count(
            pgsql.SQL("SELECT count(*) FROM {} s WHERE {}").format(self.stage, same)
        )
        different = pgsql.SQL("{} AND NOT {}").format(has_key, same)
        blocked_rows = rows
        if not fresh:
            count = self._count(pgsql.SQL("SELECT count(*) FROM {} s WHERE {}").format(self.stage, different))
            self.conflict("different", count, self._keys(self.stage, "s", self.keys, different) if count else [])
            self.blocked_rows = blocked_rows + count
            return
        blocked = self._blocked([*self.keys, *values], different)
        self.blocked_rows = blocked_rows + self._count(
            pgsql.SQL("SELECT count(*) FROM {} s WHERE {} AND {}").format(self.stage, different, blocked)
        )
        writable = pgsql.SQL("{} AND NOT {}").format(different, blocked)
        if not self.apply:
            self.report["restored"] = self._count(
                pgsql.SQL("SELECT count(*) FROM {} s WHERE {}").format(self.stage, writable)
            )
            return
        self.cur.execute(
            pgsql.SQL("UPDATE {} AS t SET {} FROM {} s WHERE {} AND NOT {} AND NOT {}").format(
                self.target,
                pgsql.SQL(", ").join(
                    pgsql.SQL("{} = s.{}").format(pgsql.Identifier(c), pgsql.Identifier(c)) for c in values
                ),
                self.stage,
                match("t", "s", self.keys),
                same_text("t", "s", values),
                blocked,
            )
        )
        # The column is this transaction's: a value equal to the upgrade's default is restored all the same.
        self.report["restored"] = self.cur.rowcount + self.report["already_present"]
        self.report["already_present"] = 0

    # -- check mode, where the upgrade would create the target
    def _predict_new_table(self, archived: int) -> None:
        self.entry_invalid = 0
        self.report.update(
            predicted=True,
            restored=archived,
            note="the upgrade creates the table: every row would be restored; foreign keys, unique values and "
            "types are checked after the upgrade, in its transaction, before anything is committed",
        )

    def _predict_new_column(self, archive_columns: dict, target_columns: dict) -> None:
        self._stage(archive_columns, target_columns, [*self.keys, self.column])
        has_key = pgsql.SQL("EXISTS (SELECT 1 FROM {} t WHERE {})").format(self.target, match("t", "s", self.keys))
        present = self._count(pgsql.SQL("SELECT count(*) FROM {} s WHERE {}").format(self.stage, has_key))
        missing = pgsql.SQL("NOT ") + has_key
        rows = self._count(pgsql.SQL("SELECT count(*) FROM {} s WHERE {}").format(self.stage, missing))
        self.conflict("missing_row", rows, self._keys(self.stage, "s", self.keys, missing) if rows else [])
        self.report.update(
            predicted=True,
            restored=present,
            conflict_rows=rows + self.entry_invalid,
            note="the upgrade creates the column: every row whose key exists would get its archived value back",
        )


def restore_entry(cursor, entry: dict, *, apply: bool, fresh_columns: set | None = None) -> dict:
    """Restore (or, apply False, analyse) one manifest entry in the caller's transaction; its report."""
    report = _Entry(
        cursor, entry, apply=apply, fresh_columns=fresh_columns or set(), stage_name=f"restore_{entry['id']}"
    ).run()
    report["conflicts"].sort(key=lambda c: (c["kind"], c.get("column") or "", c.get("constraint") or ""))
    return report
