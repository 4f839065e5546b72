# Copyright: contributors to the emergency-rollback runbook
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The schema fingerprint: a stable sha256 of the database's schema, read from the catalogs.

What it covers, in every schema except PostgreSQL's own and the runbook's (`runbook`,
`rollback_archive`): schemas; tables, views, materialized views, sequences, foreign tables and
composite types; columns in order with type, default, nullability, identity, generation and
collation; constraints; indexes; ENUM types with their labels in order; domains; sequences'
parameters and owners; view definitions; triggers; functions and procedures; extensions. Not the
table `alembic_version` (it holds the revision, which `schema_state` reports on its own), not
ownership or grants (they differ between environments), not row data or sequence positions.

Stable: every object is rendered as text with `search_path` set to `pg_catalog` (so every name is
schema-qualified, whatever the session's search_path), OIDs never appear, and the lines are sorted
before hashing. Same schema, same fingerprint; any difference in the list above, another one.
"""

# ruff: noqa: S608 - every query here is assembled from constants of this module, never from input

from __future__ import annotations

import hashlib
import json

EXCLUDED_SCHEMAS = ("runbook", "rollback_archive")
EXCLUDED_TABLES = ("alembic_version",)

_SCHEMA_FILTER = """
    {n}.nspname NOT IN ('pg_catalog', 'information_schema', 'runbook', 'rollback_archive')
    AND {n}.nspname NOT LIKE 'pg\\_toast%' AND {n}.nspname NOT LIKE 'pg\\_temp\\_%'
"""
_NOT_EXTENSION_MEMBER = """
    NOT EXISTS (SELECT 1 FROM pg_depend dep WHERE dep.classid = {catalog}::regclass
                AND dep.objid = {oid} AND dep.deptype = 'e')
"""
_RELATION_FILTER = (
    _SCHEMA_FILTER.format(n="n")
    + " AND c.relname NOT IN ('alembic_version') AND "
    + _NOT_EXTENSION_MEMBER.format(catalog="'pg_class'", oid="c.oid")
)

QUERIES: dict[str, str] = {
    "schema": f"""
        SELECT n.nspname FROM pg_namespace n WHERE {_SCHEMA_FILTER.format(n="n")}
          AND {_NOT_EXTENSION_MEMBER.format(catalog="'pg_namespace'", oid="n.oid")}""",
    "extension": """
        SELECT e.extname, e.extversion, n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace""",
    "relation": f"""
        SELECT n.nspname, c.relname, c.relkind, c.relpersistence, c.relrowsecurity
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f', 'c') AND {_RELATION_FILTER}""",
    "column": f"""
        SELECT n.nspname, c.relname,
               row_number() OVER (PARTITION BY c.oid ORDER BY a.attnum) AS position,
               a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
               pg_get_expr(d.adbin, d.adrelid), a.attidentity, a.attgenerated,
               CASE WHEN a.attcollation <> t.typcollation THEN co.collname END
        FROM pg_attribute a
        JOIN pg_class c ON c.oid = a.attrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        JOIN pg_type t ON t.oid = a.atttypid
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        LEFT JOIN pg_collation co ON co.oid = a.attcollation
        WHERE a.attnum > 0 AND NOT a.attisdropped
          AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'c') AND {_RELATION_FILTER}""",
    "constraint": f"""
        SELECT n.nspname, coalesce(c.relname, t.typname), con.conname, con.contype,
               pg_get_constraintdef(con.oid, true), con.condeferrable, con.condeferred
        FROM pg_constraint con
        JOIN pg_namespace n ON n.oid = con.connamespace
        LEFT JOIN pg_class c ON c.oid = con.conrelid
        LEFT JOIN pg_type t ON t.oid = con.contypid
        WHERE {_SCHEMA_FILTER.format(n="n")} AND coalesce(c.relname, '') NOT IN ('alembic_version')""",
    "index": f"""
        SELECT n.nspname, c.relname, pg_get_indexdef(i.indexrelid)
        FROM pg_index i
        JOIN pg_class c ON c.oid = i.indrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE {_RELATION_FILTER}""",
    "enum": f"""
        SELECT n.nspname, t.typname, array_agg(e.enumlabel ORDER BY e.enumsortorder)::text[]
        FROM pg_type t
        JOIN pg_namespace n ON n.oid = t.typnamespace
        JOIN pg_enum e ON e.enumtypid = t.oid
        WHERE {_SCHEMA_FILTER.format(n="n")} AND {_NOT_EXTENSION_MEMBER.format(catalog="'pg_type'", oid="t.oid")}
        GROUP BY n.nspname, t.typname""",
    "domain": f"""
        SELECT n.nspname, t.typname, format_type(t.typbasetype, t.typtypmod), t.typnotnull, t.typdefault
        FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
        WHERE t.typtype = 'd' AND {_SCHEMA_FILTER.format(n="n")}
          AND {_NOT_EXTENSION_MEMBER.format(catalog="'pg_type'", oid="t.oid")}""",
    "sequence": f"""
        SELECT n.nspname, c.relname, format_type(s.seqtypid, NULL), s.seqstart, s.seqincrement,
               s.seqmin, s.seqmax, s.seqcache, s.seqcycle,
               (SELECT oc.relname || '.' || a.attname FROM pg_depend dep
                  JOIN pg_class oc ON oc.oid = dep.refobjid
                  JOIN pg_attribute a ON a.attrelid = dep.refobjid AND a.attnum = dep.refobjsubid
                 WHERE dep.classid = 'pg_class'::regclass AND dep.objid = c.oid
                   AND dep.deptype IN ('a', 'i') AND dep.refclassid = 'pg_class'::regclass)
        FROM pg_sequence s
        JOIN pg_class c ON c.oid = s.seqrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE {_RELATION_FILTER}""",
    "view": f"""
        SELECT n.nspname, c.relname, pg_get_viewdef(c.oid, true)
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('v', 'm') AND {_RELATION_FILTER}""",
    "trigger": f"""
        SELECT n.nspname, c.relname, tg.tgname, pg_get_triggerdef(tg.oid, true), tg.tgenabled
        FROM pg_trigger tg
        JOIN pg_class c ON c.oid = tg.tgrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE NOT tg.tgisinternal AND {_RELATION_FILTER}""",
    "function": f"""
        SELECT n.nspname, p.proname, p.prokind, pg_get_function_identity_arguments(p.oid),
               md5(pg_get_functiondef(p.oid))
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE p.prokind IN ('f', 'p') AND {_SCHEMA_FILTER.format(n="n")}
          AND {_NOT_EXTENSION_MEMBER.format(catalog="'pg_proc'", oid="p.oid")}""",
}


