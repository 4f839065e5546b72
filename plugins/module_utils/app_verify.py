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

import math
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ansible.module_utils.http_client import HttpClient, HttpError, HttpGaveUp, server_message
from ansible.module_utils.verify_options import MODES, app_verify_spec

# Optional: a Prometheus behind an authenticating proxy. The variable's name, not a secret.
PROMETHEUS_TOKEN_ENV = "PROMETHEUS_BEARER_TOKEN"  # noqa: S105
MAX_THREADS = 16

_METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")


class VerifyConfigError(ValueError):
    """The options cannot work: one sentence naming the fix; nothing was contacted."""


# -- options ---------------------------------------------------------------------------------------
def _validate_query_options(params: dict) -> None:
    if params.get("requests_query"):
        return
    if not _METRIC_NAME.match(params["metric"] or ""):
        raise VerifyConfigError(
            f"metric {params['metric']!r} is not a Prometheus metric name: give the counter of finished "
            "requests, e.g. http_requests_total (see the presets in inventories/group_vars/all.yml)."
        )
    if not _LABEL_NAME.match(params["status_label"] or ""):
        raise VerifyConfigError(
            f"status_label {params['status_label']!r} is not a Prometheus label name: give the label that "
            "holds the HTTP status code, e.g. status or http_response_status_code."
        )
    selector = (params.get("selector") or "").strip()
    if selector.startswith("{") or selector.endswith("}"):
        raise VerifyConfigError(
            'selector holds label matchers without braces, e.g. job="transformation-engine",path="/transform".'
        )
    if '"' in (params.get("error_status") or "") or not params.get("error_status"):
        raise VerifyConfigError("error_status is a regular expression of status codes without quotes, e.g. 5..")


def _validate_numbers(params: dict) -> None:
    if not _DURATION.match(params["window"] or ""):
        raise VerifyConfigError(f"window {params['window']!r} is not a Prometheus duration: give e.g. 1m or 30s.")
    for key in ("min_requests", "tolerance", "wait"):
        if float(params[key]) < 0:
            raise VerifyConfigError(f"{key} must not be negative.")
    for key in ("interval", "timeout"):
        if not float(params[key]) > 0:
            raise VerifyConfigError(f"{key} must be more than 0 seconds: give e.g. 3.")
    if params.get("baseline") is not None and not 0 <= float(params["baseline"]) <= 1:
        raise VerifyConfigError("baseline is a ratio between 0 and 1 (0.01 is 1% of requests answered 5xx).")


def validate(params: dict) -> None:
    """VerifyConfigError for options that cannot work."""
    if params.get("mode", "verify") not in MODES:
        raise VerifyConfigError(f"mode must be one of {', '.join(MODES)}.")
    _validate_query_options(params)
    _validate_numbers(params)
    health = params.get("health") or {}
    if health.get("json_value") is not None and not health.get("json_key"):
        raise VerifyConfigError("health.json_value needs health.json_key (the field of the health JSON to compare).")
    for url in [*(params.get("health_urls") or []), params.get("prometheus_url") or "http://x"]:
        if not re.match(r"^https?://[^/\s]+", url or ""):
            shown = re.sub(r"//[^/@]*@", "//", (url or "").split("?")[0])  # no credentials, no query string
            raise VerifyConfigError(f"{shown!r} is not an http(s) URL: give e.g. https://host:port.")


def build_queries(params: dict) -> dict[str, str]:
    """The two PromQL expressions: requests and 5xx responses in the window (instant vectors)."""
    if params.get("requests_query"):
        return {"requests": params["requests_query"], "errors": params["errors_query"]}
    selector = (params.get("selector") or "").strip().rstrip(",")
    error_matcher = f'{params["status_label"]}=~"{params["error_status"]}"'
    window = params["window"]
    metric = params["metric"]
    return {
        "requests": f"sum(increase({metric}{{{selector}}}[{window}]))",
        "errors": f"sum(increase({metric}{{{selector + ',' if selector else ''}{error_matcher}}}[{window}]))",
    }


# -- health ----------------------------------------------------------------------------------------
@dataclass
class InstanceHealth:
    url: str
    healthy: bool = False
    status: int | None = None
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"url": self.url, "healthy": self.healthy, "status": self.status, "detail": self.detail}


