# Copyright: contributors to the emergency-rollback runbook
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""What a statement's effects remove, resolved against the catalog (the database side of sql_analysis).

`removals(cursor, effect)` turns one parsed effect into the data it removes or rewrites, as
`Removal`s: a table, materialized view or column a DROP takes (CASCADE followed through
`pg_depend`, as PostgreSQL's own dependency.c does: views are not data, dependent tables, matviews
and columns are; partitions and inheritance children are tables of their own), the tables a
TRUNCATE empties (CASCADE through foreign keys), the rows a DELETE or UPDATE selects. The same
function serves the plan (check mode) and the apply (just before each statement runs).

`function_risk()` says whether a called function may write (volatile and not one of PostgreSQL's
built-ins). `snapshot()` and `xact_counters()` read, from PostgreSQL's own catalogs and statistics,
what the transaction changed, for the reconciliation before COMMIT (schema_guard).
"""

# ruff: noqa: S608 - SQL here is assembled from constants and psycopg2.sql identifiers only

from __future__ import annotations

from dataclasses import dataclass, field

try:
    from psycopg2 import sql as pgsql
except ImportError:  # pragma: no cover - the modules report missing_required_lib
    pgsql = None

from ansible.module_utils.sql_analysis import Effect, quote_ident

OWN_SCHEMAS = ("rollback_archive", "runbook")
_SYSTEM = "('pg_catalog', 'information_schema', 'rollback_archive', 'runbook')"
DATA_KINDS = ("r", "m")  # relkinds that hold rows of their own (a partitioned table 'p' holds none)

ACTIONS = {
    "table": "drop table",
    "matview": "drop materialized view",
    "column": "drop column",
    "alter_type": "change column type",
    "truncate": "truncate",
    "delete": "delete",
    "update": "update",
}


@dataclass
class Removal:
    """Rows that leave: a table, matview or column dropped, a table truncated, rows deleted/updated."""

    action: str  # one of ACTIONS' values
    schema: str | None  # None: the object does not exist now (created by an earlier step)
    table: str
    column: str | None = None
    oid: int | None = None
    relkind: str = "r"
    only: bool = True
    where: str | None = None
    alias: str | None = None
    set_columns: tuple[str, ...] = ()
    archivable: bool = True
    reason: str = ""
    optional: bool = False  # IF EXISTS on an object absent now: may or may not be there at apply
    rows: int | None = None
    extra: dict = field(default_factory=dict)

    @property
    def source(self) -> str:
        return ".".join(p for p in (self.schema, self.table, self.column) if p)

    @property
    def key(self) -> tuple:
        return (self.action, self.schema, self.table, self.column)

    def describe(self) -> str:
        return f"{self.source} ({self.action})"

    def matches(self, other: Removal) -> bool:
        """Same object and action; a planned object that did not exist yet matches it in any schema."""
        if (self.action, self.table, self.column) != (other.action, other.table, other.column):
            return False
        return self.schema is None or other.schema is None or self.schema == other.schema


def _regclass(cursor, name: tuple[str, ...]) -> tuple | None:
    """(oid, schema, relname, relkind, relpersistence, relispopulated) of the relation, or None."""
    cursor.execute(
        """SELECT c.oid, n.nspname, c.relname, c.relkind, c.relpersistence, c.relispopulated FROM pg_class c
           JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass(%s)""",
        (".".join(quote_ident(p) for p in name),),
    )
    return cursor.fetchone()


def _start_object(cursor, effect: Effect) -> tuple | None:
    """(classid, objid, objsubid) of the object a DROP names, or None when it does not exist."""
    qualified = effect.qualified
    if effect.objtype in ("type", "domain"):
        cursor.execute("SELECT 'pg_type'::regclass::oid, to_regtype(%s)::oid, 0", (qualified,))
    elif effect.objtype == "schema":
        cursor.execute("SELECT 'pg_namespace'::regclass::oid, oid, 0 FROM pg_namespace WHERE nspname = %s", effect.name)
    elif effect.objtype == "extension":
        cursor.execute("SELECT 'pg_extension'::regclass::oid, oid, 0 FROM pg_extension WHERE extname = %s", effect.name)
    elif effect.objtype == "function":
        if effect.args is None:
            cursor.execute("SELECT 'pg_proc'::regclass::oid, to_regproc(%s)::oid, 0", (qualified,))
        else:
            cursor.execute(
                "SELECT 'pg_proc'::regclass::oid, to_regprocedure(%s)::oid, 0", (f"{qualified}({effect.args})",)
            )
    else:
        cursor.execute("SELECT 'pg_class'::regclass::oid, to_regclass(%s)::oid, 0", (qualified,))
    row = cursor.fetchone()
    return row if row and row[1] is not None else None


_WALK = """
SELECT DISTINCT d.classid, d.objid, d.objsubid
FROM pg_depend d JOIN unnest(%(classids)s::oid[], %(objids)s::oid[], %(subids)s::int[]) AS c(classid, objid, objsubid)
  ON d.refclassid = c.classid AND d.refobjid = c.objid AND (c.objsubid = 0 OR d.refobjsubid = c.objsubid)
