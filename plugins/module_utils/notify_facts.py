# Copyright: contributors to the emergency-rollback runbook
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""What a rollback run knows, read for its notification: which step failed, the verification, the flag.

The inputs are the registered results of the run's steps as the notify role passes them (nothing
for a step that never ran); notify_report composes the words from these readings.
"""

from __future__ import annotations

from typing import Any

STEPS = ("preflight", "flag", "propagation", "schema", "verify")
VERDICTS = ("verified", "failed", "inconclusive")


def result_dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def step_ran(result: Any) -> bool:
    """A registered result of a step that ran (not skipped, not missing)."""
    result = result_dict(result)
    return bool(result) and not result.get("skipped")


def step_failed(result: Any) -> bool:
    return bool(result_dict(result).get("failed"))


def failed_step_of(report: dict) -> str:  # noqa: PLR0911 - one per step, in order
    """The first step whose result is missing or failed (the role passes each step's registered result)."""
    given = str(report.get("failed_step") or "")
    if given:
        return given
    # The plan belongs to the preflight step; it may run before the flag step or after it (the flag
    # off first, issue 15), so a failed flag step wins over a missing plan.
    if step_failed(report.get("flag")):
        return "flag"
    if not step_ran(report.get("plan")) or step_failed(report.get("plan")):
        return "preflight"
    if not step_ran(report.get("flag")):
        return "flag"
    if not step_ran(report.get("propagation")) or step_failed(report.get("propagation")):
        return "propagation"
    if not step_ran(report.get("schema")) or step_failed(report.get("schema")):
        return "schema"
    return "verify"


def databases_of(result: Any) -> list[dict]:
    """Per-database entries of a schema_migration or schema_state result (`databases` list)."""
    return [d for d in result_dict(result).get("databases") or [] if isinstance(d, dict) and d.get("name")]


def verification_of(report: dict) -> dict:
    """{verdict, checks: [{name, verdict, detail}], summary} as rollback_verify publishes it (docs/interfaces.md)."""
    found = result_dict(report.get("verification"))
    checks = []
    for check in found.get("checks") or []:
        if isinstance(check, dict) and check.get("name"):
            verdict = str(check.get("verdict") or "")
            checks.append(
                {
                    "name": str(check["name"]),
                    "verdict": verdict if verdict in VERDICTS else "failed",
                    "detail": " ".join(str(check.get("detail") or "").split()),
                }
            )
    verdict = str(found.get("verdict") or "")
    if verdict not in VERDICTS:
        verdict = ""
    summary = found.get("summary") or found.get("msg") or ""  # app_verify's result says `msg`
    return {"verdict": verdict, "checks": checks, "summary": " ".join(str(summary).split())}


def seconds_since(started: Any, now: float) -> float | None:
    try:
        return max(0.0, now - float(started))
    except (TypeError, ValueError):
        return None


def flag_name_of(report: dict) -> str:
    return str(report.get("feature") or result_dict(report.get("flag")).get("flag") or "the flag")


def flag_left_of(report: dict) -> tuple[str, str]:
    """(state, why unknown) of the flag as read after a failure ("" state when it could not be read)."""
    left = result_dict(report.get("flag_left"))
    if left.get("failed") or not left.get("previous_state"):
        why = " ".join(str(left.get("msg") or "the flag API did not answer").split())
        return "", why
    return str(left["previous_state"]), ""
