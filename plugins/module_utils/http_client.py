# Copyright: contributors to the emergency-rollback runbook
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""HTTP for the runbook's modules: TLS verified by default, a User-Agent naming the runbook, bounded retries.

Plain Python (no Ansible import beyond what a module passes in), unit-tested in tests/unit/test_flag_http.py.

Retry policy (one place, every flag provider and the propagation barrier use it):
- retried: 429, every 5xx, connection errors and timeouts; each wait honours `Retry-After`
  (seconds or an HTTP date, RFC 9110 section 10.2.3) and `X-Ratelimit-Reset` (LaunchDarkly: "the time at
  which the current rate limit window resets in epoch milliseconds", https://launchdarkly.com/docs/api,
  section "Rate limiting"), otherwise exponential backoff with jitter;
- never retried: every other status (400, 401, 403, 404, ...) and TLS certificate failures: they
  raise at once, since repeating the same request cannot fix them;
- all attempts together stay within `max_wait` seconds: a wait that would end past it is not
  started, and the last error is raised instead.
Writes our providers send are absolute ("turn off", "set to false"), so repeating one after a
timeout whose request did reach the server is harmless.

Secrets: `HttpClient(secrets=[...])` removes every given secret from each message it builds, and
neither headers nor bodies of requests are ever put in a message.
"""

from __future__ import annotations

import email.utils
import ipaddress
import random
import string
import time
import warnings
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import requests

RUNBOOK = "Rollback-DataTransformation-Feature"
USER_AGENT = f"emergency-rollback/0.1 (+runbook {RUNBOOK}; SEQ-OF-004)"

RETRY_STATUSES = frozenset({429}) | frozenset(range(500, 600))
BACKOFF_FIRST = 0.5  # seconds; doubled per attempt, capped, with jitter
BACKOFF_CAP = 8.0
MAX_MESSAGE = 200  # characters of a server's error text quoted in a message
_jitter = random.SystemRandom()


class HttpError(Exception):
    """Base of every error this module raises; `str()` never contains a secret."""


class HttpConfigError(HttpError):
    """The URL or an option is unusable (nothing was sent)."""


class HttpTlsError(HttpError):
    """The server's TLS certificate could not be verified (never retried)."""


class HttpStatusError(HttpError):
    """The server answered with a status that is not retried (4xx other than 429)."""

    def __init__(self, message: str, status: int, server_message: str, attempts: int):
        super().__init__(message)
        self.status = status
        self.server_message = server_message
        self.attempts = attempts


class HttpGaveUp(HttpError):
    """Every attempt failed with a retryable error and the `max_wait` budget is spent."""

    def __init__(self, message: str, attempts: int, status: int | None = None, failure: str = ""):
        super().__init__(message)
        self.attempts = attempts
        self.status = status
        self.failure = failure  # the last failure alone, e.g. "answered 503" or "timed out (ReadTimeout)"


@dataclass
class Response:
    """What a caller needs of an answer: status, parsed JSON (or None), text, headers, attempts used."""

    status: int
    body: Any
    text: str
    headers: dict[str, str]
    attempts: int


def redact(text: str, secrets: list[str]) -> str:
    """`text` with every occurrence of every (non-trivial) secret replaced."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "<redacted>")
    return text


def unknown_placeholder(option: str, template: str, allowed) -> str | None:
    """One sentence if the URL/body template `option` uses a {placeholder} not in `allowed`, else None.
    ValueError for a template str.format cannot read."""
    used = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    unknown = [name for name in used if name not in allowed]
    if unknown:
        return (
            f"{option} uses the unknown placeholder {{{unknown[0]}}}: use only "
            + ", ".join(f"{{{name}}}" for name in allowed)
            + "."
        )
    return None


def is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` value (delta-seconds or HTTP-date); None if absent/invalid."""
    if not value:
        return None
    value = value.strip()
    now = time.time() if now is None else now
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


def parse_ratelimit_reset(value: str | None, now: float | None = None) -> float | None:
    """Seconds until an `X-Ratelimit-Reset` epoch timestamp; None if absent or invalid.

    LaunchDarkly documents epoch milliseconds. Some in-house services send epoch seconds; a value
    below 10^11 cannot be milliseconds of this century (that would be 1973), so it is read as seconds.
    """
    if not value:
        return None
    try:
        stamp = float(value.strip())
    except ValueError:
        return None
    if stamp >= 1e11:
        stamp /= 1000.0
    now = time.time() if now is None else now
    return max(0.0, stamp - now)


def server_message(text: str, body: Any) -> str:
    """A short one-line excerpt of what the server said about an error (JSON `message` if any)."""
    message = ""
    if isinstance(body, dict):
        for key in ("message", "error", "detail", "code"):
            if isinstance(body.get(key), str) and body[key].strip():
                message = body[key]
                break
    if not message:
        message = text or ""
    message = " ".join(message.split())
    return message[:MAX_MESSAGE] + ("..." if len(message) > MAX_MESSAGE else "")


