# Copyright: contributors to the emergency-rollback runbook
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""What every flag provider shares: the typed errors, the read/write results and the base class.

One module per flag system (flag_unleash, flag_launchdarkly, flag_optimizely, flag_http) subclasses
`FlagProvider`; flag_providers.make_provider() picks one. Every failure raises a `FlagError` whose
message is one sentence naming the cause and the fix, and never contains the API key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ansible.module_utils.http_client import (
    HttpClient,
    HttpConfigError,
    HttpError,
    HttpGaveUp,
    HttpTlsError,
    Response,
)


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
    # The provider shows that another change brought the flag to the desired state between our read
    # and our write (so our write changed nothing); `reference` is then that other change.
    by_other: bool = False


class FlagProvider:
    """read() -> FlagState; write(enabled, comment) -> WriteResult. Subclasses set `name`."""

    name = ""
    label = ""  # how messages name the system
    key_kind = "API key"
    # Seconds between two requests of this provider (a documented rate limit paced on our side, so
    # that a rollback does not spend its budget on 429s); 0: no pacing.
    min_interval = 0.0

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
        self._last_sent: float | None = None
        if api_key not in client.secrets:
            client.secrets.append(api_key)

    # -- helpers shared by the providers ------------------------------------------------------------
    def _pace(self) -> None:
        """Wait, with the client's own clock and sleep, until `min_interval` has passed since the last request."""
        if self.min_interval and self._last_sent is not None:
            wait = self._last_sent + self.min_interval - self.client.clock()
            if wait > 0:
                self.client.sleep(wait)
        self._last_sent = self.client.clock()

    def _send(self, method: str, path: str, what: str, **kwargs) -> Response:
        self._pace()
        try:
            return self.client.request(method, self.api_url + path, what=what, **kwargs)
        except (HttpConfigError, HttpGaveUp, HttpTlsError) as exc:
            raise _raise_from_http(exc) from None
        finally:
            self._last_sent = self.client.clock()

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

    def read(self) -> FlagState:
        raise NotImplementedError

    def write(self, enabled: bool, comment: str) -> WriteResult:
        raise NotImplementedError
