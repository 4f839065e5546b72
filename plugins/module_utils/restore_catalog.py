# Copyright: contributors to the emergency-rollback runbook
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The catalog as the restore needs it: relations, columns and their types, foreign keys, unique indexes,
the SQL conditions it composes, and the order in which archives are restored (a table before those
that reference it)."""

from __future__ import annotations

from dataclasses import dataclass

try:
    from psycopg2 import sql as pgsql
except ImportError:  # pragma: no cover - the module reports missing_required_lib
    pgsql = None


# -- the catalog ---------------------------------------------------------------------------------
def relation(cursor, schema: str, table: str) -> tuple[int, str] | None:
    cursor.execute(
        """SELECT c.oid, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE n.nspname = %s AND c.relname = %s""",
        (schema, table),
    )
    return cursor.fetchone()


def columns_of(cursor, oid: int) -> dict[str, dict]:
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


def foreign_keys(cursor, oid: int) -> list[ForeignKey]:
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


def unique_indexes(cursor, oid: int) -> list[tuple[str, tuple[str, ...]]]:
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


def qualified(cursor, oid: int):
    cursor.execute(
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = %s",
        (oid,),
    )
    return pgsql.Identifier(*cursor.fetchone())


def target_exists(cursor, entry: dict) -> tuple[bool, bool]:
    """(the source table exists, the source column exists) now."""
    found = relation(cursor, entry["source_schema"], entry["source_table"])
    if not found:
        return False, False
    if not entry.get("source_column"):
        return True, False
    return True, entry["source_column"] in columns_of(cursor, found[0])


# -- conditions ----------------------------------------------------------------------------------
def all_of(parts: list) -> pgsql.Composable:
    return pgsql.SQL(" AND ").join(parts) if parts else pgsql.SQL("true")


def any_of(parts: list) -> pgsql.Composable:
    return pgsql.SQL("(") + pgsql.SQL(" OR ").join(parts) + pgsql.SQL(")") if parts else pgsql.SQL("false")


def match(left: str, right: str, columns) -> pgsql.Composable:
    return all_of(
        [
            pgsql.SQL("{}.{} = {}.{}").format(
                pgsql.SQL(left), pgsql.Identifier(c), pgsql.SQL(right), pgsql.Identifier(c)
            )
            for c in columns
        ]
    )


def same_text(left: str, right: str, columns) -> pgsql.Composable:
    """Values equal as text (every type has a text form; json has no equality operator)."""
    return all_of(
        [
            pgsql.SQL("{}.{}::text IS NOT DISTINCT FROM {}.{}::text").format(
                pgsql.SQL(left), pgsql.Identifier(c), pgsql.SQL(right), pgsql.Identifier(c)
            )
            for c in columns
        ]
    )


def render_key(columns: list[str], values: tuple) -> str:
    if len(columns) == 1:
        return f"{columns[0]}={values[0]}"
    return f"({', '.join(columns)})=({', '.join('NULL' if v is None else str(v) for v in values)})"


# -- order ---------------------------------------------------------------------------------------
def restore_order(cursor, entries: list[dict]) -> list[dict]:
    """Tables before columns; a table after the tables it references (foreign keys); else manifest order."""
    tables = [e for e in entries if not e.get("source_column")]
    columns = [e for e in entries if e.get("source_column")]
    references: dict[int, set[tuple[str, str]]] = {}
    for entry in tables:
        found = relation(cursor, entry["source_schema"], entry["source_table"])
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
