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

from dataclasses import dataclass

try:
    from psycopg2 import sql as pgsql
except ImportError:  # pragma: no cover - the module reports missing_required_lib
    pgsql = None

from ansible.module_utils.schema_errors import SchemaError

ARCHIVE_SCHEMA = "rollback_archive"
MANIFEST_TABLE = "manifest"
MAX_KEYS = 10

# The manifest's documented columns (written by the archive; docs/interfaces.md).
BASE_COLUMNS = (
    "id",
    "run_id",
    "archived_at",
    "archived_by",
    "from_revision",
    "to_revision",
    "source_schema",
    "source_table",
    "source_column",
    "archive_table",
    "key_columns",
    "row_count",
)
# Columns the archive added later (schema_archive.ensure_archive_schema; docs/interfaces.md): read when present.
ARCHIVE_COLUMNS = (
    ("action", "text"),
    ("revision", "text"),
    ("statement_sha256", "text"),
)
# What removed the rows (the manifest's `action`; NULL in manifests written before it existed).
DROP_TABLE, DROP_COLUMN, DROP_MATVIEW = "drop table", "drop column", "drop materialized view"
ROW_ACTIONS = (DROP_TABLE, "truncate", "delete")  # whole rows: inserted where their key is absent
VALUE_ACTIONS = ("update", "change column type")  # old values of rows that stayed: never overwritten
# Columns this runbook adds to the manifest when it first restores or purges (docs/interfaces.md).
RESTORE_COLUMNS = (
    ("restored_at", "timestamptz"),
    ("restored_by", "text"),
    ("restore_run_id", "text"),
    ("restored_rows", "bigint"),
    ("restore_conflict_rows", "bigint"),
    ("restore_outcome", "text"),
)
PURGE_COLUMNS = (
    ("purged_at", "timestamptz"),
    ("purged_by", "text"),
    ("purge_run_id", "text"),
)
INTEGER_TYPES = ("smallint", "integer", "bigint")


class RestoreError(SchemaError):
    """The archive cannot be restored as the manifest describes it; nothing is committed."""


class RestoreConflicts(SchemaError):
    """Archived rows conflict with rows written since, and the operator has not accepted them."""

    def __init__(self, message: str, report: dict):
        super().__init__(message)
        self.report = report


def _manifest():
    return pgsql.Identifier(ARCHIVE_SCHEMA, MANIFEST_TABLE)


def describe_entry(entry: dict) -> str:
    """`schema.table[.column]` of a manifest entry."""
    what = f"{entry['source_schema']}.{entry['source_table']}"
    return what + (f".{entry['source_column']}" if entry.get("source_column") else "")


# -- the manifest --------------------------------------------------------------------------------
def manifest_exists(cursor) -> bool:
    cursor.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{ARCHIVE_SCHEMA}.{MANIFEST_TABLE}",))
    return bool(cursor.fetchone()[0])


def manifest_columns(cursor) -> set[str]:
    cursor.execute(
        """SELECT a.attname FROM pg_attribute a WHERE a.attrelid = to_regclass(%s)
           AND a.attnum > 0 AND NOT a.attisdropped""",
        (f"{ARCHIVE_SCHEMA}.{MANIFEST_TABLE}",),
    )
    return {row[0] for row in cursor.fetchall()}


def ensure_manifest_columns(cursor) -> list[str]:
    """Add the restore and purge columns the manifest lacks (only those: ALTER TABLE locks); their names."""
    have = manifest_columns(cursor)
    missing = [(name, kind) for name, kind in RESTORE_COLUMNS + PURGE_COLUMNS if name not in have]
    if missing:
        cursor.execute(
            pgsql.SQL("ALTER TABLE {} {}").format(
                _manifest(),
                pgsql.SQL(", ").join(
                    pgsql.SQL("ADD COLUMN IF NOT EXISTS {} {}").format(pgsql.Identifier(name), pgsql.SQL(kind))
                    for name, kind in missing
                ),
            )
        )
    return [name for name, _kind in missing]


