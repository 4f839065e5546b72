# Copyright: contributors to the emergency-rollback runbook
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""What a downgrade drops, and preserving those rows first: the archive (step 4 of the flow).

Finding the drops: the SQL a downgrade runs is split into statements and read by a small
tokenizer that understands quotes, quoted identifiers, comments and dollar quoting. It finds
`DROP TABLE a[, b]` and `ALTER TABLE t ... DROP [COLUMN] c` in every form alembic's `op.drop_table`,
`op.drop_column` and hand-written `op.execute` emit. The same reader serves the plan (check mode,
on the rendered SQL) and the apply (on each statement just before it executes), so what the plan
announces is what the apply preserves. Data removed by other means (DELETE, TRUNCATE, a DROP
inside a DO block or a function) is not seen: a downgrade must not do that.

Preserving: just before a statement that drops a table or column holding rows executes, in the
same transaction, the table is locked ACCESS EXCLUSIVE (the lock the drop takes anyway, so no row
can be written between the copy and the drop; subject to the attempt's lock_timeout), and the
rows are copied with CREATE TABLE AS into `rollback_archive."<run_id>__<table>[__<column>]"`:
a dropped table entirely, a dropped column with the table's primary key (the whole row if it has
none), so it can be restored with one UPDATE ... FROM. Values of types the downgrade may drop too
(ENUMs, domains, other non-built-in types) are stored as text, so the archive never depends on
them. Each copy is listed in `rollback_archive.manifest`. The schema and every table in it are
revoked from PUBLIC and from every other grantee (default privileges included): only the owner
(the migration role) and superusers can read archived rows, which may hold personal data. As
everything happens inside the downgrade's transaction, a failed downgrade leaves no archive.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

try:
    from psycopg2 import sql as pgsql
except ImportError:  # pragma: no cover - the module reports missing_required_lib
    pgsql = None

ARCHIVE_SCHEMA = "rollback_archive"
MANIFEST_TABLE = "manifest"
MAX_IDENTIFIER = 63
RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,39}$")


# -- reading SQL ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Token:
    kind: str  # word | qident | string | punct | number
    value: str
    start: int
    end: int


_WORD = re.compile(r"[A-Za-z_\x80-\uffff][A-Za-z0-9_$\x80-\uffff]*")
_NUMBER = re.compile(r"\d+(?:\.\d*)?(?:[eE][+-]?\d+)?")
_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_][A-Za-z0-9_]*)?\$")


def _comment_end(sql: str, i: int) -> int | None:
    """End of the comment starting at i (-- or nested /* */), or None."""
    if sql.startswith("--", i):
        end = sql.find("\n", i)
        return len(sql) if end < 0 else end + 1
    if not sql.startswith("/*", i):
        return None
    depth, i = 1, i + 2
    while i < len(sql) and depth:
        if sql.startswith("/*", i):
            depth, i = depth + 1, i + 2
        elif sql.startswith("*/", i):
            depth, i = depth - 1, i + 2
        else:
            i += 1
    return i


def _string_end(sql: str, i: int) -> int:
    """End of the string literal starting at i ('...' with '' escapes, or E'...' with backslashes)."""
    escapes = sql[i] != "'"
    i += 2 if escapes else 1
    while i < len(sql):
        if escapes and sql[i] == "\\":
            i += 2
        elif sql.startswith("''", i):
            i += 2
        elif sql[i] == "'":
            return i + 1
        else:
            i += 1
    return len(sql)


def _quoted_identifier(sql: str, i: int) -> Token:
    start, i, chars = i, i + 1, []
    while i < len(sql):
        if sql.startswith('""', i):
            chars.append('"')
            i += 2
        elif sql[i] == '"':
            return Token("qident", "".join(chars), start, i + 1)
        else:
            chars.append(sql[i])
            i += 1
    return Token("qident", "".join(chars), start, len(sql))


