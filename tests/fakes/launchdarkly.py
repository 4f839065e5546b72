"""Contract fake of LaunchDarkly's REST API v2, for the two routes the kill switch uses.

It rejects what the real API rejects, per https://launchdarkly.com/docs/api (overview:
"Authentication using request header", "Updates using semantic patch", "Errors", "Rate limiting",
"Versioning") and https://launchdarkly.com/docs/api/feature-flags/update-feature-flag:
- `Authorization` must be the bare access token: a missing or wrong token, or `Bearer <token>`, is 401;
  a read-only token may read but not write (403);
- PATCH needs `Content-Type: application/json; domain-model=launchdarkly.semanticpatch`; without the
  domain-model the body is taken as a JSON patch, which must be an array, so an object is a 400;
- the semantic patch body has `instructions` (a non-empty list of objects with a `kind`),
  `environmentKey` (required by turnFlagOn/turnFlagOff) and an optional string `comment`; an unknown
  instruction kind or any other top-level field is a 400;
- `LD-API-Version`, when sent, must name a published version (or `beta`);
- unknown project or flag: 404; unknown environment: 404;
- errors use the documented body `{"code", "message", "id"}`.
State: per project, per flag, per environment `on`, with the flag's `_version` (and each
environment's) incremented by every change that changes something; a no-op patch changes nothing.
Each applied change is kept in `audit` with its comment.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from tests.fakes.base import Answer, FakeApi, Request

SEMANTIC_PATCH = "domain-model=launchdarkly.semanticpatch"
API_VERSIONS = {"20240415", "20220603", "20210729", "20191212", "20160426", "beta"}
TOGGLES = {"turnFlagOn": True, "turnFlagOff": False}


def ld_error(status: int, code: str, message: str) -> Answer:
    return status, {}, {"code": code, "message": message, "id": str(uuid.uuid4())}


@dataclass
class Flag:
    key: str
    environments: dict[str, dict[str, Any]]
    version: int = 1


@dataclass
class LaunchDarklyFake(FakeApi):
    api_key: str = "api-00000000-0000-0000-0000-000000000000"
    read_only_key: str = "api-readonly-0000-0000-0000-000000000000"
    projects: dict[str, dict[str, Flag]] = field(default_factory=dict)
    audit: list[dict[str, Any]] = field(default_factory=list)
    ignore_writes: bool = False  # accept a patch but change nothing (a broken provider, for read-back tests)

    def __post_init__(self) -> None:
        super().__init__()

    def add_flag(self, key: str, project: str = "default", environments: dict[str, bool] | None = None) -> None:
        environments = environments or {"production": True, "test": True}
        now = int(time.time() * 1000)
        envs = {name: {"on": on, "_version": 1, "lastModified": now} for name, on in environments.items()}
        self.projects.setdefault(project, {})[key] = Flag(key, envs)

    def is_on(self, key: str, environment: str = "production", project: str = "default") -> bool:
        return self.projects[project][key].environments[environment]["on"]

    def representation(self, flag: Flag, only: list[str] | None) -> dict[str, Any]:
        envs = {name: dict(env, _environmentName=name) for name, env in flag.environments.items()}
        if only:
            envs = {name: env for name, env in envs.items() if name in only}
        return {"key": flag.key, "name": flag.key, "kind": "boolean", "_version": flag.version, "environments": envs}

    def handle(self, request: Request) -> Answer:  # noqa: PLR0911 - one return per refusal
        parts = request.path.strip("/").split("/")
        if len(parts) != 5 or parts[:3] != ["api", "v2", "flags"]:
            return ld_error(404, "not_found", "Invalid resource identifier")
        project, key = parts[3], parts[4]
        token = request.headers.get("authorization")
        if token not in (self.api_key, self.read_only_key):  # includes "Bearer <token>" and no header
            return ld_error(401, "unauthorized", "Invalid access token")
        version = request.headers.get("ld-api-version")
        if version is not None and version not in API_VERSIONS:
            return ld_error(400, "invalid_request", f"Unknown API version {version}")
        flag = self.projects.get(project, {}).get(key)
        if request.method == "GET":
            if flag is None:
                return ld_error(404, "not_found", "Unknown resource")
            only = ",".join(request.query.get("env", [])).split(",") if request.query.get("env") else None
            return 200, {}, self.representation(flag, only)
        if request.method != "PATCH":
            return ld_error(405, "method_not_allowed", "Method not allowed")
        if token == self.read_only_key:
            return ld_error(403, "forbidden", "Access to the requested resource was denied")
        return self._patch(request, flag)

    def _patch(self, request: Request, flag: Flag | None) -> Answer:  # noqa: PLR0911, PLR0912
        content_type = request.headers.get("content-type", "")
        media, *params = [part.strip() for part in content_type.split(";")]
        if media.lower() != "application/json":
            return ld_error(400, "invalid_request", "Request body must be JSON (Content-Type: application/json)")
        try:
            body = request.json()
        except ValueError:
            return ld_error(400, "invalid_request", "Request body is not valid JSON")
        if SEMANTIC_PATCH not in [p.replace(" ", "") for p in params]:
            # Interpreted as a JSON patch (RFC 6902): that must be an array of operations.
            if not isinstance(body, list):
                return ld_error(400, "invalid_request", "Invalid JSON patch: expected an array of operations")
            return ld_error(400, "invalid_request", "JSON patch is not supported by this fake")
        if flag is None:
            return ld_error(404, "not_found", "Unknown resource")
        if not isinstance(body, dict):
            return ld_error(400, "invalid_request", "Semantic patch must be a JSON object")
        unknown = set(body) - {"comment", "environmentKey", "instructions"}
        if unknown:
            return ld_error(400, "invalid_request", f"Unknown field(s) {sorted(unknown)}")
        instructions = body.get("instructions")
        if not isinstance(instructions, list) or not instructions:
            return ld_error(400, "invalid_request", "instructions is required and must be a non-empty array")
        if "comment" in body and not isinstance(body["comment"], str):
            return ld_error(400, "invalid_request", "comment must be a string")
        kinds = []
        for instruction in instructions:
            kind = instruction.get("kind") if isinstance(instruction, dict) else None
            if kind not in TOGGLES:
                return ld_error(400, "invalid_request", f"Unknown instruction kind {kind!r}")
            kinds.append(kind)
        environment = body.get("environmentKey")
        if not isinstance(environment, str) or not environment:
            return ld_error(400, "invalid_request", "environmentKey is required for this instruction")
        env = flag.environments.get(environment)
        if env is None:
            return ld_error(404, "not_found", f"Unknown environment key {environment}")
        target = TOGGLES[kinds[-1]]
        if env["on"] != target and not self.ignore_writes:
            env["on"] = target
            env["_version"] += 1
            env["lastModified"] = int(time.time() * 1000)
            flag.version += 1
            self.audit.append(
                {"flag": flag.key, "environment": environment, "on": target, "comment": body.get("comment")}
            )
        return 200, {}, self.representation(flag, None)
