"""Contract fake of Optimizely Feature Experimentation's Flags REST API, for the routes the kill switch uses.

Built from docs.developers.optimizely.com (feature-experimentation): "Fetch the Ruleset for a Flag in an
Environment" (reference/fetch_ruleset) and docs/manage-rules (path and response example), "Disable the
Ruleset..." and "Enable the Ruleset..." (reference/disable_ruleset, reference/enable_ruleset), "Fetch a
Flag" (reference/fetch_flag), "Generate tokens and use the REST APIs" (Bearer personal access tokens),
the API overview (reference/feature-experimentation-api-overview: "a rate limit of two requests per
second, 120 requests per minute"), and docs/manage-flags (a ruleset is draft, running or paused).

It rejects what the real API rejects:
- `Authorization` must be `Bearer <token>`: no header, a bare token or an unknown token is a 401; a token
  whose role may only view the flag (`viewer_token`) reads but gets a 403 on enable/disable;
- `project_id` is an integer path parameter; an unknown project, flag or environment key is a 404;
- only GET of the ruleset and of the flag and POST of `.../ruleset/enabled|disabled` exist here; another
  method on those paths is a 405;
- more than 2 requests in one second, or 120 in one minute, per token: 429 (the reference documents
  the limit but no Retry-After; `retry_after` adds one for tests of that header).
Error bodies are `{"code", "message", "uuid"}`; the provider reads only `message` (as for every API).
State: per project, per flag, per environment a ruleset with `enabled`, `status` and `revision`; a
change that changes something increments the revision and records the token in `history` (what
Optimizely's change history shows); a POST that changes nothing answers the ruleset unchanged.
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tests.fakes.base import Answer, FakeApi, Request

PREFIX = ("flags", "v1", "projects")


def opt_error(status: int, code: str, message: str) -> Answer:
    return status, {}, {"code": code, "message": message, "uuid": str(uuid.uuid4())}


@dataclass
class Ruleset:
    enabled: bool
    status: str  # draft | running | paused
    revision: int = 1
    updated_time: str = field(default_factory=lambda: datetime.now(UTC).isoformat())


@dataclass
class OptimizelyFake(FakeApi):
    token: str = "opt-token-0000000000"
    viewer_token: str = "opt-viewer-0000000000"
    # project id -> flag key -> environment key -> ruleset
    projects: dict[int, dict[str, dict[str, Ruleset]]] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    clock: Any = time.monotonic  # the rate limiter's clock (a FakeClock in tests that inject one)
    rate_limit: bool = True
    retry_after: str | None = None
    ignore_writes: bool = False  # accept a change but apply nothing (for read-back tests)

    def __post_init__(self) -> None:
        super().__init__()
        self._recent: dict[str, deque] = {}
        self.throttled = 0  # requests answered 429 by the rate limit

    def add_flag(self, key: str, project: int = 4678434014625792, environments: dict[str, bool] | None = None):
        environments = environments if environments is not None else {"production": True, "development": True}
        self.projects.setdefault(project, {})[key] = {
            name: Ruleset(on, "running" if on else "draft") for name, on in environments.items()
        }

    def is_on(self, key: str, environment: str = "production", project: int = 4678434014625792) -> bool:
        return self.projects[project][key][environment].enabled

    # -- representation ----------------------------------------------------------------------------
    @staticmethod
    def _ruleset_json(project: int, key: str, environment: str, ruleset: Ruleset) -> dict[str, Any]:
        base = f"/projects/{project}/flags/{key}/environments/{environment}/ruleset"
        body: dict[str, Any] = {
            "url": base,
            "update_url": base,
            "rules": {},
            "rule_priorities": [],
            "id": abs(hash((project, key, environment))) % 10**7,
            "urn": f"rulesets.flags.optimizely.com::{abs(hash((project, key, environment))) % 10**7}",
            "archived": False,
            "enabled": ruleset.enabled,
            "updated_time": ruleset.updated_time,
            "flag_key": key,
            "environment_key": environment,
            "environment_name": environment.title(),
            "default_variation_key": "off",
            "default_variation_name": "Off",
            "revision": ruleset.revision,
            "status": ruleset.status,
        }
        body["disable_url" if ruleset.enabled else "enable_url"] = base + (
            "/disabled" if ruleset.enabled else "/enabled"
        )
        return body

    def _flag_json(self, project: int, key: str) -> dict[str, Any]:
        envs = self.projects[project][key]
        return {
            "key": key,
            "name": key,
            "url": f"/projects/{project}/flags/{key}",
            "archived": False,
            "project_id": project,
            "environments": {
                name: {"key": name, "name": name.title(), "enabled": rs.enabled, "status": rs.status}
                for name, rs in envs.items()
            },
        }

    # -- the contract ----------------------------------------------------------------------------
    def _rate_limited(self, token: str) -> bool:
        if not self.rate_limit:
            return False
        now = self.clock()
        recent = self._recent.setdefault(token, deque())
        while recent and recent[0] <= now - 60:
            recent.popleft()
        last_second = sum(1 for t in recent if t > now - 1)
        if last_second >= 2 or len(recent) >= 120:
            return True
        recent.append(now)
        return False

    def handle(self, request: Request) -> Answer:  # noqa: PLR0911, PLR0912 - one return per refusal
        parts = request.path.strip("/").split("/")
        auth = request.headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme != "Bearer" or token not in (self.token, self.viewer_token):
            return opt_error(401, "UNAUTHORIZED", "Authentication credentials were not provided or are invalid")
        if self._rate_limited(token):
            self.throttled += 1
            headers = {"Retry-After": self.retry_after} if self.retry_after else {}
            return 429, headers, {"code": "TOO_MANY_REQUESTS", "message": "Rate limit exceeded", "uuid": "x"}
        if tuple(parts[:3]) != PREFIX or len(parts) < 6 or parts[4] != "flags":
            return opt_error(404, "NOT_FOUND", "Not found")
        if not parts[3].isdigit():
            return opt_error(404, "NOT_FOUND", f"Project {parts[3]} not found")
        project, key = int(parts[3]), parts[5]
        flags = self.projects.get(project)
        if flags is None:
            return opt_error(404, "NOT_FOUND", f"Project {project} not found")
        tail = parts[6:]
        if not tail:  # the flag
            if request.method != "GET":
                return opt_error(405, "METHOD_NOT_ALLOWED", "Method not allowed")
            if key not in flags:
                return opt_error(404, "NOT_FOUND", f"Flag {key} not found")
            return 200, {}, self._flag_json(project, key)
        if len(tail) not in (3, 4) or tail[0] != "environments" or tail[2] != "ruleset":
            return opt_error(404, "NOT_FOUND", "Not found")
        if key not in flags:
            return opt_error(404, "NOT_FOUND", f"Flag {key} not found")
        environment = tail[1]
        ruleset = flags[key].get(environment)
        if ruleset is None:
            return opt_error(404, "NOT_FOUND", f"Environment {environment} not found")
        if len(tail) == 3:
            if request.method != "GET":  # PATCH (JSON patch of the rules) exists but is not what we use
                return opt_error(405, "METHOD_NOT_ALLOWED", "Method not allowed")
            return 200, {}, self._ruleset_json(project, key, environment, ruleset)
        if tail[3] not in ("enabled", "disabled"):
            return opt_error(404, "NOT_FOUND", "Not found")
        if request.method != "POST":
            return opt_error(405, "METHOD_NOT_ALLOWED", "Method not allowed")
        if token == self.viewer_token:
            return opt_error(403, "FORBIDDEN", "You do not have permission to publish this flag in this environment")
        target = tail[3] == "enabled"
        if ruleset.enabled != target and not self.ignore_writes:
            ruleset.enabled = target
            ruleset.status = "running" if target else "paused"
            ruleset.revision += 1
            ruleset.updated_time = datetime.now(UTC).isoformat()
            self.history.append({"flag": key, "environment": environment, "enabled": target, "token": token[:6]})
        return 200, {}, self._ruleset_json(project, key, environment, ruleset)
