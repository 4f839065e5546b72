# Copyright: contributors to the emergency-rollback runbook
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The propagation barrier: wait until every live application instance has left the new path.

Each instance's `GET /status` answers (docs/interfaces.md)
    {"instance": "app-1", "flag": "...", "flag_enabled": false, "path": "legacy",
     "last_refresh": "2026-11-28T00:00:01.000000+00:00", "config_version": "...", "refresh_interval": 1.0}
`wait_for_path()` polls, round after round, every instance of the configured status URLs AND every
instance a source of truth names (flag_discovery: Prometheus targets, Kubernetes EndpointSlices,
a Consul service; asked again each round, so an instance that appears meanwhile is asked too),
concurrently, until ONE round confirms all of them, or the timeout passes. An instance is confirmed
when it reports the expected path and, given `fetched_after` (when the flag system confirmed the
flag off, feature_flag's `confirmed_at`), when its last successful fetch of the flag configuration
(`last_refresh`) is later than that by at least `clock_skew` seconds: so "legacy because it has not
fetched yet" (an SDK still on its defaults, or cut off from the flag system) is told apart from
"legacy because it saw the flag off". A discovered instance that cannot be read blocks like one on
the new path; so does a source that cannot be asked. Apps without a status endpoint are covered by
`cache_ttl`: the barrier also waits until that many seconds have passed since it started.
Nothing here knows about Ansible; errors are typed and their message is one line.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ansible.module_utils.flag_discovery import DiscoveryConfigError, DiscoveryError, Source, make_source
from ansible.module_utils.http_client import HttpClient, HttpError, HttpGaveUp, redact

MAX_THREADS = 32
CONFIGURED = "configured (status_urls)"


class BarrierError(Exception):
    """Base of the barrier's errors."""


class BarrierConfigError(BarrierError):
    """The options cannot work (nothing was polled)."""


class BarrierTimeout(BarrierError):
    """Some instances still report another path, have not fetched, could not be read, or discovery failed."""

    def __init__(self, message: str, result: dict[str, Any]):
        super().__init__(message)
        self.result = result


def parse_time(value: Any) -> float | None:
    """Epoch seconds of an ISO 8601 time with a UTC offset (or 'Z'); None if it is not one."""
    if not isinstance(value, str) or not value:
        return None
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when.timestamp() if when.tzinfo else None


def utc_iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")


@dataclass
class InstanceStatus:
    url: str
    where: str = CONFIGURED
    name: str | None = None  # the source's name for it (None: configured only)
    configured: bool = False
    path: str | None = None
    last_refresh: str | None = None
    config_version: Any = None
    instance: str | None = None
    error: str | None = None
    polls: int = 0
    fresh: bool | None = None  # fetched after the flag change (None: not required or not read)
    confirmed_at: float | None = None  # wall clock of the round that first confirmed it (in the final streak)

    def label(self) -> str:
        return self.instance or self.name or self.url

    def report(self) -> str:
        """What it last reported, in one clause."""
        if self.error is not None:
            return self.error
        return f"path={self.path}, last_refresh={self.last_refresh}, config_version={self.config_version}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "instance": self.instance,
            "name": self.name,
            "discovered_in": None if self.where == CONFIGURED else self.where,
            "configured": self.configured,
            "path": self.path,
            "last_refresh": self.last_refresh,
            "config_version": self.config_version,
            "fetched_after_flag_change": self.fresh,
            "confirmed_at": utc_iso(self.confirmed_at) if self.confirmed_at else None,
            "error": self.error,
            "polls": self.polls,
        }


def poll_once(client: HttpClient, status: InstanceStatus, path_key: str, fetch_key: str = "last_refresh") -> None:
    """One GET of one instance's status; records what it reports or the error (never raises)."""
    status.polls += 1
    safe = client.safe_url(status.url)
    status.path = status.last_refresh = status.config_version = None
    try:
        # No retries inside a poll: the next round is the retry, and the barrier owns the clock.
        response = client.request("GET", status.url, what=f"read the status of {safe}", deadline=client.clock())
    except HttpGaveUp as exc:
        status.error = f"{safe} {exc.failure}"
        return
    except HttpError as exc:  # TLS or URL problems: the same next round, so say them plainly
        status.error = str(exc)
        return
    if response.status != 200 or not isinstance(response.body, dict):
        status.error = f"{safe} answered {response.status}, not a JSON status (no status endpoint?)"
        return
    body = response.body
    if not isinstance(body.get(path_key), str):
        status.error = f"{safe} reports no {path_key!r} in its status"
        return
    status.error = None
    status.path = body[path_key]
    status.instance = body.get("instance") if isinstance(body.get("instance"), str) else status.instance
    status.last_refresh = body.get(fetch_key) if isinstance(body.get(fetch_key), str) else None
    status.config_version = body.get("config_version")


