# Copyright: contributors to the emergency-rollback runbook
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The restore's part of the upgrade's transaction: which archives come back now, restoring (or, in check
mode, analysing) them, marking them restored, and the summary and the one-sentence refusal of a
deployment whose archived rows conflict (plugins/module_utils/upgrade_runner.py runs it)."""

from __future__ import annotations

from ansible.module_utils.restore_catalog import restore_order, target_exists
from ansible.module_utils.restore_manifest import (
    RestoreConflicts,
    describe_conflicts,
    ensure_manifest_columns,
    mark_restored,
    outcome_of,
)
from ansible.module_utils.schema_alembic import ancestors
from ansible.module_utils.schema_restore import restore_entry


def applicable(entries: list[dict], reached: set[str]) -> tuple[list[dict], list[dict]]:
    """(entries whose from_revision the database is back at or beyond, the others: waiting)."""
    ready = [e for e in entries if e.get("from_revision") in reached]
    waiting = [e for e in entries if e.get("from_revision") not in reached]
    return ready, waiting


def after_upgrade(cursor, script, pending: list[dict], before: dict, targets) -> tuple[list, list, set]:
    """(entries to restore now, entries waiting, the columns this transaction created), after the upgrade.

    An entry is restored when the database is back at (or beyond) its from_revision, or when this
    transaction (re)created its table or column, at whatever revision: a later upgrade would find the
    column holding the upgrade's defaults, or values written since, and could no longer tell them apart.
    A column this transaction created holds the upgrade's defaults: the archived values replace them."""
    reached: set[str] = set()
    for target in targets:
        reached |= ancestors(script, target)
    ready, waiting, fresh = [], [], set()
    for entry in pending:
        level = 1 if entry.get("source_column") else 0
        created = target_exists(cursor, entry)[level] and not before[entry["id"]][level]
        if entry.get("from_revision") in reached or created:
            ready.append(entry)
            if created and level:
                fresh.add((entry["source_schema"], entry["source_table"], entry["source_column"]))
        else:
            waiting.append(entry)
    return ready, waiting, fresh


def restore_summary(reports: list[dict], waiting: list[dict], accepted: set[str]) -> dict:
    runs = sorted({r["run_id"] for r in reports})
    return {
        "archives": reports,
        "runs": runs,
        "rows_restored": sum(r["restored"] for r in reports),
        "already_present": sum(r["already_present"] for r in reports),
        "conflict_rows": sum(r["conflict_rows"] for r in reports),
        "conflicting_runs": sorted({r["run_id"] for r in reports if r["conflict_rows"]}),
        "accepted": sorted({r["run_id"] for r in reports if r["conflict_rows"] and r["run_id"] in accepted}),
        "predicted": any(r["predicted"] for r in reports),
        "waiting": [
            {"run_id": e["run_id"], "source": _source(e), "from_revision": e.get("from_revision")} for e in waiting
        ],
    }


def _source(entry: dict) -> str:
    what = f"{entry['source_schema']}.{entry['source_table']}"
    return what + (f".{entry['source_column']}" if entry.get("source_column") else "")


def conflicts_message(summary: dict, unaccepted: list[str]) -> str:
    reports = [r for r in summary["archives"] if r["run_id"] in unaccepted and r["conflict_rows"]]
    rows = sum(r["conflict_rows"] for r in reports)
    runs = ", ".join(unaccepted)
    return (
        f"{rows} archived row(s) of rollback run {runs} cannot be restored without overwriting or losing data "
        f"({describe_conflicts(reports)}): nothing was changed, the upgrade was rolled back with the restore; "
        f"review them (check mode lists them), then accept with accept_conflicts [{runs}] "
        "(deploy.yml: -e deploy_accept_restore_conflicts=<run id>) to restore the other rows and keep these in "
        "the archive."
    )


def restore_in_transaction(cursor, entries: list[dict], *, fresh: set, job: dict, apply: bool) -> dict:
    """Restore (or analyse) `entries` in the caller's transaction; mark them when applying.

    Raises RestoreConflicts (applying) when an entry of a run not in accept_conflicts has conflicts."""
    accepted = set(job.get("accept_conflicts") or [])
    if apply and entries:
        ensure_manifest_columns(cursor)
    reports = [restore_entry(cursor, e, apply=apply, fresh_columns=fresh) for e in restore_order(cursor, entries)]
    summary = restore_summary(reports, [], accepted)
    unaccepted = [run for run in summary["conflicting_runs"] if run not in accepted]
    for report in reports:
        report["accepted"] = report["run_id"] in accepted and bool(report["conflict_rows"])
        report["outcome"] = outcome_of(report, report["accepted"])
    if apply and unaccepted:
        raise RestoreConflicts(conflicts_message(summary, unaccepted), summary)
    if apply:
        by_id = {e["id"]: e for e in entries}
        for report in reports:
            mark_restored(
                cursor, by_id[report["id"]], run_id=job["run_id"], restored_by=job["restored_by"], report=report
            )
    return summary
