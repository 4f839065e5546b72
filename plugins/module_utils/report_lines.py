# Copyright: contributors to the emergency-rollback runbook
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The lines the playbooks show about each database, from a plugin's `databases` list.

One function per place, each a filter of plugins/filter/rollback_report.py (`ansible-doc -t filter
<name>`): the preflight's plan and its warnings (rollback_preflight), status.yml's revisions and
archives, archive_purge.yml's purge, deploy.yml's refused restores. Tests and drills read these
lines: change their words together with tests/ and molecule/.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

ABORTED_WINDOW_SECONDS = 86400  # earlier runs that never finished are reported for one day


def _str(value: Any) -> str:
    """As Jinja's `~` writes a value."""
    return str(value)


def audit_warnings(audit: Mapping[str, Any] | None, now: float) -> list[str]:
    """The preflight's warnings from audit_verify's result: a broken chain, runs aborted in the day before `now`.

    `now` is the controller's clock (seconds since the epoch, `now(utc=true).timestamp()`), passed in so
    that tests choose it. Runs are compared by their `started_at` (ISO 8601, UTC) as text, to the second.
    """
    audit = audit or {}
    out = (
        []
        if audit.get("ok", False)
        else ["the audit chain is broken: " + _str(audit.get("msg", "the audit file cannot be read"))]
    )
    since = datetime.fromtimestamp(now - ABORTED_WINDOW_SECONDS, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
    for run in audit.get("aborted_runs", []):
        if run["started_at"] >= since:
            out.append(
                f"earlier run {run['run_id']} ({run['started_at']}) never finished, killed?"
                " The state read below says what it left; rows it archived carry its run id."
            )
    return out


def plan_lines(databases: Iterable[Mapping[str, Any]]) -> list[str]:
    """One line per database of the downgrade plan (schema_migration in check mode): revisions, SQL sha256, rows."""
    lines = []
    for db in databases:
        line = f"{db['name']}: {db.get('from_revision')} -> {db.get('to_revision')}"
        if db.get("changed"):
            rows = sum(drop.get("rows") or 0 for drop in db.get("drops", []))
            line += f", sql sha256 {db['sql_sha256'][:12]}, {rows} rows to archive"
        else:
            line += " (already there)"
        lines.append(line)
    return lines


def revision_lines(state: Mapping[str, Any]) -> list[str]:
    """status.yml: one line per database of schema_state's result, its revision and drift from its rollback point."""
    heads = ",".join(_str(head) for head in state.get("heads", []))
    lines = []
    for db in state.get("databases", []):
        point = db.get("rollback_point") or {}
        if not point:
            drift = "no rollback point recorded"
        elif db.get("revision") == point.get("revision"):
            same = db.get("fingerprint") == point.get("fingerprint")
            drift = "at the rollback point, schema " + (
                "as recorded" if same else "DRIFTED from the recorded fingerprint"
            )
        else:
            drift = (
                f"rollback point {point.get('revision')} recorded {point.get('recorded_at')}"
                f" by {point.get('recorded_by')}"
            )
        lines.append(f"{db['name']}: revision {db.get('revision')} (heads {heads}); {drift}")
    return lines


def archive_lines(databases: Iterable[Mapping[str, Any]], retention_days: float) -> list[str]:
    """status.yml: each database's rollback archives (rollback_archive's list), restored or when purgeable."""
    lines = []
    for db in databases:
        archives = db.get("archives", [])
        live = [a for a in archives if a.get("purged") != "yes"]
        purged = len(archives) - len(live)
        if not live:
            lines.append(f"{db['name']}: no rollback archive")
        for a in live:
            if a.get("restored") == "yes":
                restored = f"restored {a.get('restored_at')} by run {','.join(map(_str, a.get('restore_run_ids', [])))}"
                purgeable = ""
            else:
                restored = "PARTLY restored" if a.get("restored") == "partly" else "NOT restored"
                left = round(max(retention_days - a["age_days"], 0), 1)
                purgeable = f"; purgeable in {left} day(s) (retention {retention_days} days)"
            tables = a.get("tables", [])
            lines.append(
                f"{db['name']}: archive of rollback run {a.get('run_id')}, {a.get('age_days')} day(s) old,"
                f" {a.get('rows')} row(s) in {len(tables)} table(s)/column(s)"
                f" ({', '.join(_str(t.get('source')) for t in tables)}), {restored}{purgeable}"
            )
        if purged:
            lines.append(f"{db['name']}: {purged} purged archive(s) listed in the manifest")
    return lines


def purge_lines(databases: Iterable[Mapping[str, Any]], check_mode: bool) -> list[str]:
    """archive_purge.yml: one line per rollback run each database purged (or would purge, in check mode)."""
    done = " (would be purged)" if check_mode else " purged"
    return [
        f"{db['name']}: rollback run {run.get('run_id')}, {run.get('age_days')} day(s) old,"
        f" {run.get('rows')} row(s), restored: {run.get('restored')}{done}"
        for db in databases
        for run in db.get("would_purge", [])
    ]


def restore_refusals(databases: Iterable[Mapping[str, Any]], accepted: Iterable[str]) -> list[dict]:
    """deploy.yml: the databases whose archived rows conflict, with the rollback runs the operator has not accepted.

    Each is {name, msg, runs}; runs keep schema_upgrade's order, once each.
    """
    accepted = set(accepted)
    out = []
    for db in databases:
        restore = db.get("restore") or {}
        runs = list(dict.fromkeys(run for run in restore.get("conflicting_runs", []) if run not in accepted))
        if runs:
            out.append({"name": db["name"], "msg": db.get("msg"), "runs": runs})
    return out
