"""The kill switch itself: read, compare, write only if needed, read back. Provider-independent.

`switch_flag(provider, "disabled", check_mode=False, comment=...)` returns the module's result
dict; it raises a `FlagError` (see flag_providers) when the flag could not be read, written, or
confirmed in the new state. Nothing here knows about Ansible.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from ansible.module_utils.flag_providers import FlagProvider, FlagStateMismatch

STATES = ("enabled", "disabled")


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
            written = provider.write(desired, comment)
            result["attempts"] = written.attempts
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
