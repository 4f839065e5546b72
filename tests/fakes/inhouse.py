"""Contract fakes of in-house flag services.

`InHouseFake` is the service of SEQ-OF-004 (shared/seed, interactions 3 and 10):
- `GET /api/v2/flags/{flag}` answers `{"<flag>": true|false}`;
- `PATCH /api/v2/flags/{flag}` with `Authorization: api-key <key>`, `Content-Type: application/json`
  and the body `{"<flag>": true|false}` (an optional string `comment` is recorded) sets it;
- anything else is refused: another auth scheme or key (401), a key without write rights (403), an
  unknown flag (404), a non-JSON or wrongly shaped body (400), another method (405).

`ShapedFlagFake` is an in-house service of ANOTHER shape, to prove that one needs configuration,
not code: `PUT /v1/envs/{environment}/toggles/{flag}` with `Authorization: Bearer <key>` and body
`{"enabled": bool, "reason": str}`; `GET` of the same path answers `{"data": {"enabled": bool}}`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tests.fakes.base import Answer, FakeApi, Request, error


def _json_body(request: Request) -> tuple[Any, Answer | None]:
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
        return None, error(400, "bad_request", "Content-Type must be application/json")
    try:
        return request.json(), None
    except ValueError:
        return None, error(400, "bad_request", "body is not JSON")


@dataclass
class InHouseFake(FakeApi):
    api_key: str = "inhouse-key-0000"
    read_only_key: str = "inhouse-readonly-0000"
    flags: dict[str, bool] = field(default_factory=dict)
    comments: list[str] = field(default_factory=list)
    ignore_writes: bool = False

    def __post_init__(self) -> None:
        super().__init__()

    def handle(self, request: Request) -> Answer:  # noqa: PLR0911 - one return per refusal
        prefix = "/api/v2/flags/"
        if not request.path.startswith(prefix) or "/" in request.path[len(prefix) :]:
            return error(404, "not_found", "no such route")
        name = request.path[len(prefix) :]
        auth = request.headers.get("authorization", "")
        if auth not in (f"api-key {self.api_key}", f"api-key {self.read_only_key}"):
            return error(401, "unauthorized", "missing or invalid api-key")
        if name not in self.flags:
            return error(404, "not_found", f"unknown flag {name}")
        if request.method == "GET":
            return 200, {}, {name: self.flags[name]}
        if request.method != "PATCH":
            return error(405, "method_not_allowed", "use GET or PATCH")
        if auth == f"api-key {self.read_only_key}":
            return error(403, "forbidden", "this key may only read")
        body, refused = _json_body(request)
        if refused:
            return refused
        if not isinstance(body, dict) or set(body) - {name, "comment"} or not isinstance(body.get(name), bool):
            return error(400, "bad_request", f'body must be {{"{name}": true|false}} (optionally "comment")')
        if "comment" in body:
            if not isinstance(body["comment"], str):
                return error(400, "bad_request", "comment must be a string")
            self.comments.append(body["comment"])
        if not self.ignore_writes:
            self.flags[name] = body[name]
        return 200, {}, {name: self.flags[name]}


@dataclass
class ShapedFlagFake(FakeApi):
    api_key: str = "shaped-key-0000"
    toggles: dict[tuple[str, str], bool] = field(default_factory=dict)  # (environment, flag) -> enabled
    reasons: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__()

    def handle(self, request: Request) -> Answer:  # noqa: PLR0911 - one return per refusal
        parts = request.path.strip("/").split("/")
        if len(parts) != 5 or parts[:2] != ["v1", "envs"] or parts[3] != "toggles":
            return error(404, "not_found", "no such route")
        if request.headers.get("authorization") != f"Bearer {self.api_key}":
            return error(401, "unauthorized", "bad bearer token")
        key = (parts[2], parts[4])
        if key not in self.toggles:
            return error(404, "not_found", "unknown toggle")
        if request.method == "GET":
            return 200, {}, {"data": {"enabled": self.toggles[key], "environment": key[0]}}
        if request.method != "PUT":
            return error(405, "method_not_allowed", "use GET or PUT")
        body, refused = _json_body(request)
        if refused:
            return refused
        if (
            not isinstance(body, dict)
            or set(body) != {"enabled", "reason"}
            or not isinstance(body["enabled"], bool)
            or not isinstance(body["reason"], str)
        ):
            return error(400, "bad_request", 'body must be {"enabled": bool, "reason": str}')
        self.toggles[key] = body["enabled"]
        self.reasons.append(body["reason"])
        return 204, {}, None
