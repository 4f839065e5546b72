"""The rollback's verification verdict: every instance healthy, the 5xx ratio back at its baseline.

`run_app_verify(params)` polls, until the wait ends or everything checks out:
- every instance's health endpoint (the environment's contract: status codes, and optionally a JSON
  field's value or the body's text);
- Prometheus, for the requests and the 5xx responses of the application over a window
  (`sum(increase(<metric>{<selector>}[<window>]))` and the same with `<status_label>=~"5.."`), whose
  ratio must come back to the baseline recorded before the deployment plus a tolerance.

It also judges, once, what the rollback read back and passes in: the flag's state (must be
`disabled`) and each database's revision (must be the target) and schema fingerprint (must be the
one recorded with the rollback point before the deployment).

The verdict has three values, and missing data is never read as health:
- `verified`: every instance answered healthy and, in the same poll, the ratio was within the limit
  over at least `min_requests` requests;
- `failed`: at the end of the wait, an instance is unhealthy or the ratio is above the limit;
- `inconclusive`: something could not be checked: no Prometheus or no instance configured, Prometheus
  unreachable or refusing the query, no series at all (a renamed metric, a wrong job or label), or
  fewer than `min_requests` requests in the window (no traffic). The result names each of them and
  what to look at instead.

Prometheus' HTTP API (https://prometheus.io/docs/prometheus/latest/querying/api/): `GET /api/v1/query`
answers `{"status": "success", "data": {"resultType": "vector", "result": [{"metric": {...},
"value": [<unix time>, "<number as string>"]}]}}`; an expression that matches no series yields an
empty vector; a bad query answers 400 (`bad_data`) or 422 with `{"status": "error", "error": ...}`;
503 when a query times out. Plain Python, no Ansible; nothing here prints.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

from ansible.module_utils.app_health import InstanceHealth, check_health
from ansible.module_utils.app_metrics import (
    RateObservation,
    VerifyConfigError,
    build_queries,
    measure_error_rate,
    validate,
)
from ansible.module_utils.http_client import HttpClient
from ansible.module_utils.verify_options import app_verify_spec

# Optional: a Prometheus behind an authenticating proxy. The variable's name, not a secret.
PROMETHEUS_TOKEN_ENV = "PROMETHEUS_BEARER_TOKEN"  # noqa: S105


# -- what the rollback read back -------------------------------------------------------------------
@dataclass
class Check:
    """One thing verified: `name` (what), `verdict` (verified, failed or inconclusive), `detail` (a sentence part)."""

    name: str
    verdict: str
    detail: str

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "verdict": self.verdict, "detail": self.detail}


def static_checks(params: dict) -> list[Check]:
    """The flag and every database as read back (judged once: waiting cannot change them)."""
    checks: list[Check] = []
    flag = params.get("flag")
    if flag is not None:
        if flag.get("error") or not flag.get("state"):
            why = flag.get("error") or "no state returned"
            checks.append(
                Check("flag", "inconclusive", f"the flag could not be read back ({why}); check it in the flag system")
            )
        elif flag["state"] != "disabled":
            checks.append(Check("flag", "failed", f"the flag reads {flag['state']}, not disabled"))
        else:
            checks.append(Check("flag", "verified", "the flag reads disabled"))
    target = params.get("target_revision")
    points = params.get("rollback_points") or {}
    if params.get("databases_error"):
        checks.append(
            Check(
                "databases",
                "inconclusive",
                f"the databases could not be read ({params['databases_error']}); read them with playbooks/status.yml",
            )
        )
    for db in params.get("databases") or []:
        checks.append(_database_check(db, target, points.get(db.get("name") or "") or {}))
    return checks


def _database_check(db: dict, target: str | None, point: dict) -> Check:
    name = db.get("name") or "?"
    label = f"database {name}"
    if db.get("failed"):
        why = db.get("msg") or "no answer"
        return Check(label, "inconclusive", f"{label} could not be read ({why}); read it with playbooks/status.yml")
    if target is not None and db.get("revision") != target:
        return Check(label, "failed", f"{label} is at {db.get('revision') or 'no revision'}, not {target}")
    if not (point.get("fingerprint") and point.get("revision") == target and db.get("fingerprint")):
        return Check(
            label,
            "inconclusive",
            f"{label}'s schema was not compared: no fingerprint was recorded for {target} before the deployment; "
            "compare its schema by hand (playbooks/status.yml)",
        )
    if db["fingerprint"] != point["fingerprint"]:
        return Check(
            label,
            "failed",
            f"{label}'s schema fingerprint {db['fingerprint'][:12]} differs from the one recorded before the "
            f"deployment {point['fingerprint'][:12]}",
        )
    return Check(label, "verified", f"{label} is at {target}, schema fingerprint as recorded before the deployment")


# -- the verdict -----------------------------------------------------------------------------------
@dataclass
class Poll:
    health: list[InstanceHealth]
    rate: RateObservation
    checks: list[Check] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        return [c.detail for c in self.checks if c.verdict == "failed"]

    @property
    def unchecked(self) -> list[str]:
        return [c.detail for c in self.checks if c.verdict == "inconclusive"]

    @property
    def verdict(self) -> str:
        return "failed" if self.problems else "inconclusive" if self.unchecked else "verified"


def judge(health: list[InstanceHealth], rate: RateObservation, params: dict, queries: dict[str, str]) -> Poll:
    """What one poll shows: a check per instance and one for the 5xx ratio (each gap says what to look at)."""
    poll = Poll(health, rate)
    if not params.get("health_urls"):
        poll.checks.append(
            Check(
                "instances",
                "inconclusive",
                "instance health was not checked: no health URL is configured for this environment "
                "(rollback_app_urls); check the instances' health in your orchestrator",
            )
        )
    for instance in health:
        label = f"instance {instance.url}"
        if instance.healthy:
            poll.checks.append(Check(label, "verified", f"{label} is healthy ({instance.detail})"))
        else:
            poll.checks.append(Check(label, "failed", f"{label} is unhealthy ({instance.detail})"))
    poll.checks.append(_rate_check(rate, params, queries))
    return poll


def _rate_check(rate: RateObservation, params: dict, queries: dict[str, str]) -> Check:
    name, window, minimum = "5xx ratio", params["window"], float(params["min_requests"])
    url = HttpClient.safe_url(params.get("prometheus_url") or "")
    limit = f"the baseline {baseline_of(params):g} + tolerance {float(params['tolerance']):g}"
    if rate.state == "ok":
        seen = f"{rate.ratio:.4f} over the last {window} ({rate.errors:.0f} of {rate.requests:.0f} requests)"
        if rate.ratio > limit_of(params):
            return Check(name, "failed", f"the 5xx ratio is {seen}, above {limit}")
        return Check(name, "verified", f"the 5xx ratio is {seen}, within {limit}")
    gaps = {
        "not_configured": "no Prometheus is configured for this environment (rollback_prometheus_url); look at the "
        "application's error rate on your dashboards",
        "no_series": f"Prometheus at {url} has no series for {queries['requests']} (a renamed metric, a wrong job "
        "or label, or instances not scraped); compare the environment's metrics preset with the application's "
        "/metrics and Prometheus' targets",
        "too_few_requests": f"only {(rate.requests or 0):.0f} request(s) in the last {window}, fewer than the "
        f"minimum {minimum:g} to judge a ratio (no traffic?); check that traffic reaches the instances, then "
        "judge the error rate by hand",
        "refused": f"Prometheus at {url} refused the query ({rate.detail}); fix the environment's metrics preset "
        "(rollback_app_contract)",
    }
    why = gaps.get(
        rate.state,
        f"Prometheus at {url} did not answer ({rate.detail}); look at the application's error rate by other means",
    )
    return Check(name, "inconclusive", f"the 5xx ratio was not checked: {why}")


def baseline_of(params: dict) -> float:
    return float(params["baseline"]) if params.get("baseline") is not None else 0.0


def limit_of(params: dict) -> float:
    return baseline_of(params) + float(params["tolerance"])


def _rate_dict(rate: RateObservation, params: dict) -> dict[str, Any]:
    return {
        "state": rate.state,
        "ratio": None if rate.ratio is None else round(rate.ratio, 6),
        "requests": None if rate.requests is None else round(rate.requests, 3),
        "errors": None if rate.errors is None else round(rate.errors, 3),
        "detail": rate.detail,
        "window": params["window"],
        "min_requests": float(params["min_requests"]),
        "baseline": baseline_of(params),
        "baseline_recorded": params.get("baseline") is not None,
        "tolerance": float(params["tolerance"]),
        "limit": round(limit_of(params), 6),
    }


def _clients(params: dict):
    """Factories of HTTP clients: one attempt per request (the poll loop is the retry)."""
    token = os.environ.get(PROMETHEUS_TOKEN_ENV) or ""

    def make(headers: dict | None = None, secrets: list | None = None) -> HttpClient:
        return HttpClient(
            timeout=float(params["timeout"]),
            max_wait=0.0,
            validate_certs=bool(params["validate_certs"]),
            ca_path=params.get("ca_path"),
            headers=headers or {},
            secrets=secrets or [],
        )

    prometheus = None
    if params.get("prometheus_url"):
        prometheus = make({"Authorization": f"Bearer {token}"} if token else None, [token] if token else None)
    return make, prometheus


def _defaults() -> dict:
    """Every option's default from the spec (callers in Python may give only what they change)."""
    return {name: option.get("default") for name, option in app_verify_spec()["argument_spec"].items()}


