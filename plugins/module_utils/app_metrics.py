"""The verification's Prometheus side: the options of its queries, the queries, and one measurement
of the 5xx ratio (plugins/module_utils/app_verify.py judges it). See app_verify's docstring for the
Prometheus HTTP API this reads. Plain Python, no Ansible; nothing here prints.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from ansible.module_utils.http_client import HttpClient, HttpError, HttpGaveUp, server_message
from ansible.module_utils.verify_options import MODES

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
