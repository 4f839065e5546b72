# Copyright: contributors to the emergency-rollback runbook
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Preserving rows before they leave: the archive (step 4 of the flow).

What leaves is found by sql_analysis (parsing) and schema_catalog (resolving); this module copies it.
Just before the statement that removes or rewrites rows runs, in the same transaction, the source
table is locked (ACCESS EXCLUSIVE, the lock a DROP or TRUNCATE takes anyway; EXCLUSIVE for a DELETE
or UPDATE, which blocks writers but not readers), so no row can change between the copy and the
statement (subject to the attempt's lock_timeout), its rows are counted, and copied with CREATE TABLE
AS into `rollback_archive."<run_id>__<table>[__<column>|__deleted|__updated|__truncated]"`:
- a dropped table or materialized view, a truncated table: every row (FROM ONLY: each partition
  and inheriting table is archived as itself);
- a dropped column, a column whose type changes: the table's primary key (the whole row without
  one) and the column, so it can be restored with one UPDATE ... FROM;
- a DELETE ... WHERE p: the rows p selects; an UPDATE ... WHERE p: their key and the old values of
  the columns it sets.
The copy's row count must equal the count taken under the lock, or the attempt fails. Values of
types the downgrade may drop too (ENUMs, domains, composite types) are stored as text, so the
archive never depends on them. Each copy is listed in `rollback_archive.manifest` (with the action,
the revision and the statement's sha256). The schema and every table in it are revoked from PUBLIC
and from every other grantee (default privileges included): only the owner (the migration role) and
superusers can read archived rows, which may hold personal data. As everything happens inside the
downgrade's transaction, a failed downgrade leaves no archive.
"""

from __future__ import annotations

import hashlib
import re

try:
    from psycopg2 import sql as pgsql
except ImportError:  # pragma: no cover - the module reports missing_required_lib
    pgsql = None

from ansible.module_utils.schema_catalog import ACTIONS, Removal
from ansible.module_utils.schema_errors import MigrationFailed

ARCHIVE_SCHEMA = "rollback_archive"
MANIFEST_TABLE = "manifest"
MAX_IDENTIFIER = 63
RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,39}$")
_SUFFIX = {ACTIONS["delete"]: "deleted", ACTIONS["update"]: "updated", ACTIONS["truncate"]: "truncated"}
_WHOLE_ROWS = (ACTIONS["table"], ACTIONS["matview"], ACTIONS["truncate"], ACTIONS["delete"])


def archive_table_name(run_id: str, table: str, column: str | None, schema: str = "public") -> str:
    """`<run_id>__[<schema>.]<table>[__<column>]`, shortened with a hash when over 63 bytes."""
    source = table if schema == "public" else f"{schema}.{table}"
    name = f"{run_id}__{source}" + (f"__{column}" if column else "")
    if len(name.encode()) <= MAX_IDENTIFIER:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    shortened = name.encode()[: MAX_IDENTIFIER - 9].decode(errors="ignore")
    return f"{shortened}_{digest}"


def _lock_down(cursor, kind: str, target, acl_query: str, acl_params: tuple) -> None:
    """Revoke `target` from PUBLIC and from every grantee but its owner (default privileges too)."""
    cursor.execute(pgsql.SQL("REVOKE ALL ON {} {} FROM PUBLIC").format(pgsql.SQL(kind), target))
    cursor.execute(acl_query, acl_params)
    for (grantee,) in cursor.fetchall():
        cursor.execute(pgsql.SQL("REVOKE ALL ON {} {} FROM {}").format(pgsql.SQL(kind), target, pgsql.SQL(grantee)))


_SCHEMA_GRANTEES = """
    SELECT DISTINCT a.grantee::regrole::text FROM pg_namespace n, aclexplode(n.nspacl) a
    WHERE n.nspname = %s AND a.grantee <> n.nspowner AND a.grantee <> 0"""
_TABLE_GRANTEES = """
    SELECT DISTINCT a.grantee::regrole::text FROM pg_class c, aclexplode(c.relacl) a
    WHERE c.oid = to_regclass(%s) AND a.grantee <> c.relowner AND a.grantee <> 0"""


def ensure_archive_schema(cursor) -> None:
    """Create rollback_archive and its manifest if missing; revoke both from everyone but the owner."""
    cursor.execute(pgsql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(pgsql.Identifier(ARCHIVE_SCHEMA)))
    cursor.execute(
        pgsql.SQL("COMMENT ON SCHEMA {} IS {}").format(
            pgsql.Identifier(ARCHIVE_SCHEMA),
            pgsql.Literal(
                "Rows preserved by the emergency rollback before a downgrade removed them; may hold personal "
                "data: readable by its owner (the migration role) only. Index: rollback_archive.manifest."
            ),
        )
    )
    _lock_down(cursor, "SCHEMA", pgsql.Identifier(ARCHIVE_SCHEMA), _SCHEMA_GRANTEES, (ARCHIVE_SCHEMA,))
    manifest = pgsql.Identifier(ARCHIVE_SCHEMA, MANIFEST_TABLE)
    cursor.execute(
        pgsql.SQL(
            """CREATE TABLE IF NOT EXISTS {} (
                 id bigserial PRIMARY KEY,
                 run_id text NOT NULL,
                 archived_at timestamptz NOT NULL DEFAULT now(),
                 archived_by text NOT NULL DEFAULT current_user,
                 from_revision text,
                 to_revision text,
                 source_schema text NOT NULL,
                 source_table text NOT NULL,
                 source_column text,
                 archive_table text NOT NULL,
                 key_columns text[] NOT NULL,
                 row_count bigint NOT NULL)"""
        ).format(manifest)
    )
    # Added after the first release: what removed the rows, in which revision, by which statement.
    cursor.execute(
        pgsql.SQL(
            "ALTER TABLE {} ADD COLUMN IF NOT EXISTS action text, ADD COLUMN IF NOT EXISTS revision text, "
            "ADD COLUMN IF NOT EXISTS statement_sha256 text"
        ).format(manifest)
    )
    _lock_down(cursor, "TABLE", manifest, _TABLE_GRANTEES, (f"{ARCHIVE_SCHEMA}.{MANIFEST_TABLE}",))


def _select_list(cursor, removal: Removal) -> tuple[list[str], pgsql.Composable]:
    """(key columns, select list) of the copy (see the module docstring). Non-built-in types as text."""
    cursor.execute(
        """SELECT a.attname,
                  coalesce(et.typnamespace, t.typnamespace) = 'pg_catalog'::regnamespace AS builtin,
                  EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = a.attrelid AND i.indisprimary
                          AND a.attnum = ANY(i.indkey)) AS is_key
           FROM pg_attribute a
           JOIN pg_type t ON t.oid = a.atttypid
           LEFT JOIN pg_type et ON et.oid = t.typelem AND t.typcategory = 'A'
           WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum""",
        (removal.oid,),
    )
    rows = cursor.fetchall()
    keys = [name for name, _builtin, is_key in rows if is_key]
    kept = set(removal.set_columns) if removal.action == ACTIONS["update"] else {removal.column}
    if removal.action not in _WHOLE_ROWS:
        if keys:
            rows = [row for row in rows if row[2] or row[0] in kept]
        else:  # no primary key: the whole row identifies it
            keys = [name for name, _builtin, _is_key in rows if name not in kept]
    parts = []
    for name, builtin, _is_key in rows:
        ident = pgsql.Identifier(name)
        parts.append(ident if builtin else pgsql.SQL("{}::text AS {}").format(ident, ident))
    return keys, pgsql.SQL(", ").join(parts)


def _from_clause(removal: Removal) -> pgsql.Composable:
    source = pgsql.Identifier(removal.schema, removal.table)
    if removal.action in (ACTIONS["delete"], ACTIONS["update"]):
        clause = pgsql.SQL("ONLY {} AS {}").format(source, pgsql.Identifier(removal.alias))
        if removal.where:
            clause = pgsql.SQL("{} WHERE {}").format(clause, pgsql.SQL(removal.where))
        return clause
    if removal.action in (ACTIONS["table"], ACTIONS["truncate"]) or (removal.only and removal.relkind == "r"):
        return pgsql.SQL("ONLY {}").format(source)
    return source


class Archiver:
    """Copies what one downgrade attempt removes, just before it goes (see the module docstring).

    `archive(removal, revision, sha256)` runs on the downgrade's own connection and transaction.
    `entries` lists every removal seen (copied, empty, or not copied with archive disabled), each
    with its rows; `tables` only the copies.
    """

    def __init__(self, conn, run_id: str, from_revision: str | None, to_revision: str | None, enabled: bool = True):
        self.conn, self.run_id, self.enabled = conn, run_id, enabled
        self.from_revision, self.to_revision = from_revision, to_revision
        self.entries: list[dict] = []
        self.tables: list[dict] = []
        self._schema_ready = False
        self._names: set[str] = set()
        self._copies: list[tuple[str, int]] = []  # (archive table name, rows copied)

    def summary(self) -> dict:
        return {
            "enabled": self.enabled,
            "schema": ARCHIVE_SCHEMA,
            "run_id": self.run_id,
            "tables": self.tables,
            "rows": sum(t["rows"] for t in self.tables),
        }

    def _unique_name(self, removal: Removal) -> str:
        column = removal.column or _SUFFIX.get(removal.action)
        name, counter = archive_table_name(self.run_id, removal.table, column, removal.schema), 1
        while name in self._names:  # the same table or column removed twice in one run
            counter += 1
            name = archive_table_name(self.run_id, f"{removal.table}_{counter}", column, removal.schema)
        self._names.add(name)
        return name

    def archive(self, removal: Removal, revision: str | None, sha256: str | None) -> dict:
        entry = {
            "action": removal.action,
            "schema": removal.schema,
            "table": removal.table,
            "column": removal.column,
            "rows": None,
            "archive_table": None,
            "revision": revision,
            "statement_sha256": sha256,
            "oid": removal.oid,
        }
        self.entries.append(entry)
        if not self.enabled:
            return entry
        mode = "EXCLUSIVE" if removal.action in (ACTIONS["delete"], ACTIONS["update"]) else "ACCESS EXCLUSIVE"
        source = pgsql.Identifier(removal.schema, removal.table)
        with self.conn.cursor() as cur:
            if removal.relkind != "m":  # LOCK TABLE refuses matviews; only REFRESH changes them
                cur.execute(pgsql.SQL("LOCK TABLE {} IN " + mode + " MODE").format(source))
            else:
                cur.execute("SELECT relispopulated FROM pg_class WHERE oid = %s", (removal.oid,))
                if not cur.fetchone()[0]:
                    entry["rows"] = 0
                    return entry
            cur.execute(pgsql.SQL("SELECT count(*) FROM {}").format(_from_clause(removal)))
            counted = cur.fetchone()[0]
            entry["rows"] = counted
            if not counted:
                return entry
            if not self._schema_ready:
                ensure_archive_schema(cur)
                self._schema_ready = True
            name = self._unique_name(removal)
            target = pgsql.Identifier(ARCHIVE_SCHEMA, name)
            key_columns, select_list = _select_list(cur, removal)
            cur.execute(
                pgsql.SQL("CREATE TABLE {} AS SELECT {} FROM {}").format(target, select_list, _from_clause(removal))
            )
            copied = cur.rowcount
            if copied != counted:
                raise MigrationFailed(
                    f"the archive copy of {removal.describe()} holds {copied} rows where the table had {counted} "
                    "under its lock (a condition that selects different rows each time?)"
                )
            _lock_down(cur, "TABLE", target, _TABLE_GRANTEES, (f'{ARCHIVE_SCHEMA}."{name}"',))
            cur.execute(
                pgsql.SQL("COMMENT ON TABLE {} IS {}").format(
                    target,
                    pgsql.Literal(
                        f"{removal.source} ({removal.action}): rows preserved by emergency rollback run {self.run_id} "
                        f"before downgrade {self.from_revision} -> {self.to_revision} removed them"
                    ),
                )
            )
            cur.execute(
                pgsql.SQL(
                    """INSERT INTO {} (run_id, from_revision, to_revision, source_schema, source_table,
                                       source_column, archive_table, key_columns, row_count, action, revision,
                                       statement_sha256)
                       VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"""
                ).format(pgsql.Identifier(ARCHIVE_SCHEMA, MANIFEST_TABLE)),
                (
                    self.run_id,
                    self.from_revision,
                    self.to_revision,
                    removal.schema,
                    removal.table,
                    removal.column,
                    name,
                    key_columns,
                    copied,
                    removal.action,
                    revision,
                    sha256,
                ),
            )
        entry["archive_table"] = f'{ARCHIVE_SCHEMA}."{name}"'
        self._copies.append((name, copied))
        self.tables.append(
            {
                "source": removal.source,
                "action": removal.action,
                "archive_table": entry["archive_table"],
                "rows": copied,
                "key_columns": key_columns,
            }
        )
        return entry

    def verify(self) -> list[str]:
        """Differences between the manifest rows of this run, the archive tables and what was copied."""
        if not self._copies:
            return []
        problems = []
        with self.conn.cursor() as cur:
            cur.execute(
                pgsql.SQL("SELECT archive_table, row_count FROM {} WHERE run_id = %s").format(
                    pgsql.Identifier(ARCHIVE_SCHEMA, MANIFEST_TABLE)
                ),
                (self.run_id,),
            )
            manifest = dict(cur.fetchall())
            for name, copied in self._copies:
                cur.execute(pgsql.SQL("SELECT count(*) FROM {}").format(pgsql.Identifier(ARCHIVE_SCHEMA, name)))
                held = cur.fetchone()[0]
                if manifest.get(name) != copied or held != copied:
                    problems.append(
                        f'{ARCHIVE_SCHEMA}."{name}" holds {held} rows, its manifest row says {manifest.get(name)}, '
                        f"{copied} were copied"
                    )
        return problems
