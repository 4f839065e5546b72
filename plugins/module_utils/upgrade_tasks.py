# Copyright: contributors to the emergency-rollback runbook
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The schema_upgrade plugin over one database or many (plugins/modules/schema_upgrade.py documents it):
many databases are upgraded in worker processes (alembic's op/context are process-wide), each under a
watchdog, and every database is reported."""

from __future__ import annotations

import os

from ansible.module_utils.pg_session import DSN_ENV_VAR
from ansible.module_utils.schema_jobs import GUARDED_OPTIONS, lost_result, run_databases
from ansible.module_utils.schema_revert import new_run_id
from ansible.module_utils.schema_tasks import databases_result, duplicate_names, single_result
from ansible.module_utils.upgrade_runner import upgrade_database


def _lost_database(job: dict, reason: str) -> dict:
    return lost_result(job, reason, "upgrade", from_revision=None, steps=[], restore=None)


def upgrade_databases(jobs: list[dict], parallel: int = 2, database_timeout: float | None = None) -> list[dict]:
    """upgrade_database() for every job, at most `parallel` at a time (new interpreters, schema_jobs.run_databases),
    results in job order."""
    return run_databases(
        "ansible.module_utils.upgrade_runner:upgrade_database",
        upgrade_database,
        jobs,
        parallel=parallel,
        database_timeout=database_timeout,
        lost=_lost_database,
    )


JOB_OPTIONS = (*GUARDED_OPTIONS, "restore", "accept_conflicts", "restored_by")


def run_schema_upgrade(params: dict, check_mode: bool = False, diff: bool = False) -> dict:
    """The schema_upgrade plugin (see plugins/modules/schema_upgrade.py)."""
    if params["parallel"] < 1:
        return {"changed": False, "failed": True, "msg": "parallel must be at least 1."}
    base = {key: params[key] for key in JOB_OPTIONS}
    base.update(check_mode=check_mode, run_id=params["run_id"] or new_run_id())
    base["accept_conflicts"] = [str(r).strip() for r in base["accept_conflicts"] or [] if str(r).strip()]
    if params["databases"] is None:
        dsn = params["dsn"] or os.environ.get(DSN_ENV_VAR)
        return single_result(upgrade_database({**base, "dsn": dsn}), dsn)
    problem = duplicate_names(params["databases"])
    if problem:
        return {"changed": False, "failed": True, "msg": problem}
    jobs = [{**base, "name": db["name"], "dsn": db["dsn"]} for db in params["databases"]]
    results = upgrade_databases(jobs, params["parallel"], params["database_timeout"])
    restored = sum((r.get("restore") or {}).get("rows_restored", 0) for r in results if not r["failed"])
    summary = databases_result(results, "upgrade", {"run_id": base["run_id"], "rows_restored": restored})
    if summary.get("failed"):
        return summary
    verb = ("would be upgraded", "would be restored") if check_mode else ("upgraded", "restored")
    summary["msg"] = (
        f"{sum(bool(r['steps']) for r in results)} of {len(results)} database(s) {verb[0]}; "
        f"{restored} archived row(s) {verb[1]}."
    )
    return summary