def read_manifest(cursor, *, pending_only: bool = False, for_update: bool = False) -> list[dict]:
    """The manifest's entries (oldest first), each with the restore and purge columns (None where the
    manifest has not got them yet) and `age_seconds`; [] without a manifest.

    `pending_only`: entries neither restored nor purged. `for_update`: lock them (SELECT ... FOR UPDATE).
    """
    if not manifest_exists(cursor):
        return []
    have = manifest_columns(cursor)
    missing_base = [name for name in BASE_COLUMNS if name not in have]
    if missing_base:
        raise RestoreError(
            f"rollback_archive.manifest lacks the documented column(s) {', '.join(missing_base)}: it was not "
            "written by this runbook's archive; inspect it before restoring anything."
        )
    fields = [pgsql.Identifier(name) for name in BASE_COLUMNS]
    for name, kind in ARCHIVE_COLUMNS + RESTORE_COLUMNS + PURGE_COLUMNS:
        if name in have:
            fields.append(pgsql.Identifier(name))
        else:
            fields.append(pgsql.SQL("NULL::{} AS {}").format(pgsql.SQL(kind), pgsql.Identifier(name)))
    fields.append(pgsql.SQL("extract(epoch FROM now() - archived_at)::float8 AS age_seconds"))
    where = pgsql.SQL("")
    if pending_only:
        conditions = [
            pgsql.SQL("{} IS NULL").format(pgsql.Identifier(n)) for n in ("restored_at", "purged_at") if n in have
        ]
        if conditions:
            where = pgsql.SQL(" WHERE ") + pgsql.SQL(" AND ").join(conditions)
    cursor.execute(
        pgsql.SQL("SELECT {} FROM {}{} ORDER BY id{}").format(
            pgsql.SQL(", ").join(fields),
            _manifest(),
            where,
            pgsql.SQL(" FOR UPDATE") if for_update else pgsql.SQL(""),
        )
    )
    names = [col.name for col in cursor.description]
    entries = []
    for row in cursor.fetchall():
        entry = dict(zip(names, row, strict=True))
        entry["key_columns"] = list(entry["key_columns"] or [])
        for key in ("archived_at", "restored_at", "purged_at"):
            if entry.get(key) is not None:
                entry[key] = entry[key].isoformat()
        entries.append(entry)
    return entries


def mark_restored(cursor, entry: dict, *, run_id: str, restored_by: str, report: dict) -> None:
    """Mark one entry restored (with what happened); RestoreError if another run marked it meanwhile."""
    cursor.execute(
        pgsql.SQL(
            """UPDATE {} SET restored_at = now(), restored_by = coalesce(%s, current_user), restore_run_id = %s,
                              restored_rows = %s,
                              restore_conflict_rows = %s, restore_outcome = %s
               WHERE id = %s AND restored_at IS NULL"""
        ).format(_manifest()),
        (restored_by, run_id, report["restored"], report["conflict_rows"], report["outcome"], entry["id"]),
    )
    if cursor.rowcount != 1:
        raise RestoreError(
            f"The archive of {describe_entry(entry)} from rollback run {entry['run_id']} was marked restored by "
            "another run meanwhile: nothing of this run is committed; run again."
        )


# -- the catalog ---------------------------------------------------------------------------------
def _relation(cursor, schema: str, table: str) -> tuple[int, str] | None:
    cursor.execute(
        """SELECT c.oid, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE n.nspname = %s AND c.relname = %s""",
        (schema, table),
    )
    return cursor.fetchone()


def _columns(cursor, oid: int) -> dict[str, dict]:
    """name -> {type (SQL text), generated, identity, attnum}, in column order."""
    cursor.execute(
        """SELECT attname, format_type(atttypid, atttypmod), attgenerated <> '', attidentity, attnum
           FROM pg_attribute WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped ORDER BY attnum""",
        (oid,),
    )
    return {
        name: {"type": kind, "generated": generated, "identity": identity, "attnum": attnum}
        for name, kind, generated, identity, attnum in cursor.fetchall()
    }


@dataclass(frozen=True)
class ForeignKey:
    name: str
    columns: tuple[str, ...]
    ref_oid: int
    ref_columns: tuple[str, ...]