WHERE d.deptype = ANY(%(types)s)
UNION
SELECT DISTINCT d.refclassid, d.refobjid, d.refobjsubid
FROM pg_depend d JOIN unnest(%(classids)s::oid[], %(objids)s::oid[], %(subids)s::int[]) AS c(classid, objid, objsubid)
  ON d.classid = c.classid AND d.objid = c.objid AND (c.objsubid = 0 OR d.objsubid = c.objsubid)
WHERE d.deptype = 'i'
"""


def dependency_closure(cursor, start: tuple, cascade: bool) -> set[tuple]:
    """Every object dropped with `start`: its automatic, internal, partition and extension dependents,
    and with CASCADE its normal ones too, recursively; an internal dependent's owner goes with it (a
    view's rewrite rule takes the view). As PostgreSQL's findDependentObjects does."""
    types = ["a", "i", "P", "S", "e", "x"] + (["n"] if cascade else [])
    closure = {tuple(start)}
    frontier = [tuple(start)]
    while frontier:
        cursor.execute(
            _WALK,
            {
                "classids": [f[0] for f in frontier],
                "objids": [f[1] for f in frontier],
                "subids": [f[2] for f in frontier],
                "types": types,
            },
        )
        found = {tuple(row) for row in cursor.fetchall()} - closure
        closure |= found
        frontier = list(found)
    return closure


def _data_in_closure(cursor, closure: set[tuple]) -> list[Removal]:
    """The tables, matviews and columns (of surviving tables) among the objects of a closure."""
    cursor.execute("SELECT 'pg_class'::regclass::oid")
    pg_class = cursor.fetchone()[0]
    relations = {objid for classid, objid, subid in closure if classid == pg_class and subid == 0}
    columns = [(objid, subid) for classid, objid, subid in closure if classid == pg_class and subid > 0]
    columns = [(oid, attnum) for oid, attnum in columns if oid not in relations]
    if not relations and not columns:
        return []
    cursor.execute(
        f"""SELECT c.oid, n.nspname, c.relname, c.relkind, c.relpersistence, NULL::text, 0
            FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE c.oid = ANY(%s::oid[]) AND c.relkind IN ('r', 'm') AND c.relpersistence <> 't'
              AND n.nspname NOT IN {_SYSTEM}
            UNION ALL
            SELECT c.oid, n.nspname, c.relname, c.relkind, c.relpersistence, a.attname, a.attnum
            FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
            JOIN unnest(%s::oid[], %s::int[]) AS col(oid, attnum) ON col.oid = a.attrelid AND col.attnum = a.attnum
            WHERE c.relkind IN ('r', 'p') AND c.relpersistence <> 't' AND n.nspname NOT IN {_SYSTEM}
              AND NOT a.attisdropped
              -- a partition's column goes with its partitioned table's, whose copy holds its rows
              AND NOT EXISTS (SELECT 1 FROM pg_partition_ancestors(c.oid) anc
                              JOIN unnest(%s::oid[], %s::int[]) AS other(oid, attnum) ON other.oid = anc.relid
                              WHERE anc.relid <> c.oid)
            ORDER BY 2, 3, 7""",
        (
            list(relations),
            [c[0] for c in columns],
            [c[1] for c in columns],
            [c[0] for c in columns],
            [c[1] for c in columns],
        ),
    )
    found = []
    for oid, schema, table, relkind, _persistence, column, _attnum in cursor.fetchall():
        if column is None:
            action = ACTIONS["matview"] if relkind == "m" else ACTIONS["table"]
            found.append(Removal(action, schema, table, oid=oid, relkind=relkind))
        else:
            found.append(Removal(ACTIONS["column"], schema, table, column, oid=oid, relkind=relkind, only=False))
    return found


def _absent(effect: Effect, action: str) -> list[Removal]:
    """An object that does not exist now: listed by name (an earlier step of the downgrade may create it)."""
    table = effect.name[-1] if effect.name else "?"
    schema = effect.name[-2] if len(effect.name) > 1 else None
    return [Removal(action, schema, table, effect.column, optional=effect.missing_ok, only=effect.only)]


def _table_tree(cursor, oid: int, only: bool) -> list[tuple]:
    """(oid, schema, relname, relkind) of the table and, unless ONLY, its partitions and children."""
    cursor.execute(
        """WITH RECURSIVE tree(oid) AS (
             SELECT %s::oid UNION SELECT i.inhrelid FROM pg_inherits i JOIN tree t ON i.inhparent = t.oid
             WHERE NOT %s)
           SELECT c.oid, n.nspname, c.relname, c.relkind FROM tree JOIN pg_class c ON c.oid = tree.oid
           JOIN pg_namespace n ON n.oid = c.relnamespace ORDER BY n.nspname, c.relname""",
        (oid, only),
    )
    return cursor.fetchall()


def table_tree_oids(cursor, name: tuple[str, ...]) -> list[int]:
    """The oids of a table and its partitions and inheritance children (empty if it does not exist)."""
    found = _regclass(cursor, name)
    return [row[0] for row in _table_tree(cursor, found[0], False)] if found else []


def _truncated(cursor, effect: Effect) -> list[Removal]:
    found = _regclass(cursor, effect.name)
    if found is None:
        return _absent(effect, ACTIONS["truncate"])
    roots, seen, result = [(found[0], effect.only)], set(), []
    while roots:
        oid, only = roots.pop(0)
        for leaf, schema, table, relkind in _table_tree(cursor, oid, only):
            if leaf in seen:
                continue
            seen.add(leaf)
            if relkind == "r":
                result.append(Removal(ACTIONS["truncate"], schema, table, oid=leaf))
            if effect.cascade:  # TRUNCATE ... CASCADE empties every table whose foreign keys point here
                cursor.execute(
                    "SELECT DISTINCT conrelid FROM pg_constraint WHERE contype = 'f' AND confrelid = %s", (leaf,)
                )
                roots.extend((row[0], False) for row in cursor.fetchall())
    return result


def _cascading_references(cursor, oid: int, action: str) -> list[str]:
    """Foreign keys whose ON DELETE/UPDATE action would change other tables' rows along with these."""
    column = "confdeltype" if action == "delete" else "confupdtype"
    cursor.execute(
        f"""SELECT format('%%I.%%I (%%s)', n.nspname, c.relname, con.conname)
            FROM pg_constraint con JOIN pg_class c ON c.oid = con.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE con.contype = 'f' AND con.{column} IN ('c', 'n', 'd')
              AND con.confrelid IN (SELECT relid FROM pg_partition_ancestors(%s) UNION SELECT %s)
            ORDER BY 1""",
        (oid, oid),
    )
    return [row[0] for row in cursor.fetchall()]