def _read_token(sql: str, i: int) -> Token:
    ch = sql[i]
    if ch == "'" or (ch in "eE" and sql.startswith("'", i + 1)):
        end = _string_end(sql, i)
        return Token("string", sql[i:end], i, end)
    if ch == '"':
        return _quoted_identifier(sql, i)
    if ch == "$" and (tag := _DOLLAR_TAG.match(sql, i)):
        close = sql.find(tag.group(), tag.end())
        end = len(sql) if close < 0 else close + len(tag.group())
        return Token("string", sql[i:end], i, end)
    if word := _WORD.match(sql, i):
        return Token("word", word.group(), i, word.end())
    if number := _NUMBER.match(sql, i):
        return Token("number", number.group(), i, number.end())
    return Token("punct", ch, i, i + 1)


def tokenize(sql: str) -> list[Token]:
    """PostgreSQL lexical tokens of `sql`, comments and whitespace dropped."""
    tokens: list[Token] = []
    i = 0
    while i < len(sql):
        if sql[i].isspace():
            i += 1
            continue
        end = _comment_end(sql, i)
        if end is not None:
            i = end
            continue
        token = _read_token(sql, i)
        tokens.append(token)
        i = token.end
    return tokens


def split_statements(sql: str) -> list[str]:
    """The statements of a script, split at semicolons outside quotes, comments and dollar quotes."""
    statements, start = [], 0
    for token in tokenize(sql):
        if token.kind == "punct" and token.value == ";":
            statements.append(sql[start : token.start])
            start = token.end
    statements.append(sql[start:])
    return [s.strip() for s in statements if tokenize(s)]


@dataclass(frozen=True)
class Drop:
    """A table (`column` None) or a column a statement drops. `table` is SQL text for to_regclass()."""

    table: str
    column: str | None = None


def _is_word(token: Token | None, *words: str) -> bool:
    return token is not None and token.kind == "word" and token.value.upper() in words


def _ident_sql(token: Token) -> str:
    if token.kind == "qident":
        return '"' + token.value.replace('"', '""') + '"'
    return token.value.lower()


def _ident_name(token: Token) -> str:
    return token.value if token.kind == "qident" else token.value.lower()


def _qualified_name(tokens: list[Token], i: int) -> tuple[str | None, int]:
    """Read `a[.b[.c]]` from position i; returns (SQL text, next position)."""
    parts = []
    while i < len(tokens) and tokens[i].kind in ("word", "qident"):
        parts.append(_ident_sql(tokens[i]))
        i += 1
        if i < len(tokens) and tokens[i].kind == "punct" and tokens[i].value == ".":
            i += 1
            continue
        break
    return (".".join(parts) if parts else None), i


def _skip_if_exists(tokens: list[Token], i: int) -> int:
    if _is_word(tokens[i] if i < len(tokens) else None, "IF") and _is_word(
        tokens[i + 1] if i + 1 < len(tokens) else None, "EXISTS"
    ):
        return i + 2
    return i


def find_drops(statement: str) -> list[Drop]:
    """The tables and columns one statement drops (empty for anything else)."""
    tokens = tokenize(statement)
    if len(tokens) < 3 or not _is_word(tokens[1], "TABLE"):
        return []
    if _is_word(tokens[0], "DROP"):
        return _drop_table(tokens)
    if _is_word(tokens[0], "ALTER"):
        return _alter_table(tokens)
    return []


def _drop_table(tokens: list[Token]) -> list[Drop]:
    drops, i = [], _skip_if_exists(tokens, 2)
    while i < len(tokens):
        name, i = _qualified_name(tokens, i)
        if name is None:
            break
        drops.append(Drop(name))
        if i < len(tokens) and tokens[i].kind == "punct" and tokens[i].value == ",":
            i += 1
            continue
        break
    return drops


def _alter_table(tokens: list[Token]) -> list[Drop]:
    i = _skip_if_exists(tokens, 2)
    if _is_word(tokens[i] if i < len(tokens) else None, "ONLY"):
        i += 1
    table, i = _qualified_name(tokens, i)
    if table is None:
        return []
    if i < len(tokens) and tokens[i].value == "*":
        i += 1
    # The actions, separated by commas outside parentheses.
    actions: list[list[Token]] = [[]]
    depth = 0
    for token in tokens[i:]:
        if token.kind == "punct" and token.value == "(":
            depth += 1
        elif token.kind == "punct" and token.value == ")":
            depth -= 1
        if token.kind == "punct" and token.value == "," and depth == 0:
            actions.append([])
        else:
            actions[-1].append(token)
    return [drop for action in actions if (drop := _dropped_column(table, action))]