def wait_for_path(  # noqa: PLR0915 - the barrier's options, one loop
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
    discovery: Source | None = None,
    fetched_after: str | None = None,
    fetch_key: str = "last_refresh",
    clock_skew: float = 1.0,
    wall_clock=time.time,
) -> dict[str, Any]:
    """Poll until every configured and discovered instance is confirmed and `cache_ttl` has passed; see module docs.

    Returns elapsed_seconds, rounds, instances (per instance: url, instance, name, discovered_in,
    configured, path, last_refresh, config_version, fetched_after_flag_change, confirmed_at, error,
    polls), discovery (source, instances found, error), not_configured (discovered instances absent
    from status_urls), last_confirmed_after_flag_seconds, waited_for_cache_ttl. Raises BarrierTimeout
    (with the same result) naming every instance that blocks, where it was found and what it said.
    In check mode: one round, no waiting, no failure.
    """
    configured = list(dict.fromkeys(status_urls or []))  # keep order, drop duplicates
    if not configured and not cache_ttl and discovery is None:
        raise BarrierConfigError(
            "Nothing to wait for: give status_urls (the instances' /status), discovery (where the live instances "
            "are listed) or cache_ttl (the SDK cache lifetime of apps without a status endpoint)."
        )
    if timeout <= 0 or interval <= 0 or cache_ttl < 0 or clock_skew < 0:
        raise BarrierConfigError(
            "timeout and interval must be positive, cache_ttl and clock_skew zero or more seconds."
        )  # fmt: skip
    if cache_ttl > timeout:
        raise BarrierConfigError(
            f"cache_ttl ({cache_ttl:g}s) is longer than timeout ({timeout:g}s): the barrier could never pass; "
            "raise timeout above cache_ttl."
        )
    flag_off_at = None
    if fetched_after:
        flag_off_at = parse_time(fetched_after)
        if flag_off_at is None:
            raise BarrierConfigError(
                f"fetched_after {fetched_after!r} is not an ISO 8601 time with a UTC offset: give feature_flag's "
                "confirmed_at, e.g. 2026-11-28T00:58:14.653120+00:00."
            )
    clock = client.clock
    started = clock()
    deadline = started + timeout
    ttl_end = started + cache_ttl  # compared as a point in time: a float remainder can never keep it open
    known: dict[str, InstanceStatus] = {url: InstanceStatus(url, configured=True) for url in configured}
    current: list[InstanceStatus] = list(known.values())
    found_error: str | None = None
    rounds = 0

    def result() -> dict[str, Any]:
        confirmed = [s.confirmed_at for s in current if s.confirmed_at is not None]
        last = None
        if flag_off_at is not None and confirmed and len(confirmed) == len(current):
            last = round(max(confirmed) - flag_off_at, 3)
        discovered = [s for s in current if s.where != CONFIGURED]
        return {
            "elapsed_seconds": round(clock() - started, 3),
            "rounds": rounds,
            "instances": [s.as_dict() for s in current],
            "expected_path": expected_path,
            "fetched_after": fetched_after,
            "discovery": None
            if discovery is None
            else {"source": discovery.describe(), "instances": len(discovered), "error": found_error},
            "not_configured": [s.as_dict() for s in discovered if not s.configured],
            "last_confirmed_after_flag_seconds": last,
            "waited_for_cache_ttl": cache_ttl,
        }

    def confirmed(status: InstanceStatus) -> bool:
        if status.error is not None or status.path != expected_path:
            status.fresh = None
            return False
        if flag_off_at is None:
            return True
        fetched = parse_time(status.last_refresh)
        status.fresh = fetched is not None and fetched >= flag_off_at + clock_skew
        return status.fresh

    with ThreadPoolExecutor(max_workers=MAX_THREADS) as pool:
        while True:
            rounds += 1
            if discovery is not None:
                current, found_error = _discover(client, discovery, configured, known, current)
            list(pool.map(lambda s: poll_once(client, s, path_key, fetch_key), current))
            now_wall = wall_clock()
            for status in current:
                if confirmed(status):
                    status.confirmed_at = status.confirmed_at or now_wall
                else:
                    status.confirmed_at = None
            behind = [s for s in current if s.confirmed_at is None]
            now = clock()
            ttl_left = ttl_end - now
            if check_mode or (not behind and found_error is None and now >= ttl_end):
                return result()
            if now >= deadline:
                message = _timeout_message(behind, found_error, expected_path, timeout, ttl_left, fetched_after)
                raise BarrierTimeout(message, result())
            pause = interval if behind or found_error else ttl_left
            sleep(max(0.0, min(pause, deadline - now)))