def _rows_changed(cursor, effect: Effect) -> list[Removal]:
    action = ACTIONS[effect.kind]
    found = _regclass(cursor, effect.name)
    if found is None:
        return _absent(effect, action)
    reason = effect.reason
    volatile = [f for f in effect.where_functions if function_risk(cursor, f, any_volatile=True)]
    if not reason and volatile:
        reason = f"its condition calls the volatile function {'.'.join(volatile[0])}()"
    if not reason:
        cascades = _cascading_references(cursor, found[0], effect.kind)
        if cascades:
            reason = f"foreign keys change rows of other tables along with it: {', '.join(cascades)}"
    result = []
    for oid, schema, table, relkind in _table_tree(cursor, found[0], effect.only):
        if relkind == "r":
            result.append(
                Removal(
                    action,
                    schema,
                    table,
                    oid=oid,
                    where=effect.where,
                    alias=effect.alias or effect.name[-1],
                    set_columns=effect.set_columns,
                    archivable=not reason,
                    reason=reason,
                )
            )
    return result


def _column_removals(cursor, effect: Effect) -> list[Removal]:
    found = _regclass(cursor, effect.name)
    action = ACTIONS["column" if effect.kind == "drop_column" else "alter_type"]
    if found is None:
        return _absent(effect, action)
    cursor.execute(
        "SELECT attnum FROM pg_attribute WHERE attrelid = %s AND attname = %s AND attnum > 0 AND NOT attisdropped",
        (found[0], effect.column),
    )
    row = cursor.fetchone()
    if row is None:
        return []  # IF EXISTS on an absent column, or the statement fails
    if effect.kind == "alter_type":
        return [Removal(action, found[1], found[2], effect.column, oid=found[0], relkind=found[3], only=effect.only)]
    closure = dependency_closure(cursor, (_pg_class(cursor), found[0], row[0]), effect.cascade)
    return _data_in_closure(cursor, closure)


