"""The words of every rollback notification: one function, so the job output, Slack, e-mail and PagerDuty agree.

`compose(report)` reads what the run knows (the role passes the registered results of its steps as
they are, or nothing for a step that never ran) and returns a `Message`:

    line 1        the outcome, in one line
    What changed  the flag and each database, as far as it was checked
    State left    (failures) the flag and each database, read after the failure
    Verification  what was verified, what failed, what was inconclusive, or that it was not reached
    What to do    the next step for a human
    footer        operator, ticket, reason, job link, runbook section, audit run

The PagerDuty event uses the first line as `payload.summary` (cut to PagerDuty's 1024 characters)
and the whole text, line by line, in `custom_details.summary`. Nothing here sends anything, reads
the environment, or knows about Ansible. No line ever carries a secret: the inputs hold none
(webhook URLs, routing keys and passwords never reach this function), and a blocking session is
named by pid, role, application_name, state and age (pg_locks.describe_sessions), not its query.

"Nothing was changed" is said only when it was checked: the run stopped before the flag step wrote
anything and before the schema step ran. Everything else is listed as what was read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ansible.module_utils.notify_facts import (
    STEPS,
    databases_of,
    failed_step_of,
    flag_left_of,
    flag_name_of,
    result_dict,
    seconds_since,
    step_failed,
    step_ran,
    verification_of,
)

SUMMARY_MAX = 1024  # PagerDuty Events API v2: payload.summary "maximum permitted length ... 1024 characters"
GROUP_ABOVE = 3  # more databases than this are counted per revision in the outcome line
DEDUP_MAX = 255  # PagerDuty Events API v2: dedup_key "maximum permitted length ... 255 characters"
RUNBOOK = "RUNBOOK.md"
# The RUNBOOK.md section a page links to, per failed step (explicit anchors in RUNBOOK.md, section 8).
RUNBOOK_ANCHORS = {
    "preflight": "paged-preflight",
    "flag": "paged-flag",
    "propagation": "paged-propagation",
    "schema": "paged-schema",
    "verify": "paged-verify",
}


@dataclass
class Message:
    """One notification's words, and the facts the PagerDuty event carries."""

    outcome: str  # "succeeded" | "failed" | "inconclusive"
    subject: str
    lines: list[str]
    failed_step: str = ""
    severity: str = "info"  # PagerDuty: critical | error | warning | info
    dedup_key: str = ""
    runbook_ref: str = ""  # RUNBOOK.md#<anchor>
    runbook_url: str = ""  # the same, as a web address, when the inventory gives one
    details: dict[str, Any] = field(default_factory=dict)  # PagerDuty custom_details (summary added by text())

    @property
    def first_line(self) -> str:
        return self.lines[0]

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def pagerduty_summary(self) -> str:
        return cut(self.first_line, SUMMARY_MAX)


def cut(text: str, limit: int) -> str:
    """`text` within `limit` characters, an ellipsis marking a cut."""
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def dedup_key(environment: str, feature: str) -> str:
    """One open PagerDuty incident per environment and feature, whatever the number of attempts."""
    return cut(f"emergency-rollback/{environment or 'unknown'}/{feature or 'unknown'}", DEDUP_MAX)