def schema_objects(cursor) -> dict[str, list[str]]:
    """Every object the fingerprint covers, by kind: sorted lists of JSON-rendered rows.

    Runs inside the caller's transaction and sets search_path locally to pg_catalog; use a
    REPEATABLE READ transaction for a consistent picture. The caller commits or rolls back.
    """
    cursor.execute("SELECT set_config('search_path', 'pg_catalog', true)")
    objects: dict[str, list[str]] = {}
    for kind, query in QUERIES.items():
        cursor.execute(query)
        objects[kind] = sorted(json.dumps(list(row), default=str, separators=(",", ":")) for row in cursor.fetchall())
    return objects


def fingerprint_of(objects: dict[str, list[str]]) -> str:
    digest = hashlib.sha256()
    for kind in sorted(objects):
        for line in objects[kind]:
            digest.update(f"{kind}\t{line}\n".encode())
    return digest.hexdigest()


def fingerprint(cursor) -> str:
    """sha256 hex of the schema (see the module docstring)."""
    return fingerprint_of(schema_objects(cursor))


def diff_objects(before: dict[str, list[str]], after: dict[str, list[str]]) -> dict[str, dict[str, list[str]]]:
    """What differs between two schema_objects() results: {kind: {"missing": [...], "extra": [...]}}."""
    diff = {}
    for kind in sorted(set(before) | set(after)):
        old, new = set(before.get(kind, [])), set(after.get(kind, []))
        if old != new:
            diff[kind] = {"missing": sorted(old - new), "extra": sorted(new - old)}
    return diff
