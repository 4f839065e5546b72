# Copyright: contributors to the emergency-rollback runbook
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""LaunchDarkly REST API v2, https://launchdarkly.com/docs/api.

- read  GET   /api/v2/flags/{project}/{flag}?env={environment}  ("Get feature flag",
           https://launchdarkly.com/docs/api/feature-flags/get-feature-flag: `environments.{env}.on`),
- write PATCH /api/v2/flags/{project}/{flag} with
           `Content-Type: application/json; domain-model=launchdarkly.semanticpatch` and
           `{"environmentKey", "comment", "instructions": [{"kind": "turnFlagOff"|"turnFlagOn"}]}`
           ("Update feature flag", https://launchdarkly.com/docs/api/feature-flags/update-feature-flag;
           "Updates using semantic patch" in the overview),
- change reference: the flag's `_version` in the PATCH answer.
- auth: `Authorization: <access token>` with no scheme (overview, "Authentication using request
  header"); `LD-API-Version: 20240415` pinned as the overview's "Versioning" section recommends.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from ansible.module_utils.flag_provider_base import (
    FlagConfigError,
    FlagEnvironmentNotFound,
    FlagProvider,
    FlagResponseError,
    FlagState,
    WriteResult,
)

LD_API_VERSION = "20240415"
LD_SEMANTIC_PATCH = "application/json; domain-model=launchdarkly.semanticpatch"


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