# -- composing ---------------------------------------------------------------------------------------
def compose(report: dict, event: str, now: float | None = None) -> Message:  # noqa: PLR0912, PLR0915 - one text, read top-down
    """The words for `event` ("succeeded" or "failed"; "start" gets the start line only) from `report`."""
    now = datetime.now(UTC).timestamp() if now is None else now
    env = str(report.get("environment") or "?")
    feature = flag_name_of(report)
    verification = verification_of(report)
    step = "" if event in ("succeeded", "start") else failed_step_of(report)
    inconclusive = step == "verify" and verification["verdict"] == "inconclusive"
    outcome = "succeeded" if event in ("succeeded", "start") else "inconclusive" if inconclusive else "failed"
    target = str(report.get("target_revision") or "")
    flag = result_dict(report.get("flag"))
    schema_dbs = databases_of(report.get("schema"))
    planned = {d["name"]: d for d in databases_of(report.get("plan"))}
    left_dbs = {d["name"]: d for d in databases_of(report.get("state_left"))}
    flag_before = str(report.get("flag_before") or result_dict(report.get("flag_read")).get("previous_state") or "")
    flag_left, flag_left_why = flag_left_of(report)
    elapsed = seconds_since(report.get("started_at"), now)
    took = f" in {elapsed:.1f} s" if elapsed is not None else ""

    message = Message(outcome=outcome, subject="", lines=[], failed_step=step, dedup_key=dedup_key(env, feature))
    if event == "start":
        message.subject = f"Rollback of {feature} in {env} started"
        message.lines = [_start_line(report, feature, env)]
        message.lines += _footer(report, "")
        message.details = _details(
            report, feature=feature, env=env, step=step, cause="", flag_left=flag_left, left_dbs=left_dbs
        )
        return message

    # -- the state left behind (failures), read after the failure ------------------------------
    names = list(dict.fromkeys([*planned, *(d["name"] for d in schema_dbs), *left_dbs]))
    revisions_left = {}
    for name in names:
        db = left_dbs.get(name)
        if db and not db.get("failed") and "revision" in db:
            revisions_left[name] = db.get("revision") or "base"
        else:
            revisions_left[name] = None
    mixed = len({r for r in revisions_left.values()}) > 1 or (bool(revisions_left) and None in revisions_left.values())

    # -- line 1: the outcome ----------------------------------------------------------------------
    if outcome == "succeeded":
        changed_dbs = [d for d in schema_dbs if d.get("changed")]
        at = target or next((str(d.get("to_revision")) for d in schema_dbs if d.get("to_revision")), "the target")
        if flag.get("changed") or changed_dbs:
            did = f"flag off, {len(changed_dbs)} of {len(schema_dbs)} database(s) reverted to {at}"
        else:
            did = f"nothing left to do (flag already off, every database already at {at})"
        first = f"Rollback of {feature} in {env} succeeded{took}: {did}, verified."
        message.subject = f"Rollback of {feature} in {env} succeeded"
        message.severity = "info"
    elif outcome == "inconclusive":
        first = (
            f"ROLLBACK NOT VERIFIED in {env}: the rollback of {feature} completed{took}, but its verification "
            f"was INCONCLUSIVE ({_not_checked(verification) or verification['summary'] or 'see below'})."
        )
        message.subject = f"ROLLBACK UNVERIFIED in {env}: verification inconclusive"
        message.severity = "critical" if mixed else "error"
    else:
        state = _state_phrase(feature, flag_left, revisions_left, target)
        first = f"ROLLBACK FAILED at step {step} in {env}. State left: {state}."
        message.subject = f"ROLLBACK FAILED in {env}: failed at {step}"
        message.severity = "critical" if step == "schema" or mixed else "error"
    lines = [first]

    cause = " ".join(str(report.get("cause") or "").split())
    if outcome != "succeeded":
        lines.append(f"Cause: {cause or 'see the job output'}")

    # -- what changed ---------------------------------------------------------------------------
    lines.append("What changed:")
    ran_flag = step_ran(flag) and not step_failed(flag)
    if ran_flag:
        reference = f", change {flag['change_reference']}" if flag.get("change_reference") else ""
        provider = str(flag.get("provider") or "")
        how = f" ({provider}{reference})" if provider or reference else ""
        if flag.get("changed"):
            lines.append(f"- flag {feature}: {flag.get('previous_state')} -> {flag.get('state')}{how}")
        else:
            lines.append(f"- flag {feature}: unchanged, already {flag.get('state')}{how}")
    elif step in ("", "preflight"):
        lines.append(f"- flag {feature}: not changed (the run stopped before the flag step)")
    elif flag_left and flag_before:
        verb = "not changed" if flag_left == flag_before else f"{flag_before} -> {flag_left}"
        lines.append(f"- flag {feature}: {verb} (the flag step failed; read afterwards: {flag_left})")
    else:
        lines.append(f"- flag {feature}: unknown (the flag step failed and the flag could not be read afterwards)")
    schema_ran = step_ran(report.get("schema"))
    by_name = {d["name"]: d for d in schema_dbs}
    for name in names:
        db = by_name.get(name)
        if db is None:
            if not schema_ran and STEPS.index(step or "verify") < STEPS.index("schema"):
                lines.append(f"- database {name}: not touched (the run stopped before the schema step)")
            else:
                lines.append(f"- database {name}: no result from the schema step")
        elif db.get("failed"):
            lines.append(
                f"- database {name}: not changed (its revert failed and was rolled back; "
                f"{db.get('attempts') or 0} attempt(s))"
            )
        elif db.get("changed"):
            archive = result_dict(db.get("archive"))
            rows = int(archive.get("rows") or 0)
            kept = ""
            if rows:
                tables = ", ".join(
                    str(t.get("archive_table")) for t in archive.get("tables") or [] if isinstance(t, dict)
                )
                kept = f"; {rows} rows archived in {tables}" if tables else f"; {rows} rows archived"
            lines.append(f"- database {name}: {db.get('from_revision')} -> {db.get('to_revision') or 'base'}{kept}")
        else:
            lines.append(f"- database {name}: unchanged, already at {db.get('to_revision') or db.get('from_revision')}")
    if outcome == "failed" and step == "preflight" and not ran_flag and not schema_ran:
        lines.append("Nothing was changed (the request stopped before the flag step and the schema step).")

    # -- the state left behind ------------------------------------------------------------------
    if outcome != "succeeded":
        lines.append("State left behind:")
        lines.append(f"- flag {feature}: {flag_left or 'unknown (' + flag_left_why + ')'}")
        for name in names:
            db = left_dbs.get(name)
            if db is None:
                lines.append(f"- database {name}: revision not read")
            elif db.get("failed"):
                lines.append(f"- database {name}: revision unknown ({' '.join(str(db.get('msg') or '').split())})")
            else:
                reached = " (target reached)" if target and db.get("revision") == target else ""
                lines.append(f"- database {name}: revision {db.get('revision') or 'base'}{reached}")
        if not names:
            lines.append("- databases: not read")

    # -- verification ---------------------------------------------------------------------------
    lines += _verification_lines(outcome, step, verification, report)

    # -- what to do next ------------------------------------------------------------------------
    lines.append("What to do next:")
    steps = _next_steps(
        report, outcome=outcome, step=step, verification=verification, flag_left=flag_left, schema_dbs=schema_dbs
    )
    lines += [f"- {line}" for line in steps]

    if str(report.get("audit_status") or "").startswith("error"):
        lines.append(f"WARNING: the audit trail failed during this run ({report['audit_status']}): keep this message.")
    anchor = RUNBOOK_ANCHORS.get(step, "")
    message.runbook_ref = f"{RUNBOOK}#{anchor}" if anchor else ""
    base = str(report.get("runbook_url") or "")
    message.runbook_url = f"{base}#{anchor}" if base and anchor else ""
    lines += _footer(report, message.runbook_url or message.runbook_ref)
    message.lines = lines
    message.details = _details(
        report, feature=feature, env=env, step=step, cause=cause, flag_left=flag_left, left_dbs=left_dbs
    )
    return message