def _dropped_column(table: str, action: list[Token]) -> Drop | None:
    """The column one ALTER TABLE action drops: DROP [COLUMN] [IF EXISTS] name (not DROP CONSTRAINT)."""
    if not action or not _is_word(action[0], "DROP"):
        return None
    j = 1
    if _is_word(action[j] if j < len(action) else None, "CONSTRAINT"):
        return None
    if _is_word(action[j] if j < len(action) else None, "COLUMN"):
        j += 1
    j = _skip_if_exists(action, j)
    if j < len(action) and action[j].kind in ("word", "qident"):
        return Drop(table, _ident_name(action[j]))
    return None


def drops_in_script(sql: str) -> list[Drop]:
    return [drop for statement in split_statements(sql) for drop in find_drops(statement)]


# -- the database side ---------------------------------------------------------------------------
def _relation(cursor, table_sql: str) -> tuple | None:
    """(oid, schema, table, relkind) of the relation `table_sql` names, or None."""
    cursor.execute(
        """SELECT c.oid, n.nspname, c.relname, c.relkind FROM pg_class c
           JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass(%s)""",
        (table_sql,),
    )
    return cursor.fetchone()


def _has_column(cursor, oid: int, column: str) -> bool:
    cursor.execute(
        "SELECT 1 FROM pg_attribute WHERE attrelid = %s AND attname = %s AND attnum > 0 AND NOT attisdropped",
        (oid, column),
    )
    return cursor.fetchone() is not None


def count_drops(cursor, drops: list[Drop]) -> list[dict]:
    """The plan's `drops`: each dropped table or column with the rows it holds now (None if absent)."""
    result = []
    for drop in drops:
        found = _relation(cursor, drop.table)
        entry = {"schema": None, "table": drop.table, "column": drop.column, "rows": None}
        if found and found[3] in ("r", "p"):
            oid, schema, table, _kind = found
            entry.update(schema=schema, table=table)
            if drop.column is None or _has_column(cursor, oid, drop.column):
                cursor.execute(
                    pgsql.SQL("SELECT count(*) FROM {}.{}").format(pgsql.Identifier(schema), pgsql.Identifier(table))
                )
                entry["rows"] = cursor.fetchone()[0]
        result.append(entry)
    return result


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
                "Rows preserved by the emergency rollback before a downgrade dropped them; may hold personal "
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
    _lock_down(cursor, "TABLE", manifest, _TABLE_GRANTEES, (f"{ARCHIVE_SCHEMA}.{MANIFEST_TABLE}",))


def _select_list(cursor, oid: int, column: str | None) -> tuple[list[str], pgsql.Composable]:
    """(key columns, select list): all columns of a dropped table; the primary key (or, without one, all
    other columns) and the column for a dropped column. Non-built-in types are copied as text."""
    cursor.execute(
        """SELECT a.attname,
                  coalesce(et.typnamespace, t.typnamespace) = 'pg_catalog'::regnamespace AS builtin,
                  EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = a.attrelid AND i.indisprimary
                          AND a.attnum = ANY(i.indkey)) AS is_key
           FROM pg_attribute a
           JOIN pg_type t ON t.oid = a.atttypid
           LEFT JOIN pg_type et ON et.oid = t.typelem AND t.typcategory = 'A'
           WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum""",
        (oid,),
    )
    rows = cursor.fetchall()
    keys = [name for name, _builtin, is_key in rows if is_key]
    if column is not None:
        if keys:
            rows = [row for row in rows if row[2] or row[0] == column]
        else:  # no primary key: the whole row identifies it
            keys = [name for name, _builtin, _is_key in rows if name != column]
    parts = []
    for name, builtin, _is_key in rows:
        ident = pgsql.Identifier(name)
        parts.append(ident if builtin else pgsql.SQL("{}::text AS {}").format(ident, ident))
    return keys, pgsql.SQL(", ").join(parts)


