"""app_verify against the real Prometheus and app instances of the rehearsal stack.

Missing data is never health: no traffic, a wrong job label, a renamed metric (Prometheus answers an
empty vector), Prometheus down or refusing the query are each `inconclusive`, naming what could not
be checked; real 5xx traffic and an unhealthy instance are `failed`; real traffic through healthy
instances is `verified`.
"""

from __future__ import annotations

import time

import pytest
from ansible.module_utils.app_verify import run_app_verify

from rehearsal.postgres import free_port

pytestmark = pytest.mark.integration

JOB = 'job="transformation-engine"'
SELECTOR = JOB + ',path="/transform"'


def params(stack, **overrides) -> dict:
    base = {
        "mode": "verify",
        "health_urls": [stack.url(name) + "/healthz" for name in ("app-1", "app-2")],
        "health": {"status_codes": [200], "json_key": "status", "json_value": "ok"},
        "prometheus_url": stack.url("prometheus"),
        "metric": "http_requests_total",
        "status_label": "status",
        "selector": SELECTOR,
        "error_status": "5..",
        "requests_query": None,
        "errors_query": None,
        "window": "30s",
        "min_requests": 10,
        "baseline": 0.0,
        "tolerance": 0.01,
        "wait": 60,
        "interval": 1,
        "timeout": 5,
        "validate_certs": True,
        "ca_path": None,
    }
    return {**base, **overrides}


