# Copyright: contributors to the emergency-rollback runbook
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Flag systems behind one small interface: `read()` the flag's state, `write()` a new one.

One class per system, each speaking that system's published API exactly:
- `UnleashProvider`: Unleash admin API (v5+, checked against unleash-server 8.2.0),
  https://docs.getunleash.io/api (Admin API, "Features"):
  read  GET  /api/admin/projects/{project}/features/{flag}  (operation getFeature: `environments[]`
            with `name` and `enabled`),
  write POST /api/admin/projects/{project}/features/{flag}/environments/{environment}/off | /on
            (operations toggleFeatureEnvironmentOff / toggleFeatureEnvironmentOn,
            https://docs.getunleash.io/api/toggle-feature-environment-off; no request body, so no
            comment: Unleash records the token's user in its event log instead),
  change reference: the id of the `feature-environment-disabled|enabled` event the toggle wrote,
            found with GET /api/admin/search/events (operation searchEvents, filters
            `feature=IS:`, `environment=IS:`, `type=IS:`); the toggle's own answer is an empty 200.
  Auth: `Authorization: <admin token or personal access token>`, no scheme
  (https://docs.getunleash.io/concepts/api-tokens-and-client-keys).
- `LaunchDarklyProvider`: LaunchDarkly REST API v2, https://launchdarkly.com/docs/api:
  read  GET   /api/v2/flags/{project}/{flag}?env={environment}  ("Get feature flag",
             https://launchdarkly.com/docs/api/feature-flags/get-feature-flag: `environments.{env}.on`),
  write PATCH /api/v2/flags/{project}/{flag} with
             `Content-Type: application/json; domain-model=launchdarkly.semanticpatch` and
             `{"environmentKey", "comment", "instructions": [{"kind": "turnFlagOff"|"turnFlagOn"}]}`
             ("Update feature flag", https://launchdarkly.com/docs/api/feature-flags/update-feature-flag;
             "Updates using semantic patch" in the overview),
  change reference: the flag's `_version` in the PATCH answer.
  Auth: `Authorization: <access token>` with no scheme (overview, "Authentication using request
  header"); `LD-API-Version: 20240415` pinned as the overview's "Versioning" section recommends.
- `HttpProvider`: the in-house service of SEQ-OF-004 (shared/seed): `PATCH {api_url}/api/v2/flags/{flag}`
  with `Authorization: api-key <key>`, state read by `GET` of the same path answering
  `{"<flag>": true|false}`. Method, paths, body template, JSON path of the state and auth scheme are
  options, so another in-house shape needs configuration, not code.

Every failure raises a `FlagError` whose message is one sentence naming the cause and the fix, and
never contains the API key.
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from ansible.module_utils.http_client import (
    HttpClient,
    HttpConfigError,
    HttpError,
    HttpGaveUp,
    HttpStatusError,
    HttpTlsError,
    Response,
)

PROVIDERS = ("unleash", "launchdarkly", "http")
LD_API_VERSION = "20240415"
LD_SEMANTIC_PATCH = "application/json; domain-model=launchdarkly.semanticpatch"


# -- errors ------------------------------------------------------------------------------------------
class FlagError(Exception):
    """Base: the flag could not be read or switched. `str()` is a single line without secrets."""

    attempts = 0


class FlagConfigError(FlagError):
    """An option is unusable; nothing was sent."""


class FlagAuthError(FlagError):
    """The API key was rejected (401) or may not do this (403)."""


class FlagNotFound(FlagError):
    """The flag (or its project) does not exist (404)."""


class FlagEnvironmentNotFound(FlagError):
    """The flag exists but not in the requested environment."""


class FlagRequestRejected(FlagError):
    """Another non-retryable answer (400, 405, 409, 422, ...)."""


class FlagUnavailable(FlagError):
    """Only retryable failures (429, 5xx, timeouts) until `max_wait` ran out, or a TLS failure."""


class FlagResponseError(FlagError):
    """The API answered 2xx with something that is not what its reference describes."""


class FlagStateMismatch(FlagError):
    """After the write, the provider does not report the requested state."""


def _raise_from_http(exc: HttpError) -> FlagError:
    """Map the HTTP helper's errors to ours, keeping the (already redacted) message."""
    if isinstance(exc, HttpConfigError):
        error: FlagError = FlagConfigError(str(exc))
    else:  # HttpGaveUp, HttpTlsError
        error = FlagUnavailable(str(exc))
    error.attempts = getattr(exc, "attempts", 0)
    return error


@dataclass
class FlagState:
    enabled: bool
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class WriteResult:
    reference: Any  # the provider's own change reference (event id, flag version), or None
    attempts: int
    reference_kind: str = ""


class FlagProvider:
    """read() -> FlagState; write(enabled, comment) -> WriteResult. Subclasses set `name`."""

    name = ""
    label = ""  # how messages name the system

    def __init__(  # noqa: PLR0917 - the six facts that identify one flag
        self, client: HttpClient, api_url: str, api_key: str, flag: str, project: str, environment: str
    ):
        if not api_key:
            raise FlagConfigError(f"No API key for {self.label}: set api_key or the environment variable FF_API_KEY.")
        if not flag:
            raise FlagConfigError("No flag name: set flag, e.g. DataTransformationFeature.")
        self.client = client
        self.api_url = api_url.rstrip("/")
        self.api_key = api_key
        self.flag = flag
        self.project = project
        self.environment = environment
        self.notes: list[str] = []  # non-fatal things the operator should read (become module warnings)
        if api_key not in client.secrets:
            client.secrets.append(api_key)

    # -- helpers shared by the providers ------------------------------------------------------------
    def _send(self, method: str, path: str, what: str, **kwargs) -> Response:
        try:
            return self.client.request(method, self.api_url + path, what=what, **kwargs)
        except (HttpConfigError, HttpGaveUp, HttpTlsError) as exc:
            raise _raise_from_http(exc) from None

    def _fail(self, response: Response, what: str, not_found: str, not_found_type: type[FlagError] = FlagNotFound):
        """Raise the FlagError for a non-2xx answer: one sentence with the cause and the fix."""
        status = response.status
        if status == 401:
            cause, kind = (
                f"{self.label} rejected the API key (401); set api_key or FF_API_KEY to a valid {self.key_kind}",
                FlagAuthError,
            )
        elif status == 403:
            cause, kind = (
                f"the API key may not do this (403); use a {self.key_kind} allowed to change "
                f"flag {self.flag} in {self.where()}",
                FlagAuthError,
            )
        elif status == 404:
            cause, kind = not_found, not_found_type
        else:
            cause, kind = (
                f"{self.label} refused the request ({status}); check flag, project and environment "
                "and the provider options",
                FlagRequestRejected,
            )
        error = self.client.status_error(response, what, cause)
        flag_error = kind(str(error))
        flag_error.attempts = response.attempts
        raise flag_error

    def where(self) -> str:
        return f"environment {self.environment} of project {self.project}"

    key_kind = "API key"

    def read(self) -> FlagState:
        raise NotImplementedError

    def write(self, enabled: bool, comment: str) -> WriteResult:
        raise NotImplementedError


# -- Unleash -------------------------------------------------------------------------------------------
class UnleashProvider(FlagProvider):
    name = "unleash"
    label = "Unleash"
    key_kind = "Unleash admin token or personal access token (a backend/client SDK token cannot use the admin API)"

    def _headers(self) -> dict[str, str]:
        return {"Authorization": self.api_key}

    def _feature_path(self) -> str:
        return f"/api/admin/projects/{quote(self.project, safe='')}/features/{quote(self.flag, safe='')}"

    def read(self) -> FlagState:
        what = f"read Unleash flag {self.flag}"
        response = self._send("GET", self._feature_path(), what, headers=self._headers())
        if response.status != 200:
            self._fail(
                response,
                what,
                f"flag {self.flag} does not exist in Unleash project {self.project} (404); "
                "check flag and project (project is the Unleash project id)",
            )
        environments = response.body.get("environments") if isinstance(response.body, dict) else None
        if not isinstance(environments, list):
            raise FlagResponseError(
                f"Cannot {what}: the answer has no environments list; is api_url the Unleash server itself?"
            )
        for env in environments:
            if isinstance(env, dict) and env.get("name") == self.environment:
                if not isinstance(env.get("enabled"), bool):
                    raise FlagResponseError(f"Cannot {what}: environment {self.environment} has no boolean 'enabled'.")
                return FlagState(env["enabled"])
        names = ", ".join(sorted(str(env.get("name")) for env in environments if isinstance(env, dict))) or "none"
        raise FlagEnvironmentNotFound(
            f"Cannot {what}: flag {self.flag} has no environment {self.environment} in project {self.project} "
            f"(it has: {names}); set environment to one of those."
        )

    def _latest_event_id(self, **filters: str) -> int | None:
        params = {"feature": f"IS:{self.flag}", "project": f"IS:{self.project}", "limit": "1", **filters}
        response = self._send(
            "GET", "/api/admin/search/events", f"search Unleash events of {self.flag}", headers=self._headers(),
            params=params,
        )  # fmt: skip
        if response.status != 200 or not isinstance(response.body, dict):
            raise FlagResponseError(f"the event search answered {response.status}")
        events = response.body.get("events") or []
        ids = [event.get("id") for event in events if isinstance(event, dict) and isinstance(event.get("id"), int)]
        return max(ids) if ids else None

    def write(self, enabled: bool, comment: str) -> WriteResult:
        action = "on" if enabled else "off"
        what = f"turn Unleash flag {self.flag} {action} in {self.environment}"
        try:
            before = self._latest_event_id() or 0
        except FlagError as exc:
            before = None
            self.notes.append(f"No Unleash event id: the event search failed before the write ({exc}).")
        path = f"{self._feature_path()}/environments/{quote(self.environment, safe='')}/{action}"
        response = self._send("POST", path, what, headers=self._headers())
        if not 200 <= response.status < 300:
            self._fail(
                response,
                what,
                f"flag {self.flag}, its project {self.project} or its environment {self.environment} "
                "does not exist (404); check flag, project and environment",
            )
        reference = None
        if before is not None:
            event_type = f"feature-environment-{'enabled' if enabled else 'disabled'}"
            try:
                latest = self._latest_event_id(environment=f"IS:{self.environment}", type=f"IS:{event_type}")
            except FlagError as exc:
                self.notes.append(f"No Unleash event id: the event search after the write failed ({exc}).")
                return WriteResult(None, response.attempts, "unleash_event_id")
            if latest is not None and latest > before:
                reference = latest
            else:
                self.notes.append(f"Unleash shows no new {event_type} event for this toggle; no event id returned.")
        return WriteResult(reference, response.attempts, "unleash_event_id")


# -- LaunchDarkly ------------------------------------------------------------------------------------
class LaunchDarklyProvider(FlagProvider):
    name = "launchdarkly"
    label = "LaunchDarkly"
    key_kind = "LaunchDarkly access token (personal or service token with writer rights; not an SDK key)"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.api_key.lower().startswith(("bearer ", "api-key ")):
            raise FlagConfigError(
                "The LaunchDarkly API key starts with a scheme word; LaunchDarkly wants the bare access "
                "token in Authorization: remove the prefix from api_key/FF_API_KEY."
            )

    def _headers(self, **extra: str) -> dict[str, str]:
        return {"Authorization": self.api_key, "LD-API-Version": LD_API_VERSION, **extra}

    def _path(self) -> str:
        return f"/api/v2/flags/{quote(self.project, safe='')}/{quote(self.flag, safe='')}"

    def _not_found(self) -> str:
        return (
            f"flag {self.flag} does not exist in LaunchDarkly project {self.project} (404); "
            "check flag (the flag key) and project (the project key)"
        )

    def read(self) -> FlagState:
        what = f"read LaunchDarkly flag {self.flag}"
        response = self._send("GET", self._path(), what, headers=self._headers(), params={"env": self.environment})
        if response.status != 200:
            self._fail(response, what, self._not_found())
        environments = response.body.get("environments") if isinstance(response.body, dict) else None
        if not isinstance(environments, dict):
            raise FlagResponseError(f"Cannot {what}: the answer has no environments object; is api_url LaunchDarkly?")
        env = environments.get(self.environment)
        if env is None:
            raise FlagEnvironmentNotFound(
                f"Cannot {what}: project {self.project} has no environment {self.environment}; "
                "set environment to the environment key (e.g. production)."
            )
        if not isinstance(env, dict) or not isinstance(env.get("on"), bool):
            raise FlagResponseError(f"Cannot {what}: environment {self.environment} has no boolean 'on'.")
        return FlagState(env["on"], {"version": response.body.get("_version")})

    def write(self, enabled: bool, comment: str) -> WriteResult:
        kind = "turnFlagOn" if enabled else "turnFlagOff"
        what = f"{kind} LaunchDarkly flag {self.flag} in {self.environment}"
        body: dict[str, Any] = {"environmentKey": self.environment, "instructions": [{"kind": kind}]}
        if comment:
            body["comment"] = comment
        response = self._send(
            "PATCH", self._path(), what, json_body=body, headers=self._headers(**{"Content-Type": LD_SEMANTIC_PATCH})
        )
        if response.status != 200:
            self._fail(response, what, self._not_found())
        version = response.body.get("_version") if isinstance(response.body, dict) else None
        return WriteResult(version, response.attempts, "launchdarkly_flag_version")


# -- in-house REST service -----------------------------------------------------------------------------
HTTP_DEFAULTS = {
    "http_method": "PATCH",
    "http_path": "/api/v2/flags/{flag}",
    "http_read_path": None,  # None: the same as http_path
    "http_body": {"{flag}": "{enabled}"},
    "http_state_path": "{flag}",
    "http_auth_scheme": "api-key",
}
PLACEHOLDERS = ("flag", "project", "environment", "state", "enabled", "comment")


class HttpProvider(FlagProvider):
    """The seed's in-house API by default; every part of its shape is an option (see HTTP_DEFAULTS)."""

    name = "http"
    label = "The flag service"
    key_kind = "API key of the flag service"

    def __init__(self, *args, options: dict[str, Any] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        opts = {**HTTP_DEFAULTS, **{k: v for k, v in (options or {}).items() if v is not None}}
        self.method = str(opts["http_method"]).upper()
        if self.method not in ("PATCH", "PUT", "POST"):
            raise FlagConfigError(f"http_method {self.method} cannot change a flag: use PATCH, PUT or POST.")
        self.write_path = self._format(opts["http_path"], "http_path", enabled=False)
        self.read_path = self._format(opts["http_read_path"] or opts["http_path"], "http_read_path", enabled=False)
        for path in (self.write_path, self.read_path):
            if not path.startswith("/"):
                raise FlagConfigError(f"The path {path!r} must start with '/': e.g. /api/v2/flags/{{flag}}.")
        self.body_template = opts["http_body"]
        if isinstance(self.body_template, str):  # e.g. from an AWX survey: JSON text
            try:
                self.body_template = json.loads(self.body_template)
            except ValueError:
                raise FlagConfigError(
                    'http_body is neither a mapping nor JSON text: give e.g. {"{flag}": "{enabled}"}.'
                ) from None
        self.state_path = [
            self._format(part, "http_state_path", False) for part in str(opts["http_state_path"]).split(".")
        ]
        self.auth_scheme = str(opts["http_auth_scheme"] or "")
        self._render_body(False, "")  # fail now, before anything is sent, if the template is bad

    def _format(self, template: str, option: str, enabled: bool, comment: str = "", quote_values: bool = True) -> str:
        values = {
            "flag": self.flag,
            "project": self.project,
            "environment": self.environment,
            "state": "enabled" if enabled else "disabled",
            "enabled": "true" if enabled else "false",
            "comment": comment,
        }
        if option.endswith("path") and option != "http_state_path" and quote_values:
            values = {key: quote(value, safe="") for key, value in values.items()}
        used = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
        unknown = [name for name in used if name not in PLACEHOLDERS]
        if unknown:
            raise FlagConfigError(
                f"{option} uses the unknown placeholder {{{unknown[0]}}}: use only "
                + ", ".join(f"{{{p}}}" for p in PLACEHOLDERS)
                + "."
            )
        try:
            return template.format(**values)
        except (ValueError, IndexError) as exc:
            raise FlagConfigError(
                f"{option} is not a valid template ({exc}): escape literal braces as {{{{ }}}}."
            ) from None

    def _render_body(self, enabled: bool, comment: str) -> Any:
        def render(node: Any) -> Any:
            if isinstance(node, dict):
                return {render(key): render(value) for key, value in node.items()}
            if isinstance(node, list):
                return [render(item) for item in node]
            if node == "{enabled}":
                return enabled  # a JSON boolean, not the string "true"
            if isinstance(node, str):
                return self._format(node, "http_body", enabled, comment)
            return node

        if not isinstance(self.body_template, (dict, list)):
            raise FlagConfigError(
                "http_body must be a JSON object or list (a YAML mapping), e.g. {'{flag}': '{enabled}'}."
            )
        return render(self.body_template)

    def _headers(self) -> dict[str, str]:
        value = f"{self.auth_scheme} {self.api_key}" if self.auth_scheme else self.api_key
        return {"Authorization": value}

    def _not_found(self, path: str) -> str:
        return f"flag {self.flag} does not exist at {path} (404); check flag and http_path/http_read_path"

    def read(self) -> FlagState:
        what = f"read flag {self.flag} from {self.client.safe_url(self.api_url + self.read_path)}"
        response = self._send("GET", self.read_path, what, headers=self._headers())
        if response.status != 200:
            self._fail(response, what, self._not_found(self.read_path))
        node: Any = response.body
        for part in self.state_path:
            if not isinstance(node, dict) or part not in node:
                raise FlagResponseError(
                    f"Cannot {what}: the answer has no {'.'.join(self.state_path)}; "
                    "set http_state_path to the JSON path of the flag's boolean state."
                )
            node = node[part]
        if not isinstance(node, bool):
            raise FlagResponseError(
                f"Cannot {what}: {'.'.join(self.state_path)} is {type(node).__name__}, not true/false; "
                "set http_state_path to the flag's boolean field."
            )
        return FlagState(node)

    def write(self, enabled: bool, comment: str) -> WriteResult:
        what = f"set flag {self.flag} to {'enabled' if enabled else 'disabled'}"
        body = self._render_body(enabled, comment)
        response = self._send(self.method, self.write_path, what, json_body=body, headers=self._headers())
        if not 200 <= response.status < 300:
            self._fail(response, what, self._not_found(self.write_path))
        return WriteResult(None, response.attempts, "")


def make_provider(  # noqa: PLR0917
    provider: str,
    client: HttpClient,
    api_url: str,
    api_key: str,
    flag: str,
    project: str = "default",
    environment: str = "production",
    http_options: dict[str, Any] | None = None,
) -> FlagProvider:
    """The provider object for `provider` (one of PROVIDERS)."""
    args = (client, api_url, api_key, flag)
    where = {"project": project, "environment": environment}
    if provider == "unleash":
        return UnleashProvider(*args, **where)
    if provider == "launchdarkly":
        return LaunchDarklyProvider(*args, **where)
    if provider == "http":
        return HttpProvider(*args, options=http_options, **where)
    raise FlagConfigError(f"Unknown provider {provider!r}: use one of {', '.join(PROVIDERS)}.")


__all__ = [
    "PROVIDERS",
    "FlagAuthError",
    "FlagConfigError",
    "FlagEnvironmentNotFound",
    "FlagError",
    "FlagNotFound",
    "FlagProvider",
    "FlagRequestRejected",
    "FlagResponseError",
    "FlagState",
    "FlagStateMismatch",
    "FlagUnavailable",
    "HttpStatusError",
    "WriteResult",
    "make_provider",
]