def _dropped(cursor, effect: Effect) -> list[Removal]:
    start = _start_object(cursor, effect)
    if start is None:
        return _absent(effect, ACTIONS[effect.objtype]) if effect.objtype in ("table", "matview") else []
    return _data_in_closure(cursor, dependency_closure(cursor, start, effect.cascade))


_RESOLVERS = {
    "truncate": _truncated,
    "delete": _rows_changed,
    "update": _rows_changed,
    "drop_column": _column_removals,
    "alter_type": _column_removals,
    "drop": _dropped,
}


def removals(cursor, effect: Effect) -> list[Removal]:
    """The data `effect` removes or rewrites, resolved now (see the module docstring)."""
    resolver = _RESOLVERS.get(effect.kind)
    return resolver(cursor, effect) if resolver else []


def _pg_class(cursor) -> int:
    cursor.execute("SELECT 'pg_class'::regclass::oid")
    return cursor.fetchone()[0]


def function_risk(cursor, name: tuple[str, ...], any_volatile: bool = False) -> str | None:
    """Why a call of `name` may write (None: it cannot). A function of PostgreSQL's own (pg_catalog) is
    taken not to write rows; any other must be STABLE or IMMUTABLE, which PostgreSQL enforces for SQL
    and PL/pgSQL functions (a non-volatile function cannot run INSERT/UPDATE/DELETE). With
    `any_volatile`, a volatile built-in (random(), clock_timestamp()) counts too."""
    schema, proname = (name[-2] if len(name) > 1 else None), name[-1]
    cursor.execute(
        """SELECT n.nspname, p.provolatile FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
           WHERE p.proname = %s AND CASE WHEN %s::text IS NULL THEN n.nspname = ANY(current_schemas(true))
                                         ELSE n.nspname = %s END""",
        (proname, schema, schema),
    )
    rows = cursor.fetchall()
    label = ".".join(name)
    if not rows:
        return f"{label}() is not a function of this database now, so what it does cannot be checked"
    if any(nsp == "pg_catalog" for nsp, _ in rows):
        volatile = any(v == "v" for nsp, v in rows if nsp == "pg_catalog")
        return f"{label}() is volatile" if any_volatile and volatile else None
    if any(v == "v" for _nsp, v in rows):
        return f"{label}() is a volatile function, which may write"
    return None