def run_app_verify(
    params: dict, check_mode: bool = False, diff: bool = False, *, clock=time.monotonic, sleep=time.sleep
) -> dict:
    """The verdict (mode verify) or one reading of the 5xx ratio (mode baseline). Never raises."""
    del diff  # nothing changes, so there is nothing to diff
    params = {**_defaults(), **{k: v for k, v in params.items() if v is not None}}
    try:
        validate(params)
    except VerifyConfigError as exc:
        return {"changed": False, "failed": True, "msg": str(exc)}
    queries = build_queries(params)
    make_client, prometheus = _clients(params)
    warnings = []
    if params["validate_certs"] is False:
        warnings.append("TLS certificate verification is OFF for the health and Prometheus requests; give ca_path.")
    if params["mode"] == "baseline":
        return _baseline(params, queries, prometheus, warnings)

    if params.get("baseline") is None:
        warnings.append(
            "No 5xx baseline was recorded before the deployment: the ratio is compared with 0 + the tolerance."
        )
    read_back = static_checks(params)
    read_back_failed = any(c.verdict == "failed" for c in read_back)
    started = clock()
    deadline = started + (0.0 if check_mode else float(params["wait"]))
    polls = 0
    while True:
        polls += 1
        health = check_health(params["health_urls"], params["health"] or {}, make_client)
        rate = measure_error_rate(params, queries, prometheus)
        poll = judge(health, rate, params, queries)
        poll.checks[:0] = read_back
        if poll.verdict == "verified" or read_back_failed:
            break  # verified, or failed whatever the application does
        if (rate.final or not params["health_urls"]) and not poll.problems:
            break  # waiting cannot make it verified, and nothing seen may yet recover
        if clock() + float(params["interval"]) > deadline:
            break
        sleep(float(params["interval"]))
    elapsed = clock() - started
    return {
        "changed": False,
        "verdict": poll.verdict,
        "msg": _message(poll, params, elapsed),
        "checks": [c.as_dict() for c in poll.checks],
        "problems": poll.problems,
        "unchecked": poll.unchecked,
        "instances": [h.as_dict() for h in poll.health],
        "error_rate": _rate_dict(poll.rate, params),
        "queries": queries,
        "polls": polls,
        "elapsed_seconds": round(elapsed, 3),
        "warnings": warnings,
    }


