"""Put a real deployment back between two measured rollbacks, quickly.

What playbooks/deploy.yml does, without Ansible and in parallel: in every database still at the
rollback point, record the rollback point (revision, fingerprint, 5xx baseline; our module_utils,
under the runbook's advisory lock), `alembic upgrade heads` (alembic's API, one worker process per
database at a time: its proxies are process-wide; the runbook's fork-safe pool with a watchdog,
plugins/module_utils/worker_pool.py); then turn the flag on and wait until both instances take the
new path. deploy.yml itself loops alembic's command line per database (about a
second each here), which is fine once but not before each of dozens of runs over 100 databases.
"""

from __future__ import annotations

import time

from bench import use_module_utils
from rehearsal import appdb
from rehearsal.stack import Stack

use_module_utils()

from ansible.module_utils.schema_rollback_points import read_state  # noqa: E402
from ansible.module_utils.worker_pool import run_jobs  # noqa: E402

HEAD = "0002_data_transformation"
BASELINE_QUERY = (
    'sum(rate(http_requests_total{job="transformation-engine",status=~"5.."}[1m]))'
    ' / clamp_min(sum(rate(http_requests_total{job="transformation-engine"}[1m])), 1e-9)'
)


DATABASE_BUDGET = 120.0  # seconds one database's redeploy may take before the watchdog stops it


def deploy_one(job: dict) -> str | None:
    """Record the rollback point and upgrade one database; an error message, or None."""
    name, dsn, baseline = job["name"], job["dsn"], job["baseline"]
    try:
        if appdb.current_revision(dsn) == HEAD:
            return None
        state = read_state(
            {
                "name": name,
                "dsn": dsn,
                "record_rollback_point": True,
                "recorded_by": "bench (redeploy)",
                "error_rate_baseline": baseline,
                "note": "bench redeploy",
            }
        )
        if state["failed"]:
            return f"{name}: {state['msg']}"
        appdb.migrate(dsn, "heads")
    except Exception as exc:
        return f"{name}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return None


def error_rate_baseline(stack: Stack) -> float:
    result = stack.prometheus_query(BASELINE_QUERY)
    return float(result[0]["value"][1]) if result else 0.0


def redeploy(stack: Stack, databases: list[str], workers: int = 4, timeout: float = 60) -> float:
    """Deploy the feature on `databases` (names) and turn the flag on; seconds it took."""
    began = time.monotonic()
    baseline = error_rate_baseline(stack)
    jobs = [{"name": name, "dsn": stack.dsn(name), "baseline": baseline} for name in databases]
    if len(jobs) == 1:
        errors = [deploy_one(jobs[0])]
    else:
        errors = run_jobs(
            "bench.deploy:deploy_one",
            jobs,
            min(workers, len(jobs)),
            lambda _job: DATABASE_BUDGET,
            lambda job, reason: f"{job['name']}: {reason}",
        )
    errors = [e for e in errors if e]
    if errors:
        raise RuntimeError(f"redeploy failed for {len(errors)} database(s): {'; '.join(errors[:3])}")
    stack.set_flag(True)
    stack.wait_for_path("new", timeout)
    return time.monotonic() - began