def count_rows(cursor, removal: Removal) -> int | None:
    """Rows the removal takes now (None if the object does not exist or cannot be counted yet)."""
    if removal.oid is None:
        return None
    source = pgsql.Identifier(removal.schema, removal.table)
    if removal.relkind == "m":
        cursor.execute("SELECT relispopulated FROM pg_class WHERE oid = %s", (removal.oid,))
        if not cursor.fetchone()[0]:
            return 0
    if removal.action in (ACTIONS["delete"], ACTIONS["update"]):
        query = pgsql.SQL("SELECT count(*) FROM ONLY {} AS {}").format(source, pgsql.Identifier(removal.alias))
        if removal.where:
            query = pgsql.SQL("{} WHERE {}").format(query, pgsql.SQL(removal.where))
    else:
        only = "ONLY " if removal.only or removal.action in (ACTIONS["table"], ACTIONS["truncate"]) else ""
        query = pgsql.SQL("SELECT count(*) FROM " + only + "{}").format(source)
    cursor.execute("SAVEPOINT rollback_count")
    try:
        cursor.execute(query)
        rows = cursor.fetchone()[0]
    except Exception:
        cursor.execute("ROLLBACK TO SAVEPOINT rollback_count")
        return None
    cursor.execute("RELEASE SAVEPOINT rollback_count")
    return rows


# -- what the transaction changed, from PostgreSQL's own view --------------------------------------
_RELATIONS = f"""
SELECT c.oid, n.nspname, c.relname, c.relkind, c.relfilenode FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'm', 'p') AND c.relpersistence <> 't' AND n.nspname NOT IN {_SYSTEM}
  AND n.nspname NOT LIKE 'pg\\_toast%%' AND n.nspname NOT LIKE 'pg\\_temp\\_%%'
"""
_COLUMNS = f"""
SELECT a.attrelid, a.attnum, a.attname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND c.relpersistence <> 't' AND a.attnum > 0 AND NOT a.attisdropped
  AND n.nspname NOT IN {_SYSTEM} AND n.nspname NOT LIKE 'pg\\_toast%%' AND n.nspname NOT LIKE 'pg\\_temp\\_%%'
"""


def snapshot(cursor) -> dict:
    """The user tables, matviews and columns now: {"relations": {oid: (schema, name, relkind, relfilenode)},
    "columns": {(oid, attnum): name}}."""
    cursor.execute(_RELATIONS)
    relations = {row[0]: tuple(row[1:]) for row in cursor.fetchall()}
    cursor.execute(_COLUMNS)
    columns = {(row[0], row[1]): row[2] for row in cursor.fetchall()}
    return {"relations": relations, "columns": columns}


def xact_counters(cursor, oids: list[int] | None = None) -> dict[int, tuple[int, int]]:
    """{table oid: (rows updated, rows deleted)} by this transaction so far (pg_stat_xact_user_tables;
    includes counts not yet flushed from earlier transactions of the session: compare differences)."""
    query = "SELECT relid, n_tup_upd, n_tup_del FROM pg_stat_xact_user_tables"
    params: tuple = ()
    if oids is not None:
        query += " WHERE relid = ANY(%s::oid[])"
        params = (oids,)
    cursor.execute(query, params)
    return {row[0]: (row[1], row[2]) for row in cursor.fetchall()}


__all__ = [
    "ACTIONS",
    "OWN_SCHEMAS",
    "Removal",
    "count_rows",
    "dependency_closure",
    "function_risk",
    "removals",
    "snapshot",
    "table_tree_oids",
    "xact_counters",
]
