"""The rollback's verification through rollback.yml (ansible-runner), against the real rehearsal stack.

A rollback whose verification cannot see the application (no traffic, a wrong job label: Prometheus
answers an empty vector) completed its actions but is never reported as a success: non-zero exit,
the output, the alert and the audit say `inconclusive` and name what could not be checked.
"""

from __future__ import annotations

import json

import psycopg2
import pytest

from rehearsal.prometheus import JOB
from tests.integration.locking import wait_for

pytestmark = pytest.mark.integration

FEATURE, LEGACY = "0002_data_transformation", "0001_legacy"


def revision(stack) -> str:
    conn = psycopg2.connect(stack.dsn())
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT version_num FROM alembic_version")
            return cur.fetchone()[0]
    finally:
        conn.close()


def end_record(run) -> dict:
    ends = [r for r in run.audit_records() if r.get("kind") == "end"]
    assert ends, f"no audit end record\n{run}"
    return ends[-1]


@pytest.fixture
def deployed_quiet(stack_baseline, playbook):
    """DataTransformationFeature deployed by deploy.yml; no traffic at all (as at 4 a.m., or with the LB drained)."""
    stack = stack_baseline
    run = playbook("playbooks/deploy.yml", extravars={"env": "local", "reason": "release 2.3"}, envvars=stack.env())
    assert run.rc == 0, run
    assert revision(stack) == FEATURE
    return stack


def rollback(playbook, stack, envvars=None, **extravars):
    extravars = {
        "env": "local",
        "reason": "go/no-go failed: 5xx above 2%",
        "rollback_verify_error_rate_wait": 3,
        "rollback_verify_error_rate_interval": 1,
        **extravars,
    }
    return playbook("rollback.yml", extravars=extravars, envvars={**stack.env(), **(envvars or {})})


def assert_inconclusive(stack, run, mails_before: int, says: str) -> dict:
    assert run.rc != 0, "an inconclusive verification must not exit 0"
    assert "Verification inconclusive after" in run.stdout and says in run.stdout, run
    assert "The rollback's steps completed" in run.stdout and "this run is not a success" in run.stdout
    # The rollback's own actions did complete: flag off, schema at the target.
    assert not stack.unleash.flag_enabled("DataTransformationFeature", "default", "production")
    assert revision(stack) == LEGACY
    record = end_record(run)
    assert record["outcome"] != "succeeded" and record["status"] == "failed"
    verification = record["verification"]
    assert verification["verdict"] == "inconclusive", verification
    gaps = [c for c in verification["checks"] if c["verdict"] == "inconclusive"]
    assert [c["name"] for c in gaps] == ["5xx ratio"] and says in gaps[0]["detail"]
    assert {c["verdict"] for c in verification["checks"] if c["name"] != "5xx ratio"} == {"verified"}
    alerts = stack.mails()[mails_before:]
    assert alerts, "an inconclusive verification alerts"
    assert alerts[-1]["subject"].endswith("verification inconclusive"), alerts[-1]["subject"]
    assert "INCONCLUSIVE" in alerts[-1]["text"] and says in alerts[-1]["text"]
    assert "succeeded" not in json.dumps([m["subject"] for m in alerts])
    return record


def wait_until_prometheus_sees_no_traffic(stack, window: str) -> None:
    """The shared stack's previous test may have sent traffic: wait until the window holds none."""
    expr = f'sum(increase(http_requests_total{{job="{JOB}",path="/transform"}}[{window}]))'

    def quiet() -> bool:
        series = stack.prometheus_query(expr)
        return not series or float(series[0]["value"][1]) < 1

    wait_for(quiet, f"Prometheus to see no traffic in the last {window}", timeout=60, interval=1)


def test_a_rollback_without_traffic_is_inconclusive_not_verified(deployed_quiet, playbook):
    stack = deployed_quiet
    wait_until_prometheus_sees_no_traffic(stack, "10s")
    mails_before = len(stack.mails())
    run = rollback(playbook, stack, rollback_verify_error_rate_range="10s")
    record = assert_inconclusive(stack, run, mails_before, "fewer than the minimum 20 to judge a ratio")
    assert record["verification"]["error_rate"]["state"] == "too_few_requests"


def test_a_wrong_job_label_is_inconclusive_even_under_traffic(deployed_quiet, playbook):
    stack = deployed_quiet
    traffic = stack.load(rate=10).start()
    try:
        mails_before = len(stack.mails())
        run = rollback(playbook, stack, envvars={"ROLLBACK_METRICS_JOB": "transformation-engin"})
    finally:
        traffic.stop()
    record = assert_inconclusive(stack, run, mails_before, "has no series for")
    assert 'job="transformation-engin",path="/transform"' in record["verification"]["error_rate"]["detail"]
