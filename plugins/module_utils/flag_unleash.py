# Copyright: contributors to the emergency-rollback runbook
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Unleash admin API (v5+, checked against unleash-server 8.2.0), https://docs.getunleash.io/api ("Features").

- read  GET  /api/admin/projects/{project}/features/{flag}  (operation getFeature: `environments[]`
          with `name` and `enabled`),
- write POST /api/admin/projects/{project}/features/{flag}/environments/{environment}/off | /on
          (operations toggleFeatureEnvironmentOff / toggleFeatureEnvironmentOn,
          https://docs.getunleash.io/api/toggle-feature-environment-off; no request body, so no
          comment: Unleash records the token's user in its event log instead),
- change reference: the id of the `feature-environment-disabled|enabled` event the toggle wrote,
          found with GET /api/admin/search/events (operation searchEvents, filters
          `feature=IS:`, `environment=IS:`, `type=IS:`); the toggle's own answer is an empty 200.
- auth: `Authorization: <admin token or personal access token>`, no scheme
  (https://docs.getunleash.io/concepts/api-tokens-and-client-keys).
"""

from __future__ import annotations

from urllib.parse import quote

from ansible.module_utils.flag_provider_base import (
    FlagEnvironmentNotFound,
    FlagError,
    FlagProvider,
    FlagResponseError,
    FlagState,
    WriteResult,
)


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
                # Two runs toggling at the same moment both find the one event Unleash wrote (it records
                # a toggle only when the state changes, and its answer does not say whose it was).
                reference = latest
            elif latest is not None:
                # The flag was already toggled by event `latest` when we took `before`: our toggle was a no-op.
                return WriteResult(latest, response.attempts, "unleash_event_id", by_other=True)
            else:
                self.notes.append(f"Unleash shows no new {event_type} event for this toggle; no event id returned.")
        return WriteResult(reference, response.attempts, "unleash_event_id")