def wait_until(check, what: str, timeout: float = 90) -> None:
    """A precondition of the test (not a timing assertion): poll until it holds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"precondition not reached: {what}")
        time.sleep(0.5)


def requests_in(stack, selector: str, window: str) -> float:
    result = stack.prometheus_query(f"sum(increase(http_requests_total{{{selector}}}[{window}]))")
    return float(result[0]["value"][1]) if result else -1.0


@pytest.fixture
def traffic(stack_baseline):
    """Steady legacy-path traffic through both instances while the test runs."""
    generator = stack_baseline.load(rate=20).start()
    yield stack_baseline
    generator.stop()


def test_healthy_instances_and_real_traffic_are_verified(traffic):
    stack = traffic
    result = run_app_verify(params(stack))
    assert result["verdict"] == "verified", result
    assert result["error_rate"]["state"] == "ok" and result["error_rate"]["requests"] >= 10
    assert result["error_rate"]["ratio"] == 0
    assert [i["healthy"] for i in result["instances"]] == [True, True]
    assert result["problems"] == [] and result["unchecked"] == []
    assert result["msg"].startswith("Verified: 2 instance(s) healthy")


def test_no_traffic_is_inconclusive(stack_baseline):
    stack = stack_baseline
    quiet = SELECTOR + ',app_instance="app-2"'
    wait_until(lambda: requests_in(stack, quiet, "10s") == 0, "no request to app-2 in the last 10 s")
    result = run_app_verify(params(stack, selector=quiet, window="10s", wait=0))
    assert result["verdict"] == "inconclusive", result
    assert result["error_rate"]["state"] == "too_few_requests"
    assert result["error_rate"]["requests"] == 0 and result["error_rate"]["ratio"] is None
    assert "only 0 request(s) in the last 10s, fewer than the minimum 10" in result["msg"]
    assert "check that traffic reaches the instances" in result["msg"]


def test_too_little_traffic_is_inconclusive(traffic):
    stack = traffic
    wait_until(lambda: requests_in(stack, SELECTOR, "30s") > 0, "some traffic in Prometheus")
    result = run_app_verify(params(stack, min_requests=10**9, wait=0))
    assert result["verdict"] == "inconclusive", result
    assert result["error_rate"]["state"] == "too_few_requests" and result["error_rate"]["requests"] > 0


@pytest.mark.parametrize(
    "overrides",
    [
        {"selector": 'job="transformation-engine-typo",path="/transform"'},
        {"metric": "http_requests_renamed_total"},
        {"requests_query": 'sum(up{job="no-such-job"})', "errors_query": "vector(0)"},
    ],
    ids=["wrong-job-label", "renamed-metric", "empty-vector"],
)
def test_no_series_is_inconclusive_even_under_traffic(traffic, overrides):
    stack = traffic
    wait_until(lambda: requests_in(stack, SELECTOR, "30s") > 0, "some traffic in Prometheus")
    result = run_app_verify(params(stack, wait=2, **overrides))
    assert result["verdict"] == "inconclusive", result
    assert result["error_rate"]["state"] == "no_series" and result["error_rate"]["ratio"] is None
    assert "has no series for" in result["msg"] and "metrics preset" in result["msg"]
    assert result["polls"] >= 2, "missing series may appear later: it polls until the wait ends"


def test_prometheus_unreachable_is_inconclusive_with_why(stack_baseline):
    stack = stack_baseline
    result = run_app_verify(params(stack, prometheus_url=f"http://127.0.0.1:{free_port()}", wait=2))
    assert result["verdict"] == "inconclusive", result
    assert result["error_rate"]["state"] == "unreachable"
    assert "did not answer (could not connect" in result["msg"]


def test_a_query_prometheus_refuses_is_inconclusive_at_once(stack_baseline):
    stack = stack_baseline
    result = run_app_verify(params(stack, requests_query="sum(", errors_query="sum(", wait=30))
    assert result["verdict"] == "inconclusive", result
    assert result["error_rate"]["state"] == "refused" and "bad_data" in result["msg"]
    assert result["polls"] == 1, "a query Prometheus refuses will not get better by waiting"


def test_no_prometheus_configured_is_inconclusive(stack_baseline):
    result = run_app_verify(params(stack_baseline, prometheus_url="", wait=30))
    assert result["verdict"] == "inconclusive" and result["error_rate"]["state"] == "not_configured"
    assert "rollback_prometheus_url" in result["msg"]


def test_real_5xx_traffic_fails_the_verification(stack_baseline):
    """The flag on at the legacy schema: the new path writes a column that is not there, every request is a 503."""
    stack = stack_baseline
    stack.set_flag(True)
    stack.wait_for_path("new")
    generator = stack.load(rate=20).start()
    try:
        wait_until(
            lambda: requests_in(stack, SELECTOR + ',status="503"', "30s") > 10, "503s of the new path in Prometheus"
        )
        result = run_app_verify(params(stack, wait=2))
    finally:
        generator.stop()
    assert result["verdict"] == "failed", result
    assert result["error_rate"]["state"] == "ok" and result["error_rate"]["ratio"] > result["error_rate"]["limit"]
    assert "the 5xx ratio is" in result["msg"] and "above the baseline 0 + tolerance 0.01" in result["msg"]


def test_an_unhealthy_instance_fails_the_verification(traffic):
    stack = traffic
    down = f"http://127.0.0.1:{free_port()}/healthz"
    result = run_app_verify(params(stack, health_urls=[stack.url("app-1") + "/healthz", down], wait=2))
    assert result["verdict"] == "failed", result
    assert [i["healthy"] for i in result["instances"]] == [True, False]
    assert f"instance {down} is unhealthy (could not connect" in result["msg"]


def test_the_health_contract_is_the_environments(traffic):
    """Spring Boot's actuator says {"status": "UP"}: the rehearsal app's {"status": "ok"} does not meet it."""
    stack = traffic
    result = run_app_verify(params(stack, health={"status_codes": [200], "json_key": "status", "json_value": "UP"}))
    assert result["verdict"] == "failed", result
    assert "status is 'ok', expected 'UP'" in result["msg"]


def test_baseline_mode_reads_the_ratio_or_says_it_could_not(traffic):
    stack = traffic
    wait_until(lambda: requests_in(stack, SELECTOR, "30s") >= 10, "traffic in Prometheus")
    read = run_app_verify(params(stack, mode="baseline"))
    assert read["measured"] is True and read["ratio"] == 0, read
    missing = run_app_verify(params(stack, mode="baseline", selector='job="typo"'))
    assert missing["measured"] is False and missing["ratio"] is None
    assert any("No 5xx baseline" in w for w in missing["warnings"])