def _discover(
    client: HttpClient, source: Source, configured: list[str], known: dict[str, InstanceStatus], current: list
) -> tuple[list[InstanceStatus], str | None]:
    """This round's instances: the configured ones plus what the source lists now (the last set, if it failed)."""
    try:
        found = source.discover(client)
    except DiscoveryError as exc:
        return current, str(exc)
    instances = [known[url] for url in configured]
    for item in found:
        status = known.setdefault(item.status_url, InstanceStatus(item.status_url))
        status.where, status.name = item.where, item.name
        if status not in instances:
            instances.append(status)
    return instances, None


def _where(status: InstanceStatus) -> str:
    if status.where == CONFIGURED:
        return f"{status.url}, configured"
    listed = "also configured" if status.configured else "not in status_urls"
    return f"{status.url}, discovered in {status.where}, {listed}"


def _timeout_message(  # noqa: PLR0917
    behind: list[InstanceStatus],
    found_error: str | None,
    expected: str,
    timeout: float,
    ttl_left: float,
    fetched_after: str | None,
) -> str:
    other = [s for s in behind if s.error is None and s.path != expected]
    stale = [s for s in behind if s.error is None and s.path == expected]
    unreadable = [s for s in behind if s.error is not None]
    parts = []
    if found_error:
        parts.append(f"the instances could not be discovered: {found_error}")
    if other:
        parts.append("still on another path: " + ", ".join(f"{s.label()} ({_where(s)}: {s.report()})" for s in other))
    if stale:
        parts.append(
            f"on {expected} but without a fetch of the flag since it was turned off at {fetched_after} "
            "(so not known to have seen it off): "
            + ", ".join(f"{s.label()} ({_where(s)}: {s.report()})" for s in stale)
        )
    if unreadable:
        parts.append("unreadable: " + ", ".join(f"{s.label()} ({_where(s)}: {s.report()})" for s in unreadable))
    if not parts and ttl_left > 0:
        parts.append(f"the cache TTL needs {ttl_left:.1f}s more")
    return (
        f"Not every live instance is confirmed on path={expected} after {timeout:g}s; "
        + "; ".join(parts)
        + ". Make those instances fetch the flag (restart them, or restore their link to the flag system) or stop "
        "them, then rerun; the flag stays off."
    )


def run_flag_propagation(params: dict, check_mode: bool = False, diff: bool = False) -> dict[str, Any]:
    """The flag_propagation plugin: wait_for_path() with the task's options; never changes anything."""
    token = (params.get("discovery") or {}).get("token") or ""
    secrets = [token] if token else []
    try:
        client = HttpClient(
            timeout=params["request_timeout"],
            max_wait=0,
            validate_certs=params["validate_certs"],
            ca_path=params["ca_path"],
            secrets=secrets,
        )
        source = make_source(params.get("discovery"))
        urls = list(params["status_urls"]) + ([source.url] if source else [])
        warnings = list(dict.fromkeys(w for url in urls for w in client.warnings_for(url, carries_secret=False)))
        result = wait_for_path(
            client,
            params["status_urls"],
            expected_path=params["expected_path"],
            path_key=params["path_key"],
            timeout=params["timeout"],
            interval=params["interval"],
            cache_ttl=params["cache_ttl"],
            check_mode=check_mode,
            discovery=source,
            fetched_after=params.get("fetched_after"),
            fetch_key=params.get("fetch_key") or "last_refresh",
            clock_skew=params.get("clock_skew", 1.0),
        )
    except BarrierTimeout as exc:
        return {"changed": False, "failed": True, "msg": redact(str(exc), secrets), **exc.result}
    except (BarrierConfigError, DiscoveryConfigError, HttpError) as exc:
        return {"changed": False, "failed": True, "msg": redact(str(exc), secrets)}
    if result["not_configured"] and params["status_urls"]:
        names = ", ".join(f"{i['name']} ({i['url']}, {i['discovered_in']})" for i in result["not_configured"])
        warnings.append(f"Live instances missing from status_urls were asked too: {names}; add them to the list.")
    return {"changed": False, **result, "warnings": warnings}
