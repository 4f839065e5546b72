"""A tiny stand-in for application instances' `GET /status` (docs/interfaces.md), for the barrier's tests.

One server answers for several instances: `/app-1/status`, `/app-2/status`, ... Each instance is on
the "new" path until it is switched (`switch_after(name, seconds)`, `switch_after_polls` or
`set_path`), can answer 500, or can leave out the `path` field. The real application is tested with
the barrier end to end elsewhere.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tests.fakes.base import Answer, FakeApi, Request, error


@dataclass
class Instance:
    name: str
    path: str = "new"
    switch_at: float | None = None  # monotonic time at which it goes to "legacy"
    status: int = 200
    omit_path: bool = False
    delay: float = 0.0  # seconds before it answers (a slow instance)
    polls_left: int | None = None  # answers "new" this many more times, then "legacy"
    last_refresh: str = field(default_factory=lambda: datetime.now(UTC).isoformat())


@dataclass
class AppStatusFake(FakeApi):
    instances: dict[str, Instance] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__()
        self._state_lock = threading.Lock()

    def add(self, name: str, path: str = "new") -> str:
        with self._state_lock:
            self.instances[name] = Instance(name, path)
        return f"{self.url}/{name}/status"

    def switch_after(self, name: str, seconds: float) -> None:
        with self._state_lock:
            self.instances[name].switch_at = time.monotonic() + seconds

    def switch_after_polls(self, name: str, polls: int) -> None:
        with self._state_lock:
            self.instances[name].polls_left = polls

    def set_path(self, name: str, path: str) -> None:
        with self._state_lock:
            self.instances[name].path = path
            self.instances[name].switch_at = None

    def handle(self, request: Request) -> Answer:
        parts = request.path.strip("/").split("/")
        if len(parts) != 2 or parts[1] != "status" or request.method != "GET":
            return error(404, "not_found", "no such route")
        with self._state_lock:
            inst = self.instances.get(parts[0])
        if inst is None:
            return error(404, "not_found", "no such instance")
        if inst.delay:
            time.sleep(inst.delay)
        with self._state_lock:
            due = inst.switch_at is not None and time.monotonic() >= inst.switch_at
            if inst.polls_left is not None:
                due, inst.polls_left = inst.polls_left <= 0, inst.polls_left - 1
            if due:
                inst.path, inst.switch_at, inst.polls_left = "legacy", None, None
                inst.last_refresh = datetime.now(UTC).isoformat()
            if inst.status != 200:
                return error(inst.status, "error", "instance unhealthy")
            body: dict[str, Any] = {
                "instance": inst.name,
                "flag": "DataTransformationFeature",
                "flag_enabled": inst.path == "new",
                "last_refresh": inst.last_refresh,
                "refresh_interval": 1.0,
            }
            if not inst.omit_path:
                body["path"] = inst.path
        return 200, {}, body
