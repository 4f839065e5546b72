# Copyright: contributors to the emergency-rollback runbook
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Optimizely Feature Experimentation: the flag's ruleset in one environment, through the Flags REST API.

In Feature Experimentation a flag is "on" in an environment when its ruleset there is enabled
(status running); disabling the ruleset makes every SDK deliver the flag's default ("off") variation,
which is the documented kill switch. References followed (docs.developers.optimizely.com):
- Fetch the Ruleset for a Flag in an Environment (/feature-experimentation/reference/fetch_ruleset and
  /feature-experimentation/docs/manage-rules, "Read rulesets"):
  read  GET  https://api.optimizely.com/flags/v1/projects/{project_id}/flags/{flag_key}/environments/{environment_key}/ruleset
        answering the ruleset: `enabled` (bool), `status` (draft | running | paused), `revision`,
        `updated_time`, and `disable_url` or `enable_url` (the ruleset's own links to the calls below);
- Disable / Enable the Ruleset for a Flag in an Environment (/feature-experimentation/reference/disable_ruleset,
  /enable_ruleset): write POST .../ruleset/disabled | .../ruleset/enabled, no request body (so no comment:
  Optimizely's change history records the token's user), answering the ruleset after the change;
- Fetch a Flag (/feature-experimentation/reference/fetch_flag): GET .../projects/{project_id}/flags/{flag_key},
  whose `environments` object names the flag's environments; used only to tell "no such flag" from "no
  such environment" after a 404 of the ruleset;
- auth: `Authorization: Bearer <personal access token>`
  (/feature-experimentation/docs/generate-tokens-and-use-the-rest-apis);
- rate limit: "two requests per second, 120 requests per minute" (/feature-experimentation/reference/
  feature-experimentation-api-overview): paced here at one request per `min_interval`, and a 429 is retried
  by the HTTP client like every other provider's (Retry-After honoured when Optimizely sends one).
- change reference: the ruleset's `revision` after the change.
`project` is the numeric project id (the number in the app's URL .../v2/projects/<id>/...).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from ansible.module_utils.flag_provider_base import (
    FlagConfigError,
    FlagEnvironmentNotFound,
    FlagError,
    FlagNotFound,
    FlagProvider,
    FlagResponseError,
    FlagState,
    WriteResult,
)

FLAGS_API = "/flags/v1"


class OptimizelyProvider(FlagProvider):
    name = "optimizely"
    label = "Optimizely"
    key_kind = (
        "Optimizely personal access token (Bearer, without the word Bearer) whose role may publish the flag in "
        "this environment (not an SDK key)"
    )
    min_interval = 0.55  # "two requests per second": one every half second, with a margin

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.api_key.lower().startswith(("bearer ", "api-key ")):
            raise FlagConfigError(
                "The Optimizely API key starts with a scheme word; the runbook sends 'Bearer <token>' itself: "
                "remove the prefix from api_key/FF_API_KEY."
            )
        if not str(self.project).isdigit():
            raise FlagConfigError(
                f"Optimizely's project is the numeric project id, not {self.project!r}: set project to the number "
                "in the app's URL (https://app.optimizely.com/v2/projects/<id>/...)."
            )

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    def _flag_path(self) -> str:
        return f"{FLAGS_API}/projects/{self.project}/flags/{quote(self.flag, safe='')}"

    def _ruleset_path(self) -> str:
        return f"{self._flag_path()}/environments/{quote(self.environment, safe='')}/ruleset"

    def _missing(self, what: str) -> FlagError:
        """After a 404 of the ruleset: which of flag or environment is missing (one more read)."""
        response = self._send("GET", self._flag_path(), f"read Optimizely flag {self.flag}", headers=self._headers())
        if response.status == 404:
            error: FlagError = FlagNotFound(
                f"Cannot {what}: flag {self.flag} does not exist in Optimizely project {self.project} (404); check "
                "flag (the flag key) and project (the numeric project id)."
            )
        elif response.status != 200:
            self._fail(response, what, "")
        else:
            environments = response.body.get("environments") if isinstance(response.body, dict) else None
            names = ", ".join(sorted(environments)) if isinstance(environments, dict) and environments else "none"
            error = FlagEnvironmentNotFound(
                f"Cannot {what}: flag {self.flag} has no environment {self.environment} in project {self.project} "
                f"(it has: {names}); set environment to one of those environment keys."
            )
        error.attempts = response.attempts
        return error

    def _ruleset(self, body: Any, what: str) -> dict[str, Any]:
        if not isinstance(body, dict) or not isinstance(body.get("enabled"), bool):
            raise FlagResponseError(
                f"Cannot {what}: the answer is not a ruleset with a boolean 'enabled'; is api_url "
                "https://api.optimizely.com?"
            )
        return body

    def read(self) -> FlagState:
        what = f"read the Optimizely ruleset of flag {self.flag} in {self.environment}"
        response = self._send("GET", self._ruleset_path(), what, headers=self._headers())
        if response.status == 404:
            raise self._missing(what)
        if response.status != 200:
            self._fail(response, what, "")
        ruleset = self._ruleset(response.body, what)
        detail = {key: ruleset.get(key) for key in ("revision", "status", "updated_time")}
        return FlagState(ruleset["enabled"], detail)

    def write(self, enabled: bool, comment: str) -> WriteResult:
        action = "enabled" if enabled else "disabled"
        what = f"{'enable' if enabled else 'disable'} the Optimizely ruleset of flag {self.flag} in {self.environment}"
        response = self._send("POST", f"{self._ruleset_path()}/{action}", what, headers=self._headers())
        if response.status == 404:
            raise self._missing(what)
        if not 200 <= response.status < 300:
            self._fail(response, what, "")
        revision = response.body.get("revision") if isinstance(response.body, dict) else None
        if not isinstance(revision, int):
            revision = None
            self.notes.append("Optimizely's answer carries no ruleset revision; no change reference returned.")
        return WriteResult(revision, response.attempts, "optimizely_ruleset_revision")
