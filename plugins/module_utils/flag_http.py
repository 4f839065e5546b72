# Copyright: contributors to the emergency-rollback runbook
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The in-house flag service of SEQ-OF-004 (shared/seed), and any other REST shape by configuration.

By default `PATCH {api_url}/api/v2/flags/{flag}` with `Authorization: api-key <key>` and body
`{"<flag>": false}`, state read by `GET` of the same path answering `{"<flag>": true|false}`.
Method, paths, body template, JSON path of the state and auth scheme are options (HTTP_DEFAULTS),
so another in-house shape needs configuration, not code.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from ansible.module_utils.flag_provider_base import (
    FlagConfigError,
    FlagProvider,
    FlagResponseError,
    FlagState,
    WriteResult,
)
from ansible.module_utils.http_client import unknown_placeholder

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
        problem = unknown_placeholder(option, template, PLACEHOLDERS)
        if problem:
            raise FlagConfigError(problem)
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
