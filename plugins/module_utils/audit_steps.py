# Copyright: contributors to the emergency-rollback runbook
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The steps of an audited run, and the facts the roles publish for the audit.

Steps: each role is a step, named after the role without its `rollback_` prefix (tasks outside a
role count under their play's name, handlers outside a role under `notify`). Per step: outcome
(`failed`, `rescued`, `changed`, `ok` or `skipped`, the first that any result had), start, end,
duration (the sum of the segments in which its tasks ran), number of hosts, and the first
failure (task, host, message).

Facts: the roles publish what the audit keeps with `ansible.builtin.set_stats` (`per_host: false`,
`data: {rollback_audit: {...}}`), one place per step (docs/interfaces.md lists them). Those dicts
are deep-merged into the end record; keys of the record itself cannot be overwritten. Nothing else
of any task result is kept.

Plain Python: the callback feeds it Ansible's events; clocks are injected for the tests.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from ansible.module_utils import audit_redact as redaction

STEP_PREFIX = "rollback_"
HANDLER_STEP = "notify"
OUTCOMES = ("failed", "rescued", "changed", "ok", "skipped")
FACTS_KEY = "rollback_audit"
# The record's own fields and the request's (audit_guard): no step may publish these names.
RESERVED_KEYS = frozenset(
    {
        "accept_data_statements",
        "awx_job_id",
        "awx_job_template",
        "environment",
        "job_url",
        "limit",
        "operator",
        "operator_note",
        "operator_source",
        "production_like",
        "reason",
        "targets",
        "ticket",
        "tunables",
        "audit_file",
        "audit_warnings",
        "check_mode",
        "controller",
        "duration_seconds",
        "ended_at",
        "error",
        "key_id",
        "kind",
        "outcome",
        "playbook",
        "playbook_path",
        "prev_sha256",
        "recap",
        "refused",
        "request",
        "run_id",
        "schema",
        "seal",
        "seq",
        "sha256",
        "sinks",
        "started_at",
        "status",
        "steps",
    }
)


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def step_name(role_name: str | None, play_name: str, handler: bool) -> str:
    """The step a task belongs to: its role without the `rollback_` prefix, else notify/the play."""
    if role_name:
        short = role_name[len(STEP_PREFIX) :] if role_name.startswith(STEP_PREFIX) else ""
        return short or role_name
    return HANDLER_STEP if handler else play_name


@dataclass
class Step:
    name: str
    started_at: str
    ended_at: str | None = None
    seconds: float = 0.0
    hosts: set[str] = field(default_factory=set)
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    failed_hosts: dict[str, int] = field(default_factory=dict)
    failure: dict | None = None
    failed_first: float | None = None  # clock time of its first failed result: "failed at" names the earliest

    def outcome(self) -> str:
        """The first of failed, rescued, changed, ok that any result had; skipped if none."""
        return next((name for name in OUTCOMES if self.counts[name]), "skipped")

    def as_dict(self) -> dict:
        out = {
            "name": self.name,
            "outcome": self.outcome(),
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "duration_seconds": round(self.seconds, 3),
            "hosts": len(self.hosts),
        }
        if self.failure is not None:
            out["failure"] = self.failure
        return out


class Steps:
    """The steps of one run in the order they started; one step is current at a time."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, now: Callable[[], str] = utc_now):
        self.clock = clock
        self.now = now
        self.steps: dict[str, Step] = {}
        self.current: str | None = None
        self.segment_started = 0.0
        self.no_hosts: list[str] = []

    def close(self) -> str | None:
        """End the current segment; returns the step that was current."""
        active = self.current
        if active is not None:
            step = self.steps[active]
            step.seconds += self.clock() - self.segment_started
            step.ended_at = self.now()
        self.current = None
        return active

    def enter(self, name: str) -> tuple[Step, bool]:
        """Make `name` the current step; returns it and whether the current step changed."""
        changed = self.current != name
        if changed:
            self.close()
            self.current = name
            self.segment_started = self.clock()
        if name not in self.steps:
            self.steps[name] = Step(name=name, started_at=self.now())
        return self.steps[name], changed

    def count(self, step: Step, host: str, outcome: str) -> None:
        step.hosts.add(host)
        step.counts[outcome] += 1
        if outcome == "failed":
            step.failed_hosts[host] = step.failed_hosts.get(host, 0) + 1
            if step.failed_first is None:
                step.failed_first = self.clock()

    def rescued(self, recap: dict) -> None:
        """Failures of hosts that ended with no failure were handled by a rescue section: `rescued`."""
        handled = {h for h, s in recap.items() if s.get("rescued") and not (s.get("failures") or s.get("unreachable"))}
        for step in self.steps.values():
            for host in set(step.failed_hosts) & handled:
                moved = step.failed_hosts.pop(host)
                step.counts["failed"] -= moved
                step.counts["rescued"] += moved
            if not step.failed_hosts:
                step.failed_first = None

    def fail(self, step: Step, task: str, host: str, message: str, secrets: set[str]) -> None:
        """Keep the first failure of a step (its message redacted)."""
        if step.failure is None:
            step.failure = redaction.redact({"task": task, "host": host, "message": message}, secrets)

    def as_list(self) -> list[dict]:
        return [step.as_dict() for step in self.steps.values()]

    def first_failed(self) -> str | None:
        """The step whose failure came first in time (a role may run twice: notify right after the flag
        step and again at the end, where the alert's own `fail` must not be taken for the cause)."""
        failed = [s for s in self.steps.values() if s.outcome() == "failed" and s.failed_first is not None]
        return min(failed, key=lambda s: s.failed_first).name if failed else None


def outcome_of(
    steps: Steps,
    active: str | None,
    failed_hosts: bool,
    *,
    signal_name: str | None,
    error: str | None,
    refused: str | None,
) -> tuple[str, str]:
    """(status, outcome) of a finished run."""
    if signal_name is not None:
        return "aborted", f"aborted by signal {signal_name}"
    if refused is not None:
        return "refused", "refused"
    failed = steps.first_failed()
    if steps.no_hosts and not failed:
        return "failed", f"failed at {steps.no_hosts[0]}: the play matched no host"
    if error is not None or failed_hosts or failed:
        last = active or (list(steps.steps)[-1] if steps.steps else "start")
        return "failed", f"failed at {failed or last}"
    return "completed", "succeeded"


def merge_facts(metadata: dict, data: dict, secrets: set[str], warnings: list[str]) -> None:
    """Deep-merge one published `rollback_audit` dict (redacted) into the run's facts."""
    clean = redaction.redact(data, secrets)
    for key in sorted(set(clean) & RESERVED_KEYS):
        warnings.append(f"set_stats key {key!r} is reserved for the audit record: ignored")
        del clean[key]
    redaction.deep_merge(metadata, clean)


def published_facts(result: dict) -> dict | None:
    """The `rollback_audit` dict a set_stats result carries, if any (never from a no_log result)."""
    if result.get("_ansible_no_log") or "censored" in result:
        return None
    stats = result.get("ansible_stats")
    if isinstance(stats, dict) and isinstance(stats.get("data"), dict):
        facts = stats["data"].get(FACTS_KEY)
        if isinstance(facts, dict):
            return facts
    return None