def _foreign_keys(cursor, oid: int) -> list[ForeignKey]:
    cursor.execute(
        """SELECT c.conname, c.confrelid,
                  ARRAY(SELECT a.attname FROM unnest(c.conkey) WITH ORDINALITY k(n, i)
                        JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.n ORDER BY k.i),
                  ARRAY(SELECT a.attname FROM unnest(c.confkey) WITH ORDINALITY k(n, i)
                        JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.n ORDER BY k.i)
           FROM pg_constraint c WHERE c.conrelid = %s AND c.contype = 'f' ORDER BY c.conname""",
        (oid,),
    )
    return [ForeignKey(name, tuple(cols), ref, tuple(ref_cols)) for name, ref, cols, ref_cols in cursor.fetchall()]


def _unique_indexes(cursor, oid: int) -> list[tuple[str, tuple[str, ...]]]:
    """Unique indexes on plain columns, without predicate, other than the primary key: (name, columns)."""
    cursor.execute(
        """SELECT ic.relname, ARRAY(SELECT a.attname FROM unnest(i.indkey) WITH ORDINALITY k(n, o)
                                    JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.n ORDER BY k.o)
           FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
           WHERE i.indrelid = %s AND i.indisunique AND NOT i.indisprimary AND i.indpred IS NULL
             AND i.indexprs IS NULL AND 0 <> ALL (i.indkey)
           ORDER BY ic.relname""",
        (oid,),
    )
    return [(name, tuple(cols)) for name, cols in cursor.fetchall()]


def _qualified(cursor, oid: int):
    cursor.execute(
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = %s",
        (oid,),
    )
    return pgsql.Identifier(*cursor.fetchone())


def target_exists(cursor, entry: dict) -> tuple[bool, bool]:
    """(the source table exists, the source column exists) now."""
    found = _relation(cursor, entry["source_schema"], entry["source_table"])
    if not found:
        return False, False
    if not entry.get("source_column"):
        return True, False
    return True, entry["source_column"] in _columns(cursor, found[0])


# -- one entry -------------------------------------------------------------------------------------
def _and(parts: list) -> pgsql.Composable:
    return pgsql.SQL(" AND ").join(parts) if parts else pgsql.SQL("true")


def _or(parts: list) -> pgsql.Composable:
    return pgsql.SQL("(") + pgsql.SQL(" OR ").join(parts) + pgsql.SQL(")") if parts else pgsql.SQL("false")


def _match(left: str, right: str, columns) -> pgsql.Composable:
    return _and(
        [
            pgsql.SQL("{}.{} = {}.{}").format(
                pgsql.SQL(left), pgsql.Identifier(c), pgsql.SQL(right), pgsql.Identifier(c)
            )
            for c in columns
        ]
    )


def _same(left: str, right: str, columns) -> pgsql.Composable:
    """Values equal as text (every type has a text form; json has no equality operator)."""
    return _and(
        [
            pgsql.SQL("{}.{}::text IS NOT DISTINCT FROM {}.{}::text").format(
                pgsql.SQL(left), pgsql.Identifier(c), pgsql.SQL(right), pgsql.Identifier(c)
            )
            for c in columns
        ]
    )


def _render_key(columns: list[str], values: tuple) -> str:
    if len(columns) == 1:
        return f"{columns[0]}={values[0]}"
    return f"({', '.join(columns)})=({', '.join('NULL' if v is None else str(v) for v in values)})"


class _Unrestorable(Exception):
    """None of an entry's rows can be restored (kind, note): every archived row is a conflict."""

    def __init__(self, kind: str, note: str):
        super().__init__(note)
        self.kind, self.note = kind, note