def _dig(body: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(body, dict) or part not in body:
            return None
        body = body[part]
    return body


def _contract_breach(answer, contract: dict) -> str | None:
    """Why a 2xx-or-4xx answer does not meet the health contract, or None if it does."""
    codes = contract.get("status_codes") or [200]
    if answer.status not in codes:
        return f"answered {answer.status}, expected {' or '.join(str(c) for c in codes)}"
    key, wanted, text = contract.get("json_key"), contract.get("json_value"), contract.get("text")
    if key:
        found = _dig(answer.body, key)
        if found is None:
            return f"its answer has no field {key!r}"
        if wanted is not None and str(found) != str(wanted):
            return f"{key} is {str(found)[:60]!r}, expected {wanted!r}"
    if text is not None and (answer.text or "").strip() != text:
        return f"answered {server_message(answer.text, None)[:60]!r}, expected {text!r}"
    return None


def check_instance(client: HttpClient, url: str, contract: dict) -> InstanceHealth:
    """One GET of the health endpoint, judged by the contract (never raises)."""
    health = InstanceHealth(HttpClient.safe_url(url))
    try:
        answer = client.request("GET", url, what=f"read the health of {health.url}")
    except HttpGaveUp as exc:
        health.status, health.detail = exc.status, exc.failure or "no answer"
        return health
    except HttpError as exc:
        health.detail = str(exc)
        return health
    health.status = answer.status
    breach = _contract_breach(answer, contract)
    health.healthy, health.detail = breach is None, breach or f"answered {answer.status}"
    return health


def check_health(urls: list[str], contract: dict, make_client) -> list[InstanceHealth]:
    if not urls:
        return []
    if len(urls) == 1:
        return [check_instance(make_client(), urls[0], contract)]
    with ThreadPoolExecutor(max_workers=min(MAX_THREADS, len(urls))) as pool:
        return list(pool.map(lambda url: check_instance(make_client(), url, contract), urls))


# -- the 5xx ratio ---------------------------------------------------------------------------------
@dataclass
class RateObservation:
    """One reading of the 5xx ratio. `state` is "ok" only when the ratio can be judged."""

    state: str  # ok | no_series | too_few_requests | unreachable | refused | not_configured
    requests: float | None = None
    errors: float | None = None
    detail: str = ""

    @property
    def ratio(self) -> float | None:
        if self.state != "ok" or not self.requests:
            return None
        return self.errors / self.requests

    @property
    def final(self) -> bool:
        """A state that waiting cannot change (the configuration is wrong or missing)."""
        return self.state in ("refused", "not_configured")


class _QueryFailed(Exception):
    def __init__(self, state: str, detail: str):
        super().__init__(detail)
        self.state, self.detail = state, detail


def _instant_value(client: HttpClient, base_url: str, query: str) -> float | None:
    """The sum of an instant query's result; None for an empty vector (no series)."""
    url = base_url.rstrip("/") + "/api/v1/query"
    try:
        answer = client.request("GET", url, params={"query": query}, what=f"query Prometheus at {client.safe_url(url)}")
    except HttpGaveUp as exc:
        raise _QueryFailed("unreachable", exc.failure or "no answer") from None
    except HttpError as exc:
        raise _QueryFailed("unreachable", str(exc)) from None
    body = answer.body if isinstance(answer.body, dict) else {}
    if answer.status != 200 or body.get("status") != "success":
        said = body.get("error") or server_message(answer.text, answer.body)
        if answer.status in (400, 422):
            raise _QueryFailed("refused", f"{body.get('errorType') or answer.status}: {said}")
        raise _QueryFailed("unreachable", f"answered {answer.status}" + (f" ({said})" if said else ""))
    data = body.get("data") or {}
    kind, result = data.get("resultType"), data.get("result")
    if kind == "scalar" and isinstance(result, list) and len(result) == 2:
        values = [result[1]]
    elif kind == "vector" and isinstance(result, list):
        values = [item.get("value", [None, None])[1] for item in result if isinstance(item, dict)]
    else:
        raise _QueryFailed("refused", f"the query returned a {kind or 'malformed'} result, not an instant vector")
    if not values:
        return None
    numbers = []
    for value in values:
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(number):
            numbers.append(number)
    return sum(numbers) if numbers else None


def measure_error_rate(params: dict, queries: dict[str, str], client: HttpClient | None) -> RateObservation:
    """Ask Prometheus for the requests and the 5xx responses in the window (never raises)."""
    if client is None or not params.get("prometheus_url"):
        return RateObservation("not_configured", detail="no Prometheus is configured for this environment")
    try:
        requests_seen = _instant_value(client, params["prometheus_url"], queries["requests"])
        if requests_seen is None:
            return RateObservation("no_series", detail=f"Prometheus has no series for {queries['requests']}")
        errors_seen = _instant_value(client, params["prometheus_url"], queries["errors"])
    except _QueryFailed as exc:
        return RateObservation(exc.state, detail=exc.detail)
    # No 5xx series at all while requests exist: no 5xx response in the window.
    errors_seen = errors_seen or 0.0
    if requests_seen < float(params["min_requests"]) or requests_seen <= 0:
        return RateObservation("too_few_requests", requests_seen, errors_seen)
    return RateObservation("ok", requests_seen, errors_seen)


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