def _start_line(report: dict, feature: str, env: str) -> str:
    operator = report.get("operator") or "unknown"
    ticket = report.get("ticket") or "no ticket"
    reason = " ".join(str(report.get("reason") or "").split())
    return f"Emergency rollback of {feature} in {env} started by {operator} ({ticket}): {reason}"


def _state_phrase(feature: str, flag_left: str, revisions: dict, target: str) -> str:
    parts = [f"flag {feature} {flag_left or 'unknown'}"]
    if not revisions:
        parts.append("databases not read")
    if len(revisions) > GROUP_ABOVE:  # many databases: counted per revision, the unknown ones named
        counts: dict[str, int] = {}
        for revision in revisions.values():
            if revision is not None:
                counts[revision] = counts.get(revision, 0) + 1
        for revision, count in sorted(counts.items(), key=lambda item: (item[0] != target, item[0])):
            parts.append(f"{count} database(s) at {revision}" + (" (target)" if target and revision == target else ""))
        unknown = [name for name, revision in revisions.items() if revision is None]
        if unknown:
            parts.append(f"{len(unknown)} unknown ({', '.join(unknown[:5])}{', ...' if len(unknown) > 5 else ''})")
        return "; ".join(parts)
    for name, revision in revisions.items():
        if revision is None:
            parts.append(f"{name} unknown")
        else:
            parts.append(f"{name} at {revision}" + (" (target)" if target and revision == target else ""))
    return "; ".join(parts)


def _not_checked(verification: dict) -> str:
    checks = [c for c in verification["checks"] if c["verdict"] == "inconclusive"]
    return "; ".join(f"{c['name']}: {c['detail']}" if c["detail"] else c["name"] for c in checks)


def _verification_lines(outcome: str, step: str, verification: dict, report: dict) -> list[str]:
    if step and step != "verify":
        return [f"Verification: not reached (the run stopped at {step})."]
    if verification["checks"]:
        # The verify step's own sentence first (app_verify's msg), then one line per check.
        out = [f"Verification: {verification['summary']}" if verification["summary"] else "Verification:"]
        for check in verification["checks"]:
            detail = f": {check['detail']}" if check["detail"] else ""
            out.append(f"- {check['name']}: {check['verdict']}{detail}")
        return out
    if outcome == "succeeded":
        error_rate = str(report.get("error_rate") or "")
        tail = f"5xx ratio {error_rate}" if error_rate else "5xx ratio back at the baseline"
        return [
            "Verification:",
            "- verified: flag off, revision and schema fingerprint as before the deployment, instances healthy, "
            + tail,
        ]
    summary = verification["summary"] or "see the cause above"
    return ["Verification:", f"- {verification['verdict'] or 'failed'}: {summary}"]


