# Copyright: contributors to the emergency-rollback runbook
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The propagation barrier: wait until every application instance has left the new path.

Each instance's `GET /status` answers (docs/interfaces.md)
    {"instance": "app-1", "flag": "...", "flag_enabled": false, "path": "legacy",
     "last_refresh": "2026-11-28T00:00:00.000000+00:00", "refresh_interval": 1.0}
`wait_for_path()` polls all URLs concurrently, round after round, until ONE round sees every instance
report the expected path (so an instance that flips back is caught), or the timeout passes. Apps
without a status endpoint are covered by `cache_ttl`: the barrier also waits until that many seconds
have passed since it started (the SDK cache of such an app must have expired by then).
Nothing here knows about Ansible; errors are typed and their message is one line.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ansible.module_utils.http_client import HttpClient, HttpError, HttpGaveUp

MAX_THREADS = 32


class BarrierError(Exception):
    """Base of the barrier's errors."""


class BarrierConfigError(BarrierError):
    """The options cannot work (nothing was polled)."""


class BarrierTimeout(BarrierError):
    """Some instances still report another path, or could not be read, when the timeout passed."""

    def __init__(self, message: str, result: dict[str, Any]):
        super().__init__(message)
        self.result = result


@dataclass
class InstanceStatus:
    url: str
    path: str | None = None
    last_refresh: str | None = None
    instance: str | None = None
    error: str | None = None
    polls: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "instance": self.instance,
            "path": self.path,
            "last_refresh": self.last_refresh,
            "error": self.error,
            "polls": self.polls,
        }


def poll_once(client: HttpClient, status: InstanceStatus, path_key: str) -> None:
    """One GET of one instance's status; records the path or the error (never raises)."""
    status.polls += 1
    safe = client.safe_url(status.url)
    try:
        # No retries inside a poll: the next round is the retry, and the barrier owns the clock.
        response = client.request("GET", status.url, what=f"read the status of {safe}", deadline=client.clock())
    except HttpGaveUp as exc:
        status.path, status.error = None, f"{safe} {exc.failure}"
        return
    except HttpError as exc:  # TLS or URL problems: the same next round, so say them plainly
        status.path, status.error = None, str(exc)
        return
    if response.status != 200 or not isinstance(response.body, dict):
        status.path, status.error = None, f"{safe} answered {response.status}, not a JSON status"
        return
    path = response.body.get(path_key)
    if not isinstance(path, str):
        status.path, status.error = None, f"{safe} reports no {path_key!r} in its status"
        return
    status.path, status.error = path, None
    status.instance = response.body.get("instance") if isinstance(response.body.get("instance"), str) else None
    last = response.body.get("last_refresh")
    status.last_refresh = last if isinstance(last, str) else None


def wait_for_path(
    client: HttpClient,
    status_urls: list[str],
    *,
    expected_path: str = "legacy",
    path_key: str = "path",
    timeout: float = 60.0,
    interval: float = 1.0,
    cache_ttl: float = 0.0,
    check_mode: bool = False,
    sleep=time.sleep,
) -> dict[str, Any]:
    """Poll until every instance reports `expected_path` and `cache_ttl` has passed; see module docs.

    Returns elapsed_seconds, rounds, instances (url, instance, path, last_refresh, error, polls),
    waited_for_cache_ttl. Raises BarrierTimeout (with the same result) naming the instances that are
    still on another path or unreachable. In check mode: one round, no waiting, no failure.
    """
    urls = list(dict.fromkeys(status_urls or []))  # keep order, drop duplicates
    if not urls and not cache_ttl:
        raise BarrierConfigError(
            "Nothing to wait for: give status_urls (the instances' /status) or cache_ttl (the SDK cache "
            "lifetime of apps without a status endpoint)."
        )
    if timeout <= 0 or interval <= 0 or cache_ttl < 0:
        raise BarrierConfigError("timeout and interval must be positive and cache_ttl zero or more seconds.")
    if cache_ttl > timeout:
        raise BarrierConfigError(
            f"cache_ttl ({cache_ttl:g}s) is longer than timeout ({timeout:g}s): the barrier could never pass; "
            "raise timeout above cache_ttl."
        )
    clock = client.clock
    started = clock()
    deadline = started + timeout
    statuses = [InstanceStatus(url) for url in urls]
    rounds = 0

    def result() -> dict[str, Any]:
        return {
            "elapsed_seconds": round(clock() - started, 3),
            "rounds": rounds,
            "instances": [s.as_dict() for s in statuses],
            "expected_path": expected_path,
            "waited_for_cache_ttl": cache_ttl,
        }

    with ThreadPoolExecutor(max_workers=max(1, min(MAX_THREADS, len(statuses)))) as pool:
        while True:
            rounds += 1
            list(pool.map(lambda s: poll_once(client, s, path_key), statuses))
            behind = [s for s in statuses if s.path != expected_path]
            ttl_left = cache_ttl - (clock() - started)
            if check_mode or (not behind and ttl_left <= 0):
                return result()
            now = clock()
            if now >= deadline:
                raise BarrierTimeout(_timeout_message(behind, expected_path, timeout, ttl_left), result())
            pause = interval if behind else ttl_left
            sleep(max(0.0, min(pause, deadline - now)))


def _timeout_message(behind: list[InstanceStatus], expected: str, timeout: float, ttl_left: float) -> str:
    other = [s for s in behind if s.error is None]
    unreachable = [s for s in behind if s.error is not None]
    parts = []
    if other:
        parts.append(
            "still on another path: "
            + ", ".join(f"{s.instance or s.url} ({s.url}: path={s.path}, last_refresh={s.last_refresh})" for s in other)
        )
    if unreachable:
        parts.append("unreadable: " + ", ".join(f"{s.url} ({s.error})" for s in unreachable))
    if not parts and ttl_left > 0:
        parts.append(f"the cache TTL needs {ttl_left:.1f}s more")
    return (
        f"Not every instance reports path={expected} after {timeout:g}s; "
        + "; ".join(parts)
        + ". Check that the flag is off and those instances refresh it (or restart them), then rerun."
    )


def run_flag_propagation(params: dict, check_mode: bool = False, diff: bool = False) -> dict[str, Any]:
    """The flag_propagation plugin: wait_for_path() with the task's options; never changes anything."""
    try:
        client = HttpClient(
            timeout=params["request_timeout"],
            max_wait=0,
            validate_certs=params["validate_certs"],
            ca_path=params["ca_path"],
        )
        warnings = list(
            dict.fromkeys(w for url in params["status_urls"] for w in client.warnings_for(url, carries_secret=False))
        )
        result = wait_for_path(
            client,
            params["status_urls"],
            expected_path=params["expected_path"],
            path_key=params["path_key"],
            timeout=params["timeout"],
            interval=params["interval"],
            cache_ttl=params["cache_ttl"],
            check_mode=check_mode,
        )
    except BarrierTimeout as exc:
        return {"changed": False, "failed": True, "msg": str(exc), **exc.result}
    except (BarrierConfigError, HttpError) as exc:
        return {"changed": False, "failed": True, "msg": str(exc)}
    return {"changed": False, **result, "warnings": warnings}
