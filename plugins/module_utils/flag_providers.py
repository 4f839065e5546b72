# Copyright: contributors to the emergency-rollback runbook
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Flag systems behind one small interface: `read()` the flag's state, `write()` a new one.

One module per system, each speaking that system's published API exactly (its references are
cited there): flag_unleash (Unleash admin API), flag_launchdarkly (LaunchDarkly REST API v2),
flag_optimizely (Optimizely Feature Experimentation Flags API), flag_http (the in-house service of
SEQ-OF-004, or another REST shape by configuration). The errors and the base class are in
flag_provider_base. `make_provider()` builds the one an inventory names.

Every failure raises a `FlagError` whose message is one sentence naming the cause and the fix, and
never contains the API key.
"""

from __future__ import annotations

from typing import Any

from ansible.module_utils.flag_http import HttpProvider
from ansible.module_utils.flag_launchdarkly import LD_API_VERSION, LD_SEMANTIC_PATCH, LaunchDarklyProvider
from ansible.module_utils.flag_optimizely import OptimizelyProvider
from ansible.module_utils.flag_options import PROVIDER_NAMES
from ansible.module_utils.flag_provider_base import (
    FlagAuthError,
    FlagConfigError,
    FlagEnvironmentNotFound,
    FlagError,
    FlagNotFound,
    FlagProvider,
    FlagRequestRejected,
    FlagResponseError,
    FlagState,
    FlagStateMismatch,
    FlagUnavailable,
    WriteResult,
)
from ansible.module_utils.flag_unleash import UnleashProvider
from ansible.module_utils.http_client import HttpClient, HttpStatusError

PROVIDERS = PROVIDER_NAMES  # defined with the argument spec, which must import nothing optional


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
    if provider == "optimizely":
        return OptimizelyProvider(*args, **where)
    if provider == "http":
        return HttpProvider(*args, options=http_options, **where)
    raise FlagConfigError(f"Unknown provider {provider!r}: use one of {', '.join(PROVIDERS)}.")


__all__ = [
    "LD_API_VERSION",
    "LD_SEMANTIC_PATCH",
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
    "HttpProvider",
    "HttpStatusError",
    "LaunchDarklyProvider",
    "OptimizelyProvider",
    "UnleashProvider",
    "WriteResult",
    "make_provider",
]
