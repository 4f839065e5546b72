"""app_verify's pure parts: options, the queries of each metrics preset, the verdict of one poll."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from ansible.module_utils.app_verify import (
    InstanceHealth,
    RateObservation,
    VerifyConfigError,
    build_queries,
    judge,
    run_app_verify,
    static_checks,
    validate,
)
from ansible.module_utils.verify_options import app_verify_spec

ROOT = Path(__file__).resolve().parents[2]


def defaults(**overrides) -> dict:
    spec = app_verify_spec()["argument_spec"]
    params = {name: option.get("default") for name, option in spec.items()}
    params["health"] = {"status_codes": [200], "json_key": None, "json_value": None, "text": None}
    return {**params, **overrides}


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"metric": "http.requests"}, "is not a Prometheus metric name"),
        ({"status_label": "http.status"}, "is not a Prometheus label name"),
        ({"selector": '{job="x"}'}, "without braces"),
        ({"window": "1 minute"}, "is not a Prometheus duration"),
        ({"interval": 0}, "interval must be more than 0"),
        ({"baseline": 4.0}, "baseline is a ratio between 0 and 1"),
        ({"health_urls": ["app-1:8080/healthz"]}, "is not an http(s) URL"),
        ({"health": {"json_value": "UP"}}, "health.json_value needs health.json_key"),
        ({"mode": "sometimes"}, "mode must be one of"),
    ],
)
def test_bad_options_are_refused_in_one_sentence(overrides, expected):
    with pytest.raises(VerifyConfigError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        validate(defaults(**overrides))
    result = run_app_verify(defaults(**overrides))
    assert result["failed"] is True and expected in result["msg"] and "\n" not in result["msg"]
    assert result["msg"].endswith(".") and result["msg"].replace("e.g. ", "").count(". ") == 0


PRESETS = yaml.safe_load((ROOT / "inventories" / "group_vars" / "all.yml").read_text())["rollback_app_presets"]


@pytest.mark.parametrize(
    ("preset", "requests", "errors"),
    [
        (
            "rehearsal",
            'sum(increase(http_requests_total{job="transformation-engine",path="/transform"}[1m]))',
            'sum(increase(http_requests_total{job="transformation-engine",path="/transform",status=~"5.."}[1m]))',
        ),
        (
            "aspnetcore",
            'sum(increase(http_server_request_duration_seconds_count{job="transformation-engine",'
            'http_route!~"/healthz|/status|/metrics"}[1m]))',
            'sum(increase(http_server_request_duration_seconds_count{job="transformation-engine",'
            'http_route!~"/healthz|/status|/metrics",http_response_status_code=~"5.."}[1m]))',
        ),
        (
            "spring_boot",
            'sum(increase(http_server_requests_seconds_count{job="transformation-engine",uri!~"/actuator/.*"}[1m]))',
            'sum(increase(http_server_requests_seconds_count{job="transformation-engine",'
            'uri!~"/actuator/.*",status=~"5.."}[1m]))',
        ),
    ],
)
def test_each_preset_builds_the_query_its_stack_answers(preset, requests, errors):
    chosen = PRESETS[preset]
    selector = chosen["selector"].replace("{{ rollback_metrics_job }}", "transformation-engine")
    params = defaults(metric=chosen["metric"], status_label=chosen["status_label"], selector=selector, window="1m")
    validate(params)
    assert build_queries(params) == {"requests": requests, "errors": errors}


def test_an_empty_selector_still_builds_valid_matchers():
    assert build_queries(defaults(selector="")) == {
        "requests": "sum(increase(http_requests_total{}[1m]))",
        "errors": 'sum(increase(http_requests_total{status=~"5.."}[1m]))',
    }


QUERIES = {"requests": "R", "errors": "E"}
HEALTHY = [InstanceHealth("http://a/healthz", True, 200), InstanceHealth("http://b/healthz", True, 200)]
URLS = ["http://a/healthz", "http://b/healthz"]


@pytest.mark.parametrize(
    ("rate", "verdict", "says"),
    [
        (RateObservation("ok", 1000, 5), "verified", None),
        (RateObservation("ok", 1000, 50), "failed", "the 5xx ratio is 0.0500 over the last 1m (50 of 1000 requests)"),
        (RateObservation("too_few_requests", 3, 0), "inconclusive", "only 3 request(s) in the last 1m"),
        (RateObservation("too_few_requests", 0, 0), "inconclusive", "fewer than the minimum 20"),
        (RateObservation("no_series"), "inconclusive", "has no series for R"),
        (
            RateObservation("unreachable", detail="could not connect (ConnectionError)"),
            "inconclusive",
            "did not answer",
        ),
        (RateObservation("refused", detail="bad_data: parse error"), "inconclusive", "refused the query"),
        (RateObservation("not_configured"), "inconclusive", "no Prometheus is configured"),
    ],
)
def test_one_poll_never_reads_missing_data_as_health(rate, verdict, says):
    poll = judge(HEALTHY, rate, defaults(health_urls=URLS, baseline=0.001, prometheus_url="http://p"), QUERIES)
    assert poll.verdict == verdict
    text = "; ".join(poll.problems + poll.unchecked)
    assert (says in text) if says else text == ""


def test_an_unhealthy_instance_fails_even_when_the_ratio_cannot_be_read():
    sick = [HEALTHY[0], InstanceHealth("http://b/healthz", False, 503, "answered 503, expected 200")]
    poll = judge(sick, RateObservation("no_series"), defaults(health_urls=URLS, prometheus_url="http://p"), QUERIES)
    assert poll.verdict == "failed"
    assert poll.problems == ["instance http://b/healthz is unhealthy (answered 503, expected 200)"]
    assert poll.unchecked, "what could not be checked is still said"


def test_no_instance_listed_is_inconclusive_not_healthy():
    poll = judge([], RateObservation("ok", 1000, 0), defaults(health_urls=[], prometheus_url="http://p"), QUERIES)
    assert poll.verdict == "inconclusive" and "no health URL is configured" in poll.unchecked[0]


def test_nothing_configured_ends_at_once_inconclusive_with_an_injected_clock():
    ticks = iter(range(100))
    slept = []
    result = run_app_verify(defaults(), clock=lambda: next(ticks), sleep=slept.append)
    assert result["verdict"] == "inconclusive" and result["polls"] == 1 and slept == []
    assert len(result["unchecked"]) == 2
    assert any("No 5xx baseline was recorded" in w for w in result["warnings"])


POINT = {"revision": "0001_legacy", "fingerprint": "a" * 64}


@pytest.mark.parametrize(
    ("flag", "database", "kind", "says"),
    [
        ({"state": "disabled"}, {"name": "eu", "revision": "0001_legacy", "fingerprint": "a" * 64}, None, None),
        (
            {"state": "enabled"},
            {"name": "eu", "revision": "0001_legacy", "fingerprint": "a" * 64},
            "problem",
            "the flag reads enabled, not disabled",
        ),
        (
            {"error": "Cannot reach Unleash"},
            {"name": "eu", "revision": "0001_legacy", "fingerprint": "a" * 64},
            "gap",
            "the flag could not be read back (Cannot reach Unleash)",
        ),
        (
            {"state": "disabled"},
            {"name": "eu", "revision": "0002_data_transformation", "fingerprint": "b" * 64},
            "problem",
            "database eu is at 0002_data_transformation, not 0001_legacy",
        ),
        (
            {"state": "disabled"},
            {"name": "eu", "revision": "0001_legacy", "fingerprint": "b" * 64},
            "problem",
            "database eu's schema fingerprint bbbbbbbbbbbb differs from the one recorded before the deployment",
        ),
        (
            {"state": "disabled"},
            {"name": "eu", "failed": True, "msg": "Cannot connect"},
            "gap",
            "database eu could not be read (Cannot connect)",
        ),
        (
            {"state": "disabled"},
            {"name": "us", "revision": "0001_legacy", "fingerprint": "a" * 64},
            "gap",
            "database us's schema was not compared: no fingerprint was recorded",
        ),
    ],
)
def test_what_the_rollback_read_back_is_part_of_the_verdict(flag, database, kind, says):
    checks = static_checks(
        {"flag": flag, "databases": [database], "rollback_points": {"eu": POINT}, "target_revision": "0001_legacy"}
    )
    assert [c.name for c in checks] == ["flag", f"database {database['name']}"]
    judged = [c for c in checks if c.verdict != "verified"]
    if kind is None:
        assert judged == []
    else:
        assert len(judged) == 1 and judged[0].detail.startswith(says)
        assert judged[0].verdict == ("failed" if kind == "problem" else "inconclusive")


def test_databases_that_could_not_be_read_at_all_are_inconclusive():
    checks = static_checks({"databases_error": "alembic is missing", "databases": []})
    assert [(c.name, c.verdict) for c in checks] == [("databases", "inconclusive")]


def test_a_wrong_schema_fails_at_once_without_waiting_for_the_application():
    slept = []
    result = run_app_verify(
        defaults(
            flag={"state": "disabled"},
            databases=[{"name": "eu", "revision": "0002_data_transformation"}],
            target_revision="0001_legacy",
            wait=600,
        ),
        sleep=slept.append,
    )
    assert result["verdict"] == "failed" and result["polls"] == 1 and slept == []
    assert result["msg"].startswith("Verification failed after 0 s: database eu is at 0002_data_transformation")
