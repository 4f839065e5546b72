# Copyright: contributors to the emergency-rollback runbook
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The per-database facts each step hands the audit: one place that says what the audit keeps of a plugin's result.

A schema plugin (schema_migration, schema_upgrade, rollback_archive) returns `databases`, one result
per database. The step's role publishes, with `ansible.builtin.set_stats` under `rollback_audit`, a
dict keyed by database name holding the keys below (docs/interfaces.md, "What each step publishes"):
the filter `rollback_audit_databases(<kind>)` (plugins/filter/rollback_report.py) calls
`audit_databases`. A key missing from a database's result gets the default named here (a database
refused before it was reached has no revision: `None`), never an error: the audit is written in an
`always:` section, also when the plugin failed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any


class UnknownAuditKind(ValueError):
    """The filter was asked for a kind of facts that does not exist (a typo in a role)."""


def _plan(db: Mapping[str, Any]) -> dict:
    """rollback_preflight, `plan`: the downgrade approved before the schema step (schema_migration, check mode)."""
    return {
        "from_revision": db.get("from_revision"),
        "sql_sha256": db.get("sql_sha256"),
        "drops": db.get("drops", []),
        "data_statements": db.get("data_statements", []),
    }


def _revert(db: Mapping[str, Any]) -> dict:
    """rollback_schema, `databases`: each database's revert (schema_migration)."""
    return {
        "revision_before": db.get("from_revision"),
        "revision_after": db.get("to_revision"),
        "changed": db.get("changed"),
        "failed": db.get("failed", False),
        "sql_sha256": db.get("sql_sha256", ""),
        "archive": db.get("archive"),
        "attempts": db.get("attempts", 0),
        "lock_wait_seconds": db.get("lock_wait_seconds", 0),
        "msg": db.get("msg", ""),
        "data_statements": db.get("data_statements", []),
        "accepted_data_statements": db.get("accepted_data_statements", []),
        "accepted_effects": db.get("accepted_effects", []),
    }


def _restore_plan(db: Mapping[str, Any]) -> dict:
    """deploy.yml, `restore_plan`: each database's upgrade steps and what it would restore (schema_upgrade --check)."""
    return {"steps": [step.get("revision") for step in db.get("steps", [])], "restore": db.get("restore")}


def _upgrade(db: Mapping[str, Any]) -> dict:
    """deploy.yml, `databases`: each database's upgrade and restore (schema_upgrade); a failed one stayed put."""
    failed = db.get("failed", False)
    return {
        "revision_before": db.get("from_revision"),
        "revision_after": db.get("from_revision") if failed else db.get("to_revision"),
        "changed": db.get("changed"),
        "failed": failed,
        "attempts": db.get("attempts", 0),
        "lock_wait_seconds": db.get("lock_wait_seconds", 0),
        "duration_seconds": db.get("duration_seconds"),
        "restore": db.get("restore"),
        "msg": db.get("msg"),
    }


def _purge(db: Mapping[str, Any]) -> dict:
    """archive_purge.yml, `purge.databases`: what each database purged, or would purge (rollback_archive)."""
    return {
        "failed": db.get("failed", False),
        "would_purge": db.get("would_purge", []),
        "purged": db.get("purged", []),
        "msg": db.get("msg", ""),
    }


KINDS: dict[str, Callable[[Mapping[str, Any]], dict]] = {
    "plan": _plan,
    "revert": _revert,
    "restore_plan": _restore_plan,
    "upgrade": _upgrade,
    "purge": _purge,
}


def audit_databases(databases: Iterable[Mapping[str, Any]] | None, kind: str) -> dict[str, dict]:
    """{database name: the audit's facts of that kind} from a plugin's `databases` list (None: no result, {})."""
    try:
        facts = KINDS[kind]
    except KeyError:
        raise UnknownAuditKind(
            f"rollback_audit_databases has no kind {kind!r}: use one of {', '.join(KINDS)}."
        ) from None
    return {db["name"]: facts(db) for db in databases or []}