class _Entry:
    """The restore of one manifest entry (see the module docstring); `run()` returns its report."""

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

    # -- helpers
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
        return [_render_key(keys, row) for row in self.cur.fetchall()]

    def conflict(self, kind: str, rows: int, keys: list[str] | None = None, **detail) -> None:
        if rows:
            self.report["conflicts"].append({"kind": kind, "rows": rows, "keys": keys or [], **detail})

    # -- the work
    def run(self) -> dict:
        try:
            self._run()
        except _Unrestorable as stop:
            self.conflict(stop.kind, self.entry["row_count"])
            self.report.update(conflict_rows=self.entry["row_count"], note=stop.note)
        return self.report

    def _locate(self) -> tuple[dict, dict, int] | None:
        """(archive columns, table columns, archived rows); None when check mode predicts instead."""
        cur, entry = self.cur, self.entry
        archive = _relation(cur, ARCHIVE_SCHEMA, entry["archive_table"])
        if not archive:
            raise _Unrestorable("archive_missing", f"the archive table {self.report['archive_table']} is gone")
        archived = self._count(pgsql.SQL("SELECT count(*) FROM {}").format(self.archive))
        if archived != entry["row_count"]:
            self.conflict("archive_count", abs(archived - entry["row_count"]), archive_rows=archived)
        archive_columns = _columns(cur, archive[0])
        target = _relation(cur, entry["source_schema"], entry["source_table"])
        if not target and not self.apply:
            self._predict_new_table(archived)
            return None
        if not target:
            raise _Unrestorable("no_table", f"{self.report['schema']}.{self.report['table']} does not exist")
        if target[1] not in ("r", "p"):
            raise _Unrestorable("not_a_table", f"{self.report['source']} is not a table (relkind {target[1]})")
        self.target_oid = target[0]
        self.target = pgsql.Identifier(entry["source_schema"], entry["source_table"])
        target_columns = _columns(cur, target[0])
        keys = list(entry["key_columns"]) or [c for c in archive_columns if c in target_columns and c != self.column]
        missing_keys = [k for k in keys if k not in archive_columns or k not in target_columns]
        if missing_keys or not keys:
            raise _Unrestorable(
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
                raise _Unrestorable("no_column", f"{self.report['source']}: column(s) {', '.join(gone)} do not exist")
            columns = [*self.keys, *self.values]
        elif self.column is not None:
            if self.column not in archive_columns:
                raise _Unrestorable("archive_missing", f"the archive has no column {self.column}")
            if self.column not in target_columns and not self.apply:
                self._predict_new_column(archive_columns, target_columns)
                return None
            if self.column not in target_columns:
                raise _Unrestorable("no_column", f"{self.report['source']} does not exist")
            if target_columns[self.column]["generated"]:
                raise _Unrestorable("generated_column", f"{self.report['source']} is a generated column")
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
        valid = _and([check for _name, check in checks])
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
        for fk in _foreign_keys(self.cur, self.target_oid):
            if not set(fk.columns) <= set(columns) or (self.values and not set(self.values) & set(fk.columns)):
                continue
            ref = _qualified(self.cur, fk.ref_oid)
            ok = pgsql.SQL("({} OR EXISTS (SELECT 1 FROM {} r WHERE {}){})").format(
                _or([pgsql.SQL("s.{} IS NULL").format(pgsql.Identifier(c)) for c in fk.columns]),
                ref,
                _and(
                    [
                        pgsql.SQL("r.{} = s.{}").format(pgsql.Identifier(rc), pgsql.Identifier(c))
                        for c, rc in zip(fk.columns, fk.ref_columns, strict=True)
                    ]
                ),
                # A row referencing another restored row of the same table is fine: inserted together.
                pgsql.SQL(" OR EXISTS (SELECT 1 FROM {} s2 WHERE {})").format(
                    self.stage,
                    _and(
                        [
                            pgsql.SQL("s2.{} = s.{}").format(pgsql.Identifier(rc), pgsql.Identifier(c))
                            for c, rc in zip(fk.columns, fk.ref_columns, strict=True)
                        ]
                    ),
                )
                if fk.ref_oid == self.target_oid and set(fk.ref_columns) <= set(columns)
                else pgsql.SQL(""),
            )
            condition = pgsql.SQL("NOT ") + ok
            rows = self._count(
                pgsql.SQL("SELECT count(*) FROM {} s WHERE {} AND {}").format(self.stage, present, condition)
            )
            keys = (
                self._keys(self.stage, "s", self.keys, pgsql.SQL("{} AND {}").format(present, condition))
                if rows
                else []
            )
            self.conflict("missing_reference", rows, keys, constraint=fk.name)
            blocked.append(condition)
        for name, unique_columns in _unique_indexes(self.cur, self.target_oid):
            if not set(unique_columns) <= set(columns) or (self.values and not set(self.values) & set(unique_columns)):
                continue
            if set(unique_columns) <= set(self.keys):
                continue  # the key itself: that is what `present` is about
            condition = pgsql.SQL("EXISTS (SELECT 1 FROM {} t WHERE {} AND NOT ({}))").format(
                self.target, _match("t", "s", unique_columns), _match("t", "s", self.keys)
            )
            rows = self._count(
                pgsql.SQL("SELECT count(*) FROM {} s WHERE {} AND {}").format(self.stage, present, condition)
            )
            keys = (
                self._keys(self.stage, "s", self.keys, pgsql.SQL("{} AND {}").format(present, condition))
                if rows
                else []
            )
            self.conflict("duplicate_unique", rows, keys, constraint=name)
            blocked.append(condition)
        return _or(blocked)

    def _restore_rows(self, target_columns: dict, columns: list[str]) -> None:
        has_key = pgsql.SQL("EXISTS (SELECT 1 FROM {} t WHERE {})").format(self.target, _match("t", "s", self.keys))
        data = [c for c in columns if c not in self.keys]
        same = pgsql.SQL("EXISTS (SELECT 1 FROM {} t WHERE {} AND {})").format(
            self.target, _match("t", "s", self.keys), _same("t", "s", data)
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
        has_key = pgsql.SQL("EXISTS (SELECT 1 FROM {} t WHERE {})").format(self.target, _match("t", "s", self.keys))
        same = pgsql.SQL("EXISTS (SELECT 1 FROM {} t WHERE {} AND {})").format(
            self.target, _match("t", "s", self.keys), _same("t", "s", values)
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
                _match("t", "s", self.keys),
                _same("t", "s", values),
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
        has_key = pgsql.SQL("EXISTS (SELECT 1 FROM {} t WHERE {})").format(self.target, _match("t", "s", self.keys))
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


# -- order, many entries ---------------------------------------------------------------------------
def restore_order(cursor, entries: list[dict]) -> list[dict]:
    """Tables before columns; a table after the tables it references (foreign keys); else manifest order."""
    tables = [e for e in entries if not e.get("source_column")]
    columns = [e for e in entries if e.get("source_column")]
    references: dict[int, set[tuple[str, str]]] = {}
    for entry in tables:
        found = _relation(cursor, entry["source_schema"], entry["source_table"])
        refs = set()
        if found:
            cursor.execute(
                """SELECT n.nspname, c.relname FROM pg_constraint k JOIN pg_class c ON c.oid = k.confrelid
                   JOIN pg_namespace n ON n.oid = c.relnamespace
                   WHERE k.conrelid = %s AND k.contype = 'f' AND k.confrelid <> k.conrelid""",
                (found[0],),
            )
            refs = {tuple(row) for row in cursor.fetchall()}
        references[entry["id"]] = refs
    ordered, placed = [], set()
    remaining = list(tables)
    while remaining:
        pending_targets = {(e["source_schema"], e["source_table"]) for e in remaining}
        ready = [
            e
            for e in remaining
            if not (references[e["id"]] & (pending_targets - {(e["source_schema"], e["source_table"])}))
        ]
        if not ready:  # a cycle: manifest order
            ready = remaining[:1]
        for entry in ready:
            ordered.append(entry)
            placed.add(entry["id"])
        remaining = [e for e in remaining if e["id"] not in placed]
    return ordered + columns


def outcome_of(report: dict, accepted: bool) -> str:
    if report["conflict_rows"] and accepted:
        return (
            f"restored {report['restored']} row(s); {report['conflict_rows']} conflicting row(s) left in the "
            "archive, accepted"
        )
    return f"restored {report['restored']} row(s)" + (
        f", {report['already_present']} already present" if report["already_present"] else ""
    )


def describe_conflicts(reports: list[dict], limit: int = 3) -> str:
    """'public.t: 3 different (id=5, id=7, id=9); ...' for a message: kinds, counts and a few keys."""
    parts = []
    for report in reports:
        for conflict in report["conflicts"]:
            keys = conflict["keys"][:limit]
            more = "" if len(conflict["keys"]) <= limit and conflict["rows"] <= len(keys) else ", ..."
            where = conflict.get("column") if conflict["kind"] in ("invalid_value", "column_gone") else None
            label = report["source"] + (f".{where}" if where and where != report.get("column") else "")
            parts.append(
                f"{label}: {conflict['rows']} {conflict['kind']}" + (f" ({', '.join(keys)}{more})" if keys else "")
            )
    return "; ".join(parts)