def _message(poll: Poll, params: dict, elapsed: float) -> str:
    if poll.verdict == "verified":
        rate = poll.rate
        return (
            f"Verified: {'flag off, schema as recorded before the deployment, ' if _read_back(params) else ''}"
            f"{len(poll.health)} instance(s) healthy; the 5xx ratio {rate.ratio:.4f} over the last "
            f"{params['window']} ({rate.errors:.0f} of {rate.requests:.0f} requests) is within the baseline "
            f"{baseline_of(params):g} + tolerance {float(params['tolerance']):g}."
        )
    if poll.verdict == "failed":
        also = f"; also not checked: {'; '.join(poll.unchecked)}" if poll.unchecked else ""
        return f"Verification failed after {elapsed:.0f} s: {'; '.join(poll.problems)}{also}."
    return f"Verification inconclusive after {elapsed:.0f} s: {'; '.join(poll.unchecked)}."


def _read_back(params: dict) -> bool:
    return params.get("flag") is not None and bool(params.get("databases"))


def _baseline(params: dict, queries: dict[str, str], prometheus: HttpClient | None, warnings: list[str]) -> dict:
    """One reading of the ratio, to record before a deployment; not measured is said, never 0."""
    rate = measure_error_rate(params, queries, prometheus)
    poll = judge([], rate, {**params, "health_urls": ["-"], "baseline": None}, queries)
    measured = rate.state == "ok"
    if measured:
        msg = (
            f"The 5xx ratio is {rate.ratio:.4f} over the last {params['window']} "
            f"({rate.errors:.0f} of {rate.requests:.0f} requests)."
        )
    else:
        msg = f"No 5xx baseline: {'; '.join(poll.unchecked)}."
        warnings.append(msg)
    return {
        "changed": False,
        "measured": measured,
        "ratio": None if rate.ratio is None else round(rate.ratio, 6),
        "msg": msg,
        "error_rate": _rate_dict(rate, {**params, "baseline": None}),
        "queries": queries,
        "warnings": warnings,
    }