@dataclass
class HttpClient:
    """A `requests` session with our TLS, User-Agent, timeout and retry rules."""

    timeout: float = 5.0
    max_wait: float = 30.0
    validate_certs: bool = True
    ca_path: str | None = None
    secrets: list[str] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)
    sleep: Any = time.sleep  # injectable for unit tests
    clock: Any = time.monotonic
    wall_clock: Any = time.time  # for rate-limit headers that name a moment (HTTP date, epoch)

    def __post_init__(self) -> None:
        if self.timeout <= 0:
            raise HttpConfigError("timeout must be a positive number of seconds: set timeout to e.g. 5.")
        if self.max_wait < 0:
            raise HttpConfigError("max_wait must be zero or more seconds: set max_wait to e.g. 30.")
        self.session = requests.Session()
        self.session.headers.update({"User-Agent": USER_AGENT, "Accept": "application/json", **self.headers})
        # Verification is on unless the operator turned it off; the module warns when they do. It is
        # passed with every request: a Session-level `verify` loses to REQUESTS_CA_BUNDLE/CURL_CA_BUNDLE
        # in the environment (requests' merge_environment_settings), which would silently ignore
        # ca_path and validate_certs. With True, such a variable still names the default trust store.
        self.verify: bool | str = (self.ca_path or True) if self.validate_certs else False
        self.requests_sent = 0
        self.deadline: float | None = None

    def begin(self) -> None:
        """Start the `max_wait` budget that every following request shares (one module run, one budget)."""
        self.deadline = self.clock() + self.max_wait

    def warnings_for(self, url: str, carries_secret: bool = True) -> list[str]:
        """What an operator must be told about how `url` will be reached (never silent)."""
        notes = []
        scheme = urlsplit(url).scheme
        if scheme == "https" and not self.validate_certs:
            notes.append(
                f"TLS certificate verification is OFF for {self.safe_url(url)} (validate_certs=false): "
                + ("anyone on the path could read the API key" if carries_secret else "its answers could be forged")
                + "; give ca_path instead."
            )
        if scheme == "http" and carries_secret and not is_loopback(url):
            notes.append(
                f"{self.safe_url(url)} is plain http: the API key and the change travel unencrypted; use https."
            )
        return notes

    @staticmethod
    def safe_url(url: str) -> str:
        """The URL without user:password and without the query string (which may carry a token)."""
        parts = urlsplit(url)
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        return f"{parts.scheme}://{host}{parts.path}"

    def _say(self, text: str) -> str:
        return redact(text, self.secrets)

    def request(
        self,
        method: str,
        url: str,
        *,
        json_body: Any = None,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
        deadline: float | None = None,
        what: str = "",
    ) -> Response:
        """Send one request, retrying per the policy above; return the first non-retryable answer.

        2xx and 4xx (except 429) answers are returned as they are: the caller turns 4xx into its own
        error with `status_error()`. `deadline` (a `clock()` value) overrides the budget begun by
        `begin()` (or `max_wait` from now).
        """
        what = what or f"{method} {self.safe_url(url)}"
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise HttpConfigError(
                self._say(f"Cannot {what}: {self.safe_url(url)!r} is not an http(s) URL; give e.g. https://host.")
            )
        if deadline is None:
            deadline = self.deadline if self.deadline is not None else self.clock() + self.max_wait
        attempt = 0
        while True:
            attempt += 1
            self.requests_sent += 1
            retry_in: float | None = None
            try:
                with warnings.catch_warnings():
                    # urllib3 warns on every unverified request; the module has warned once already.
                    warnings.simplefilter("ignore")
                    answer = self.session.request(
                        method,
                        url,
                        json=json_body,
                        headers=headers,
                        params=params,
                        timeout=self.timeout,
                        verify=self.verify,
                    )
            except requests.exceptions.SSLError as exc:
                raise HttpTlsError(
                    self._say(
                        f"Cannot {what}: the TLS certificate of {parts.hostname} could not be verified "
                        f"({type(exc).__name__}); give the CA bundle in ca_path."
                    )
                ) from None
            except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
                kind = "timed out" if isinstance(exc, requests.exceptions.Timeout) else "could not connect"
                failure = f"{kind} ({type(exc).__name__})"
                status = None
            except requests.exceptions.RequestException as exc:
                raise HttpConfigError(self._say(f"Cannot {what}: {type(exc).__name__}; check the URL.")) from None
            else:
                if answer.status_code not in RETRY_STATUSES:
                    try:
                        body = answer.json() if answer.content else None
                    except ValueError:
                        body = None
                    return Response(answer.status_code, body, answer.text, dict(answer.headers), attempt)
                status = answer.status_code
                failure = f"answered {status}"
                now = self.wall_clock()
                waits = [
                    parse_retry_after(answer.headers.get("Retry-After"), now=now),
                    parse_ratelimit_reset(answer.headers.get("X-Ratelimit-Reset"), now=now),
                ]
                hinted = [w for w in waits if w is not None]
                retry_in = max(hinted) if hinted else None
            backoff = min(BACKOFF_CAP, BACKOFF_FIRST * 2 ** (attempt - 1)) * _jitter.uniform(0.5, 1.0)
            wait = max(retry_in, 0.05) if retry_in is not None else backoff
            left = deadline - self.clock()
            if wait > left:
                hint = (
                    f"the server asks to wait {retry_in:.1f}s more"
                    if retry_in is not None and retry_in > left
                    else f"max_wait ({self.max_wait:g}s) is spent"
                )
                raise HttpGaveUp(
                    self._say(
                        f"Cannot {what}: it {failure} on each of {attempt} attempt(s) and {hint}; "
                        "retry later or raise max_wait."
                    ),
                    attempts=attempt,
                    status=status,
                    failure=failure,
                )
            self.sleep(wait)

    def status_error(self, response: Response, what: str, cause_and_fix: str) -> HttpStatusError:
        """An error for a non-retried status: one sentence, the server's own words quoted (redacted)."""
        said = self._say(server_message(response.text, response.body))
        quoted = f' (server said: "{said}")' if said else ""
        return HttpStatusError(
            self._say(f"Cannot {what}: {cause_and_fix}{quoted}."),
            status=response.status,
            server_message=said,
            attempts=response.attempts,
        )
