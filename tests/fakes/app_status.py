"""A tiny stand-in for application instances' `GET /status` (docs/interfaces.md), for the barrier's tests.

One server answers for several instances: `/app-1/status`, `/app-2/status`, ... Each instance is on
the "new" path until it is switched (`switch_after_polls` or `set_path`), can answer 500, or can
leave out the `path` field. Like a live flag SDK, an instance reports a fetch of the flag
configuration made just now (`last_refresh`) on every answer, unless it is `stale` (cut off from the
flag system: its last fetch stays where it was). `gate` (a threading.Barrier) makes every answer
wait until that many requests are in flight at once: polls that were not concurrent break it.
The real application is tested with the barrier end to end elsewhere.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tests.fakes.base import Answer, FakeApi, Request, error


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


@dataclass
class Instance:
    name: str
    path: str = "new"
    switch_at: float | None = None  # monotonic time at which it goes to "legacy"
    status: int = 200
    omit_path: bool = False
    stale: bool = False  # cut off from the flag system: last_refresh no longer moves
    delay: float = 0.0  # seconds before it answers (a slow instance)
    polls_left: int | None = None  # answers "new" this many more times, then "legacy"
    last_refresh: str | None = field(default_factory=now_iso)
    config_version: int = 1


@dataclass
class AppStatusFake(FakeApi):
    instances: dict[str, Instance] = field(default_factory=dict)
    gate: threading.Barrier | None = None

    def __post_init__(self) -> None:
        super().__init__()
        self._state_lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0

    def add(self, name: str, path: str = "new", **settings: Any) -> str:
        with self._state_lock:
            self.instances[name] = Instance(name, path, **settings)
        return f"{self.url}/{name}/status"

    def switch_after(self, name: str, seconds: float) -> None:
        with self._state_lock:
            self.instances[name].switch_at = time.monotonic() + seconds

    def switch_after_polls(self, name: str, polls: int) -> None:
        with self._state_lock:
            self.instances[name].polls_left = polls

    def set_path(self, name: str, path: str) -> None:
        with self._state_lock:
            inst = self.instances[name]
            inst.path, inst.switch_at = path, None
            inst.config_version += 1
            if not inst.stale:
                inst.last_refresh = now_iso()

    def handle(self, request: Request) -> Answer:
        parts = request.path.strip("/").split("/")
        if len(parts) != 2 or parts[1] != "status" or request.method != "GET":
            return error(404, "not_found", "no such route")
        with self._state_lock:
            inst = self.instances.get(parts[0])
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if inst is None:
                return error(404, "not_found", "no such instance")
            if self.gate is not None:
                try:
                    self.gate.wait()
                except threading.BrokenBarrierError:  # the polls were not concurrent
                    return error(500, "not_concurrent", "the other polls did not arrive in time")
            if inst.delay:
                time.sleep(inst.delay)
            return self._answer(inst)
        finally:
            with self._state_lock:
                self.in_flight -= 1

    def _answer(self, inst: Instance) -> Answer:
        with self._state_lock:
            due = inst.switch_at is not None and time.monotonic() >= inst.switch_at
            if inst.polls_left is not None:
                due, inst.polls_left = inst.polls_left <= 0, inst.polls_left - 1
            if due:
                inst.path, inst.switch_at, inst.polls_left = "legacy", None, None
                inst.config_version += 1
            if not inst.stale:
                inst.last_refresh = now_iso()
            if inst.status != 200:
                return error(inst.status, "error", "instance unhealthy")
            body: dict[str, Any] = {
                "instance": inst.name,
                "flag": "DataTransformationFeature",
                "flag_enabled": inst.path == "new",
                "last_refresh": inst.last_refresh,
                "config_version": f"v{inst.config_version}",
                "refresh_interval": 1.0,
            }
            if not inst.omit_path:
                body["path"] = inst.path
        return 200, {}, body
