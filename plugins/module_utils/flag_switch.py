# Copyright: contributors to the emergency-rollback runbook
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The kill switch itself: read, compare, write only if needed, read back. Provider-independent.

`switch_flag(provider, "disabled", check_mode=False, comment=...)` returns the result dict; it
raises a `FlagError` (see flag_providers) when the flag could not be read, written, or confirmed in
the new state. `run_feature_flag(params, check_mode, diff)` is the feature_flag plugin's logic
(plugins/module_utils/runbook_plugin.py): it builds the provider from the task's options and turns
every failure into one sentence without the API key. Nothing here knows about Ansible.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from ansible.module_utils.flag_options import STATES
from ansible.module_utils.flag_providers import FlagError, FlagProvider, FlagStateMismatch, make_provider
from ansible.module_utils.http_client import HttpClient, HttpError, redact


def state_name(enabled: bool) -> str:
    return "enabled" if enabled else "disabled"


def utc_iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="microseconds")


def switch_flag(
    provider: FlagProvider,
    state: str,
    *,
    check_mode: bool = False,
    comment: str = "",
    clock=time.monotonic,
    wall_clock=time.time,
) -> dict[str, Any]:
    """Bring the flag to `state` ("enabled" | "disabled").

    Returns: changed, previous_state, state, provider, attempts (write attempts, 0 without a write),
    change_reference (+ change_reference_kind) where the provider reports one, elapsed_seconds,
    confirmed_at (UTC, ISO 8601: when the flag system's answer confirming `state` arrived, i.e. the
    read-back after a write, or the first read when nothing was written; None in check mode, which
    confirms nothing), diff (before/after), notes (non-fatal remarks for the operator).
    Every configuration an application fetches after `confirmed_at` has the flag in `state`, which
    is what the propagation barrier requires of each instance.
    """
    if state not in STATES:
        raise ValueError(f"state must be one of {STATES}, not {state!r}")
    desired = state == "enabled"
    started = clock()
    provider.client.begin()  # one max_wait budget for the reads, the write and the read-back
    before = provider.read()
    confirmed_at = wall_clock()
    result: dict[str, Any] = {
        "changed": False,
        "provider": provider.name,
        "flag": provider.flag,
        "environment": provider.environment,
        "previous_state": state_name(before.enabled),
        "state": state_name(before.enabled),
        "attempts": 0,
        "change_reference": None,
        "change_reference_kind": "",
    }
    if before.enabled != desired:
        result["changed"] = True
        result["state"] = state
        if not check_mode:
            try:
                written = provider.write(desired, comment)
            except Exception as exc:  # the caller still learns what the flag was before the failed write
                exc.previous_state = result["previous_state"]
                raise
            result["attempts"] = written.attempts
            if written.by_other:
                result["changed"] = False
                provider.notes.append(
                    f"{provider.label} shows the flag turned {'on' if desired else 'off'} by another change"
                    f" ({written.reference_kind} {written.reference}) between this run's read and its write:"
                    " this run's write changed nothing."
                )
            result["change_reference"] = written.reference
            result["change_reference_kind"] = written.reference_kind if written.reference is not None else ""
            after = provider.read()
            confirmed_at = wall_clock()
            if after.enabled != desired:
                mismatch = FlagStateMismatch(
                    f"Cannot confirm flag {provider.flag} {state} in {provider.environment}: {provider.label} accepted "
                    f"the change but still reports it {state_name(after.enabled)}; check the flag in {provider.label} "
                    "(an approval workflow or a concurrent change may have overridden it) and rerun."
                )
                mismatch.attempts = written.attempts
                raise mismatch
    result["confirmed_at"] = None if check_mode and result["changed"] else utc_iso(confirmed_at)
    result["elapsed_seconds"] = round(clock() - started, 3)
    result["diff"] = {
        "before": {"state": result["previous_state"]},
        "after": {"state": result["state"]},
        "before_header": f"{provider.name} flag {provider.flag} ({provider.environment})",
        "after_header": f"{provider.name} flag {provider.flag} ({provider.environment})",
    }
    result["notes"] = list(provider.notes)
    return result


def run_feature_flag(params: dict, check_mode: bool = False, diff: bool = False) -> dict[str, Any]:
    """The feature_flag plugin: bring the flag to params["state"], read it back (see the module's docs)."""
    secrets = [params["api_key"]] if params.get("api_key") else []
    result: dict[str, Any] = {
        "changed": False,
        "provider": params["provider"],
        "flag": params["flag"],
        "environment": params["environment"],
        "attempts": 0,
    }
    warnings: list[str] = []
    try:
        client = HttpClient(
            timeout=params["timeout"],
            max_wait=params["max_wait"],
            validate_certs=params["validate_certs"],
            ca_path=params["ca_path"],
            secrets=secrets,
        )
        warnings.extend(client.warnings_for(params["api_url"]))
        provider = make_provider(
            params["provider"],
            client,
            params["api_url"],
            params["api_key"] or "",
            params["flag"],
            project=params["project"],
            environment=params["environment"],
            http_options={key: value for key, value in params.items() if key.startswith("http_")},
        )
        outcome = switch_flag(provider, params["state"], check_mode=check_mode, comment=params["comment"])
    except (FlagError, HttpError) as exc:
        result["attempts"] = getattr(exc, "attempts", 0)
        if getattr(exc, "previous_state", None):
            result["previous_state"] = exc.previous_state
        failure = {"failed": True, "msg": redact(str(exc), secrets), "error_type": type(exc).__name__}
        return {**result, **failure, "warnings": warnings}
    except Exception as exc:  # an unexpected failure must still not leak the key
        message = f"Cannot switch flag {params['flag']}: unexpected {type(exc).__name__}: {exc}"
        failure = {"failed": True, "msg": redact(message, secrets), "error_type": type(exc).__name__}
        return {**result, **failure, "warnings": warnings}
    changes = outcome.pop("diff")
    warnings.extend(redact(note, secrets) for note in outcome.pop("notes"))
    if diff:
        outcome["diff"] = changes
    return {**outcome, "warnings": warnings}
