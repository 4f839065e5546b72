"""The verification's instance side: every instance's health endpoint against the environment's
contract (status codes, optionally a JSON field's value or the body's text), asked concurrently.
Plain Python, no Ansible; nothing here prints.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ansible.module_utils.http_client import HttpClient, HttpError, HttpGaveUp, server_message

MAX_THREADS = 16


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