class Archiver:
    """Preserves rows before each drop of one downgrade attempt (see the module docstring).

    `before_statement` is called with every statement of the downgrade, on the same connection and
    in the same transaction, just before the statement runs. `drops` lists every dropped table and
    column seen (with rows and where they went); `tables` only those copied.
    """

    def __init__(self, conn, run_id: str, from_revision: str | None, to_revision: str | None, enabled: bool = True):
        self.conn, self.run_id, self.enabled = conn, run_id, enabled
        self.from_revision, self.to_revision = from_revision, to_revision
        self.drops: list[dict] = []
        self.tables: list[dict] = []
        self._schema_ready = False
        self._names: set[str] = set()

    def before_statement(self, statement: str) -> None:
        head = statement.lstrip()[:5].upper()
        if head not in ("DROP ", "ALTER") and not head.startswith(("/*", "--")):
            return
        for drop in find_drops(statement):
            self._preserve(drop)

    def summary(self) -> dict:
        return {
            "enabled": self.enabled,
            "schema": ARCHIVE_SCHEMA,
            "run_id": self.run_id,
            "tables": self.tables,
            "rows": sum(t["rows"] for t in self.tables),
        }

    def _unique_name(self, table: str, column: str | None, schema: str) -> str:
        name, counter = archive_table_name(self.run_id, table, column, schema), 1
        while name in self._names:  # the same table or column dropped twice in one run
            counter += 1
            name = archive_table_name(self.run_id, f"{table}_{counter}", column, schema)
        self._names.add(name)
        return name

    def _preserve(self, drop: Drop) -> None:
        with self.conn.cursor() as cur:
            found = _relation(cur, drop.table)
            if not found or found[3] not in ("r", "p"):
                return  # absent (IF EXISTS) or not a table: nothing holds rows
            oid, schema, table, _kind = found
            if drop.column is not None and not _has_column(cur, oid, drop.column):
                return
            entry = {"schema": schema, "table": table, "column": drop.column, "rows": None, "archive_table": None}
            self.drops.append(entry)
            if not self.enabled:
                return
            source = pgsql.Identifier(schema, table)
            cur.execute(pgsql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(source))
            cur.execute(pgsql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(source))
            if not cur.fetchone()[0]:
                entry["rows"] = 0
                return
            if not self._schema_ready:
                ensure_archive_schema(cur)
                self._schema_ready = True
            name = self._unique_name(table, drop.column, schema)
            target = pgsql.Identifier(ARCHIVE_SCHEMA, name)
            key_columns, select_list = _select_list(cur, oid, drop.column)
            cur.execute(pgsql.SQL("CREATE TABLE {} AS SELECT {} FROM {}").format(target, select_list, source))
            rows = cur.rowcount
            _lock_down(cur, "TABLE", target, _TABLE_GRANTEES, (f'{ARCHIVE_SCHEMA}."{name}"',))
            what = f"{schema}.{table}" + (f".{drop.column}" if drop.column else "")
            cur.execute(
                pgsql.SQL("COMMENT ON TABLE {} IS {}").format(
                    target,
                    pgsql.Literal(
                        f"{what}: rows preserved by emergency rollback run {self.run_id} "
                        f"before downgrade {self.from_revision} -> {self.to_revision} dropped them"
                    ),
                )
            )
            cur.execute(
                pgsql.SQL(
                    """INSERT INTO {} (run_id, from_revision, to_revision, source_schema, source_table,
                                       source_column, archive_table, key_columns, row_count)
                       VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"""
                ).format(pgsql.Identifier(ARCHIVE_SCHEMA, MANIFEST_TABLE)),
                (
                    self.run_id,
                    self.from_revision,
                    self.to_revision,
                    schema,
                    table,
                    drop.column,
                    name,
                    key_columns,
                    rows,
                ),
            )
            entry.update(rows=rows, archive_table=f'{ARCHIVE_SCHEMA}."{name}"')
            self.tables.append(
                {
                    "source": what,
                    "archive_table": f'{ARCHIVE_SCHEMA}."{name}"',
                    "rows": rows,
                    "key_columns": key_columns,
                }
            )
