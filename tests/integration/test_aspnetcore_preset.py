"""The `aspnetcore` preset end to end: a rollback verified on ASP.NET Core 8's metric names.

The rehearsal stack starts one more instance that exports what ASP.NET Core 8 exports through
OpenTelemetry's Prometheus exporter (http_server_request_duration_seconds_count with
http_response_status_code, GET /healthz answering "Healthy"), scraped as its own job. deploy.yml and
rollback.yml run with ROLLBACK_APP_PRESET=aspnetcore against that instance only, under traffic.
"""

from __future__ import annotations

import pytest
from ansible.module_utils.app_verify import run_app_verify

from rehearsal.load import LoadGenerator
from rehearsal.stack import ASPNETCORE_JOB

pytestmark = pytest.mark.integration


def test_a_rollback_is_verified_with_the_aspnetcore_preset(stack_baseline, playbook):
    stack = stack_baseline
    url = stack.start_aspnetcore_app()
    env = {
        **stack.env(),
        "ROLLBACK_APP_PRESET": "aspnetcore",
        "ROLLBACK_METRICS_JOB": ASPNETCORE_JOB,
        "APP_URLS": url,
        "APP_STATUS_URLS": f"{url}/status",
    }
    deploy = playbook("playbooks/deploy.yml", extravars={"env": "local", "reason": "release 2.3"}, envvars=env)
    assert deploy.rc == 0, deploy
    traffic = LoadGenerator([url], rate=10).start()
    try:
        run = playbook("rollback.yml", extravars={"env": "local", "reason": "aspnetcore preset"}, envvars=env)
    finally:
        summary = traffic.stop()
    assert run.rc == 0, run
    assert summary["requests"] > 0 and summary["failed"] == 0
    end = [r for r in run.audit_records() if r.get("kind") == "end"][-1]
    verification = end["verification"]
    assert verification["verdict"] == "verified", verification
    assert verification["error_rate"]["state"] == "ok" and verification["error_rate"]["requests"] >= 20
    assert [c["name"] for c in verification["checks"] if c["name"].startswith("instance")] == [
        f"instance {url}/healthz"
    ]
    assert "5xx ratio" in [c["name"] for c in verification["checks"]]


def test_the_other_presets_see_no_series_on_aspnetcore_names(stack_baseline):
    """The rehearsal preset's counter does not exist on that instance: inconclusive, never verified."""
    stack = stack_baseline
    url = stack.start_aspnetcore_app()
    result = run_app_verify(
        {
            "health_urls": [f"{url}/healthz"],
            "health": {"status_codes": [200], "text": "Healthy"},
            "prometheus_url": stack.url("prometheus"),
            "metric": "http_requests_total",
            "status_label": "status",
            "selector": f'job="{ASPNETCORE_JOB}"',
            "window": "1m",
            "wait": 0,
        }
    )
    assert result["verdict"] == "inconclusive" and result["error_rate"]["state"] == "no_series", result
