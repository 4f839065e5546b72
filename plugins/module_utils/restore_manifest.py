# Copyright: contributors to the emergency-rollback runbook
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The rollback archive's manifest as the way forward reads and marks it, and how its reports read.

`rollback_archive.manifest` is written by the archive (plugins/module_utils/schema_archive.py) and read
here by its documented columns only (docs/interfaces.md): id, run_id, archived_at, from_revision,
to_revision, source_schema, source_table, source_column, archive_table, key_columns, row_count, and
when present action, revision, statement_sha256. The way forward adds its own columns, with ALTER
TABLE ... ADD COLUMN IF NOT EXISTS the first time it writes: the restore's (restored_at, restored_by,
restore_run_id, restored_rows, restore_conflict_rows, restore_outcome; schema_restore.py) and the
purge's (purged_at, purged_by, purge_run_id; archive_retention.py).
"""

from __future__ import annotations

try:
    from psycopg2 import sql as pgsql
except ImportError:  # pragma: no cover - the module reports missing_required_lib
    pgsql = None

from ansible.module_utils.schema_archive import ARCHIVE_SCHEMA, MANIFEST_TABLE  # the archive writes them
from ansible.module_utils.schema_errors import SchemaError

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
        self.details = {"restore": report}  # the result's `restore` (schema_jobs.finish)


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


# -- reports -------------------------------------------------------------------------------------
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