def _next_steps(  # noqa: PLR0911 - one answer per outcome and step
    report: dict, *, outcome: str, step: str, verification: dict, flag_left: str, schema_dbs: list[dict]
) -> list[str]:
    runbook = str(report.get("runbook") or f"{RUNBOOK}, section 4 'When the down migration fails'")
    if outcome == "succeeded":
        kept = [d for d in schema_dbs if result_dict(d.get("archive")).get("rows")]
        out = ["Nothing for the rollback. Keep the feature off until it is fixed; deploy.yml turns it on again."]
        if kept:
            out.append(
                "The archived rows stay in each database's rollback_archive schema (readable by the migration "
                "role only) under this run's id."
            )
        return out
    if outcome == "inconclusive":
        return [
            "The rollback's changes are in place (flag off, schema reverted) and nothing was undone.",
            f"Check by hand what could not be verified: {_not_checked(verification) or verification['summary']}.",
            "Once traffic reaches the application again, run the same command: it changes nothing and verifies again.",
        ]
    if step == "preflight":
        if step_ran(report.get("flag")) and not step_failed(report.get("flag")):
            return [
                "The flag is off (the legacy path is safe); the schema was not touched.",
                "Fix the cause above and run the same command again: it finds the flag off and goes on.",
            ]
        return ["Nothing was changed. Fix the cause above and run the same command again."]
    if step == "flag":
        out = ["The schema was not touched. Once the flag system answers, run the same command again."]
        if flag_left == "enabled":
            out.append(
                "The flag is still ON: customers are still on the new path. If the flag API stays down, turn the "
                "flag off in the flag system's own console, then re-run."
            )
        return out
    if step == "propagation":
        return [
            "The flag is off (the legacy path is safe); the schema was not touched.",
            "Find the instance still on the new path (the cause names it), then run the same command again.",
        ]
    if step == "schema":
        return [
            "Each database is either at the target or exactly as before (one transaction each): no half-reverted "
            "schema. The flag is off: the application is on the legacy path.",
            f"Manual intervention: {runbook}. A down migration that failed needs a DBA before any re-run; after "
            "a lock timeout or a changed plan, re-run the same command once the cause is gone: it finishes the "
            "ones left.",
        ]
    return [
        "The rollback's changes are in place; verification did not pass, nothing was undone.",
        "Check what the cause names, then run the same command again: it changes nothing and verifies again.",
    ]


def _footer(report: dict, runbook: str) -> list[str]:
    operator = report.get("operator") or "unknown"
    source = f" ({report['operator_source']})" if report.get("operator_source") else ""
    ticket = report.get("ticket") or "none"
    reason = " ".join(str(report.get("reason") or "").split())
    out = [f"Operator: {operator}{source}; ticket: {ticket}; reason: {reason}"]
    if report.get("job_url"):
        out.append(f"Job: {report['job_url']}")
    if runbook:
        out.append(f"Runbook: {runbook}")
    out.append(f"Audit: run {report.get('run_id') or 'unknown'} in {report.get('audit_file') or 'unknown'}")
    return out


def _details(
    report: dict, *, feature: str, env: str, step: str, cause: str, flag_left: str, left_dbs: dict
) -> dict[str, Any]:
    """PagerDuty custom_details: the facts a responder needs first (the summary lines are added by the sender)."""
    flag = result_dict(report.get("flag"))
    databases = {}
    for name, db in left_dbs.items():
        databases[name] = "unknown" if db.get("failed") else (db.get("revision") or "base")
    if not databases:
        for db in databases_of(report.get("schema")):
            databases[db["name"]] = db.get("to_revision") if not db.get("failed") else db.get("from_revision")
    return {
        "environment": env,
        "feature": feature,
        "run_id": report.get("run_id") or "",
        "job_url": report.get("job_url") or "",
        "operator": report.get("operator") or "",
        "ticket": report.get("ticket") or "",
        "failed_step": step,
        "cause": cut(cause, 2000),
        "flag_state": flag_left or flag.get("state") or "unknown",
        "database_revisions": databases,
        "target_revision": report.get("target_revision") or "",
        "runbook": f"{RUNBOOK}#{RUNBOOK_ANCHORS[step]}" if step in RUNBOOK_ANCHORS else RUNBOOK,
    }
