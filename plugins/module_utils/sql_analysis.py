# Copyright: contributors to the emergency-rollback runbook
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""What each statement of a downgrade does to data, read with PostgreSQL's own parser (pglast 8).

Plain Python, no database: `analyze(sql)` splits any SQL text (one statement, a multi-statement
string, alembic's offline script, an EF Core script) into statements and classifies each one. The
database side (schema_catalog) resolves names, CASCADE and function volatility against the catalog;
the plan (check mode, on the rendered SQL) and the apply (on every statement just before it runs)
call the same two functions, so what the plan announces is what the apply preserves.

A statement's `effects`:
- `drop`: DROP TABLE / MATERIALIZED VIEW / VIEW / SCHEMA / TYPE / DOMAIN / SEQUENCE / FUNCTION /
  EXTENSION / ... of each named object, with IF EXISTS and CASCADE; what it takes with it (tables,
  matviews, columns) is found from pg_depend by the database side.
- `drop_column` (ALTER TABLE ... DROP COLUMN) and `alter_type` (ALTER COLUMN ... TYPE: the values are
  rewritten, the old ones archived first).
- `truncate`, `delete`, `update`: rows removed or rewritten. `archivable` says whether the rows can be
  copied first in the same transaction (a plain `DELETE FROM t WHERE p` / `UPDATE t SET ... WHERE p`
  with no other relation in p, and no data-modifying WITH); `where` is p, deparsed.
- `unsafe`: anything that may remove or rewrite rows in ways the archive cannot follow (DO blocks,
  CALL, MERGE, INSERT ... ON CONFLICT DO UPDATE, data-modifying WITH, COPY, statements the parser
  does not know to be harmless). Refused unless the operator accepts that very statement.
Function calls in statements that evaluate expressions over rows are listed (`functions`): a call of
a volatile function outside pg_catalog may write, and is refused the same way (database side).

Statements that only define or alter schema objects without touching rows (CREATE, COMMENT, GRANT,
RENAME, DROP INDEX/CONSTRAINT/TRIGGER, ...) have no effects. Transaction control is reported
(`transaction`) so callers can tell alembic's own BEGIN/COMMIT from a migration that commits.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

try:
    from pglast import ast, enums, parse_sql
    from pglast.parser import ParseError
    from pglast.stream import RawStream
    from pglast.visitors import Visitor

    HAS_PGLAST = True
except ImportError:  # pragma: no cover - the modules report missing_required_lib
    HAS_PGLAST = False
    Visitor = object  # so that this file still imports; analyze() refuses

    class ParseError(Exception):  # type: ignore[no-redef]
        pass


class SqlAnalysisError(Exception):
    """The SQL cannot be parsed by PostgreSQL's parser: nothing can be said about what it does."""


@dataclass(frozen=True)
class Effect:
    kind: str  # drop | drop_column | alter_type | truncate | delete | update | unsafe
    objtype: str | None = None  # for drop: table, matview, view, schema, type, function, ...
    name: tuple[str, ...] = ()  # the object's name as PostgreSQL folds it (schema, name) or (name,)
    column: str | None = None
    cascade: bool = False
    missing_ok: bool = False
    only: bool = False  # ONLY: not the inheritance children
    args: str | None = None  # a function's argument types, for to_regprocedure
    where: str | None = None  # delete/update: the condition, deparsed (None: every row)
    alias: str | None = None
    set_columns: tuple[str, ...] = ()
    where_functions: tuple[tuple[str, ...], ...] = ()  # functions called in `where`
    archivable: bool = False
    reason: str = ""  # why not archivable / why unsafe

    @property
    def qualified(self) -> str:
        return ".".join(quote_ident(part) for part in self.name)


@dataclass(frozen=True)
class Statement:
    index: int  # position in the text analyzed (0-based)
    text: str  # the statement as written
    node: str  # pglast node type, e.g. DropStmt
    sha256: str  # of the canonical (deparsed) statement: how an operator accepts it
    effects: tuple[Effect, ...] = ()
    functions: tuple[tuple[str, ...], ...] = ()
    transaction: str | None = None  # BEGIN, COMMIT, ROLLBACK, SAVEPOINT, ... for TransactionStmt
    version_target: tuple[str, ...] | None = None  # the table an INSERT/UPDATE/DELETE writes to
    version_op: str | None = field(default=None, compare=False)
    altered: tuple[str, ...] | None = None  # the table an ALTER TABLE changes (it may rewrite it)

    @property
    def short(self) -> str:
        text = " ".join(self.text.split())
        return text if len(text) <= 160 else text[:157] + "..."


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _names(nodes) -> tuple[str, ...]:
    return tuple(n.sval for n in nodes or () if isinstance(n, ast.String))


def _range_name(rv) -> tuple[str, ...]:
    return tuple(p for p in (rv.catalogname, rv.schemaname, rv.relname) if p)


def _deparse(node) -> str:
    return RawStream()(node)


def canonical_sha256(node, text: str) -> str:
    """sha256 of the statement deparsed by pglast: the same whatever its spacing, case or comments."""
    try:
        canonical = _deparse(node)
    except Exception:  # a node pglast cannot print: the text as written, whitespace normalised
        canonical = " ".join(text.split())
    return hashlib.sha256(canonical.encode()).hexdigest()


# Statements that define or change schema objects without removing or rewriting any row.
_HARMLESS = frozenset(
    """
        CreateStmt IndexStmt CreateEnumStmt AlterEnumStmt CreateDomainStmt AlterDomainStmt CompositeTypeStmt
        CreateRangeStmt CreateSeqStmt AlterSeqStmt ViewStmt CreateFunctionStmt AlterFunctionStmt
        CreateTrigStmt CreateSchemaStmt CreateExtensionStmt CommentStmt GrantStmt GrantRoleStmt
        AlterOwnerStmt AlterDefaultPrivilegesStmt RenameStmt AlterObjectSchemaStmt VariableSetStmt LockStmt
        CreatePolicyStmt AlterPolicyStmt CreateStatsStmt CreateCastStmt DefineStmt AlterTypeStmt
        CreatePLangStmt CreateConversionStmt CreateOpClassStmt CreateOpFamilyStmt AlterOperatorStmt
        AlterStatsStmt SecLabelStmt
    """.split()
)

# ALTER TABLE subcommands that keep every row and every value.
_HARMLESS_AT = frozenset(
    """
        AT_AddColumn AT_AddColumnToView AT_ColumnDefault AT_CookedColumnDefault AT_DropNotNull AT_SetNotNull
        AT_DropExpression AT_SetExpression AT_SetStatistics AT_SetOptions AT_ResetOptions AT_SetStorage
        AT_SetCompression AT_AddIndex AT_ReAddIndex AT_AddConstraint AT_ReAddConstraint AT_AlterConstraint
        AT_ValidateConstraint AT_AddIndexConstraint AT_DropConstraint AT_ClusterOn AT_DropCluster
        AT_SetLogged AT_SetUnLogged AT_SetRelOptions AT_ResetRelOptions AT_ReplaceRelOptions AT_ChangeOwner
        AT_SetTableSpace AT_SetAccessMethod AT_EnableTrig AT_EnableAlwaysTrig AT_EnableReplicaTrig
        AT_DisableTrig AT_EnableTrigAll AT_DisableTrigAll AT_EnableTrigUser AT_DisableTrigUser AT_EnableRule
        AT_EnableAlwaysRule AT_EnableReplicaRule AT_DisableRule AT_AddInherit AT_DropInherit AT_AddOf
        AT_DropOf AT_ReplicaIdentity AT_EnableRowSecurity AT_DisableRowSecurity AT_ForceRowSecurity
        AT_NoForceRowSecurity AT_AddIdentity AT_SetIdentity AT_DropIdentity AT_AttachPartition
        AT_DetachPartition AT_DetachPartitionFinalize AT_ReAddStatistics AT_ReAddComment
        AT_ReAddDomainConstraint AT_GenericOptions AT_AlterColumnGenericOptions
    """.split()
)

# DROP of these object kinds: what they hold (or take with CASCADE) is resolved from the catalog.
_DROP_KINDS = {
    "OBJECT_TABLE": "table",
    "OBJECT_MATVIEW": "matview",
    "OBJECT_VIEW": "view",
    "OBJECT_FOREIGN_TABLE": "foreign_table",
    "OBJECT_TYPE": "type",
    "OBJECT_DOMAIN": "domain",
    "OBJECT_SCHEMA": "schema",
    "OBJECT_EXTENSION": "extension",
    "OBJECT_FUNCTION": "function",
    "OBJECT_PROCEDURE": "function",
    "OBJECT_ROUTINE": "function",
}
# DROP of these never takes rows with it, CASCADE or not (nothing with data depends on them).
# An index, a sequence (CASCADE takes column defaults, not columns), a trigger, ...
_DROP_NO_DATA = frozenset(
    {"OBJECT_INDEX", "OBJECT_SEQUENCE", "OBJECT_TRIGGER", "OBJECT_POLICY", "OBJECT_RULE", "OBJECT_STATISTIC_EXT"}
)
_MODIFYING = ("DeleteStmt", "UpdateStmt", "InsertStmt", "MergeStmt")


class _Collector(Visitor):
    """Function calls, relations and data-modifying statements nested anywhere in a node."""

    def __init__(self):
        super().__init__()
        self.functions: list[tuple[str, ...]] = []
        self.relations: list[tuple[str, ...]] = []
        self.sublinks = 0
        self.modifying = 0

    def visit_FuncCall(self, _ancestors, node):
        self.functions.append(_names(node.funcname))

    def visit_RangeVar(self, _ancestors, node):
        self.relations.append(_range_name(node))

    def visit_SubLink(self, _ancestors, _node):
        self.sublinks += 1

    def visit_CommonTableExpr(self, _ancestors, node):
        if type(node.ctequery).__name__ in _MODIFYING:
            self.modifying += 1


def _collect(node) -> _Collector:
    collector = _Collector()
    if node is not None:
        collector(node)
    return collector


def _drop_effects(stmt) -> list[Effect]:
    remove = stmt.removeType.name
    cascade = stmt.behavior == enums.DropBehavior.DROP_CASCADE
    if remove in _DROP_NO_DATA:
        return []
    kind = _DROP_KINDS.get(remove)
    if kind is None:
        if not cascade:
            return []  # RESTRICT: fails if anything depends on it; nothing with rows is removed
        return [Effect("unsafe", reason=f"DROP {remove[7:]} ... CASCADE: what it takes with it is not resolved")]
    effects = []
    for obj in stmt.objects or ():
        args = None
        if kind == "function":
            name = _names(obj.objname)
            if not obj.args_unspecified:
                args = ", ".join(_deparse(arg) for arg in obj.objargs or ())
        elif kind in ("type", "domain"):
            name = _names(obj.names)
        elif kind in ("schema", "extension"):
            name = (obj.sval,)
        else:
            name = _names(obj)
        effects.append(Effect("drop", kind, name, cascade=cascade, missing_ok=bool(stmt.missing_ok), args=args))
    return effects


def _alter_table_effects(stmt) -> list[Effect]:
    if stmt.objtype != enums.ObjectType.OBJECT_TABLE:
        # ALTER INDEX / VIEW / MATERIALIZED VIEW / SEQUENCE / FOREIGN TABLE ...: no rows of ours change
        return []
    table = _range_name(stmt.relation)
    only = not stmt.relation.inh
    effects = []
    for cmd in stmt.cmds or ():
        subtype = cmd.subtype.name
        cascade = cmd.behavior == enums.DropBehavior.DROP_CASCADE
        if subtype == "AT_DropColumn":
            effects.append(
                Effect("drop_column", "table", table, cmd.name, cascade, bool(cmd.missing_ok or stmt.missing_ok), only)
            )
        elif subtype == "AT_AlterColumnType":
            effects.append(Effect("alter_type", "table", table, cmd.name, missing_ok=bool(stmt.missing_ok), only=only))
        elif subtype not in _HARMLESS_AT:
            effects.append(Effect("unsafe", reason=f"ALTER TABLE subcommand {subtype[3:]} is not known to keep rows"))
    return effects


def _row_effect(stmt, kind: str) -> Effect:
    """DELETE or UPDATE: archivable when the rows can be selected first, exactly, in the same transaction."""
    table = _range_name(stmt.relation)
    alias = stmt.relation.alias.aliasname if stmt.relation.alias else None
    where = _collect(stmt.whereClause)
    extra = stmt.usingClause if kind == "delete" else stmt.fromClause
    reason = ""
    if stmt.withClause is not None:
        reason = "it has a WITH clause"
    elif extra:
        reason = "it reads other relations (" + ("USING" if kind == "delete" else "FROM") + ")"
    elif where.sublinks or where.relations:
        reason = "its condition reads other relations (subquery)"
    elif getattr(stmt, "whereClause", None) is not None and type(stmt.whereClause).__name__ == "CurrentOfExpr":
        reason = "it uses WHERE CURRENT OF"
    set_columns = ()
    if kind == "update":
        set_columns = tuple(dict.fromkeys(target.name for target in stmt.targetList or ()))
    return Effect(
        kind,
        "table",
        table,
        only=not stmt.relation.inh,
        where=_deparse(stmt.whereClause) if stmt.whereClause is not None else None,
        alias=alias,
        set_columns=set_columns,
        where_functions=tuple(dict.fromkeys(where.functions)),
        archivable=not reason,
        reason=reason,
    )


def _unsafe(reason: str) -> list[Effect]:
    return [Effect("unsafe", reason=reason)]


def _truncate_effects(stmt) -> list[Effect]:
    cascade = stmt.behavior == enums.DropBehavior.DROP_CASCADE
    return [Effect("truncate", "table", _range_name(rv), cascade=cascade, only=not rv.inh) for rv in stmt.relations]


def _insert_effects(stmt) -> list[Effect]:
    conflict = stmt.onConflictClause
    if conflict is not None and conflict.action == enums.OnConflictAction.ONCONFLICT_UPDATE:
        return _unsafe("INSERT ... ON CONFLICT DO UPDATE rewrites existing rows")
    return []


def _explain_effects(stmt) -> list[Effect]:
    if type(stmt.query).__name__ in _MODIFYING:
        return _unsafe("EXPLAIN ANALYZE of a statement that writes")
    return []


# Statements that evaluate expressions over rows: their effects, and their function calls are checked.
_EVALUATING = {
    "AlterTableStmt": _alter_table_effects,
    "TruncateStmt": _truncate_effects,
    "DeleteStmt": lambda stmt: [_row_effect(stmt, "delete")],
    "UpdateStmt": lambda stmt: [_row_effect(stmt, "update")],
    "InsertStmt": _insert_effects,
    "SelectStmt": lambda _stmt: [],
    "CreateTableAsStmt": lambda _stmt: [],
    "ExplainStmt": _explain_effects,
}
_UNSAFE = {
    "DoStmt": "a DO block can do anything",
    "CallStmt": "CALL runs a procedure, which may write",
    "MergeStmt": "MERGE may delete and update rows",
}


def _effects(stmt) -> tuple[list[Effect], list[tuple[str, ...]]]:
    """(effects, function calls to check) of one parsed statement."""
    node = type(stmt).__name__
    if node in _HARMLESS or node == "TransactionStmt":
        return [], []
    if node == "DropStmt":
        return _drop_effects(stmt), []
    if node in _UNSAFE:
        return _unsafe(_UNSAFE[node]), []
    if node not in _EVALUATING:
        return _unsafe(f"{node} is not known to keep every row"), []
    collected = _collect(stmt)
    if collected.modifying:
        return _unsafe("a WITH clause modifies data"), []
    effects = _EVALUATING[node](stmt)
    return effects, ([] if any(e.kind == "unsafe" for e in effects) else collected.functions)


def _version_write(stmt) -> tuple[tuple[str, ...] | None, str | None]:
    node = type(stmt).__name__
    if node in ("InsertStmt", "UpdateStmt", "DeleteStmt") and stmt.relation is not None:
        return _range_name(stmt.relation), node[:6].upper()
    if node == "DropStmt" and stmt.removeType == enums.ObjectType.OBJECT_TABLE and len(stmt.objects or ()) == 1:
        return _names(stmt.objects[0]), "DROP"
    return None, None


def analyze(sql: str) -> list[Statement]:
    """Every statement of `sql`, classified. SqlAnalysisError if PostgreSQL's parser rejects the text."""
    if not HAS_PGLAST:  # pragma: no cover
        raise SqlAnalysisError("pglast is not installed: the downgrade's SQL cannot be analyzed")
    try:
        parsed = parse_sql(sql)
    except ParseError as exc:
        where = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], int) else None  # character offset
        at = f" at line {sql.count(chr(10), 0, where) + 1}" if where is not None else ""
        raise SqlAnalysisError(f"PostgreSQL's parser rejects the SQL{at}: {exc.args[0] if exc.args else exc}") from None
    statements = []
    for index, raw in enumerate(parsed):
        start = raw.stmt_location or 0
        text = (sql[start : start + raw.stmt_len] if raw.stmt_len else sql[start:]).strip()
        stmt = raw.stmt
        effects, functions = _effects(stmt)
        target, op = _version_write(stmt)
        transaction = stmt.kind.name.removeprefix("TRANS_STMT_") if type(stmt).__name__ == "TransactionStmt" else None
        statements.append(
            Statement(
                index=index,
                text=text,
                node=type(stmt).__name__,
                sha256=canonical_sha256(stmt, text),
                effects=tuple(effects),
                functions=tuple(f for f in dict.fromkeys(functions) if f),
                transaction=transaction,
                version_target=target,
                version_op=op,
                altered=_range_name(stmt.relation) if type(stmt).__name__ == "AlterTableStmt" else None,
            )
        )
    return statements


__all__ = ["HAS_PGLAST", "Effect", "SqlAnalysisError", "Statement", "analyze", "canonical_sha256", "quote_ident"]
