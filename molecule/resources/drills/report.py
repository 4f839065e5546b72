"""A readable account of a scenario's drill: each run's steps, the load it met, what it sent, its audit record."""

from __future__ import annotations

import json

from drills import results
from drills.context import Scenario


def _load_line(summary: dict | None) -> str:
    if not summary:
        return "no load"
    return (
        f"{summary['requests']} requests ({summary['achieved_rate']}/s), {summary['failed']} failed, "
        f"p50 {summary['p50_ms']} ms, p99 {summary['p99_ms']} ms, max {summary['max_ms']} ms, "
        f"by path {summary['by_path']}"
    )


def _run_lines(run: dict) -> list[str]:
    end = run["audit"]["end"]
    outcome = end["outcome"] if end else ("aborted: no end record" if run["audit"]["start"] else "no audit record")
    lines = [
        f"== {run['label']}: exit code {run['rc']}, audit outcome '{outcome}', {run['seconds']} s (log {run['log']})",
    ]
    for step in (end or {}).get("steps", []):
        failure = step.get("failure")
        lines.append(
            f"   {step['name']:<12} {step['outcome']:<8} {step['duration_seconds']:>7.2f} s"
            + (f"   <- {failure['task']}: {failure['message']}" if failure else "")
        )
    for name, db in ((end or {}).get("databases") or {}).items():
        archive = db.get("archive") or {}
        lines.append(
            f"   database {name}: {db.get('revision_before')} -> {db.get('revision_after')}, "
            f"attempts {db.get('attempts')}, lock wait {db.get('lock_wait_seconds')} s, "
            f"{archive.get('rows', 0)} rows archived" + (f"; {db['msg']}" if db.get("failed") else "")
        )
    propagation = (end or {}).get("propagation")
    if propagation:
        lines.append(
            f"   propagation: {', '.join(propagation.get('instances') or [])} confirmed on legacy "
            f"({propagation.get('discovered_in') or 'configured list'}), the last "
            f"{propagation.get('last_confirmed_after_flag_seconds')} s after the flag was confirmed off"
            + (
                f"; not in the configured list: {', '.join(propagation['not_configured'])}"
                if propagation.get("not_configured")
                else ""
            )
        )
    load = run.get("load") or {}
    lines.append(f"   load during the rollback: {_load_line(load.get('during_rollback'))}")
    if load.get("during_schema_step"):
        lines.append(f"   load during the schema step: {_load_line(load['during_schema_step'])}")
    fault = run.get("fault") or {}
    if "flag_api" in fault:
        lines.append(
            f"   flag API fault: {len(fault['flag_api']['writes_answered'])} write(s) "
            f"answered {fault['flag_api']['status']}"
        )
    if "blocker" in fault:
        blocker = fault["blocker"]
        lines.append(
            f"   lock blocker pid {blocker['pid']} ({blocker['application_name']}): "
            + (
                f"released {blocker['release_after']} s after the rollback first waited"
                if blocker["release_after"]
                else "released once a second rollback queued for the advisory lock"
                if blocker.get("release_when_queued")
                else "held"
            )
        )
    if "kill" in fault:
        lines.append(
            f"   SIGKILL while the schema revert ran; after: {json.dumps(fault['kill'].get('after', {}))[:300]}"
        )
    pages = results.pagerduty_figures(run)
    if pages["events"]:
        lines.append(
            f"   PagerDuty: {', '.join(pages['alerts']) or 'no alert'}, {pages['change_events']} change event(s)"
            + (f", {pages['refused']} refused" if pages["refused"] else "")
            + (
                f"; page {pages['failure_to_page_seconds']} s after the failure"
                if "failure_to_page_seconds" in pages
                else ""
            )
        )
    run_id = run["audit"]["run_id"]
    for mail in run["sinks"]["mails"]:
        if run_id and run_id in mail.get("text", ""):
            lines.append(f"   e-mail to {', '.join(mail.get('rcpt_tos', []))}: {mail.get('subject')}")
            lines.extend(f"     | {line}" for line in mail.get("text", "").strip().splitlines())
    return lines


def render(name: str) -> str:
    scenario = Scenario(name)
    state = scenario.state
    lines = [
        f"Drill '{name}': prepared in {state.get('prepare_seconds')} s (deploy.yml {state['deploy']['seconds']} s, "
        f"{len(state['new_path_writes'])} documents written through the new path)"
    ]
    for run in state.get("runs", []):
        lines.extend(_run_lines(run))
    ended = [r for r in state.get("runs", []) if r["audit"]["end"]]
    shown = next((r for r in ended if r["changed"]), ended[-1] if ended else None)
    if shown:
        lines.append(f"== the audit record of {shown['label']} ({scenario.audit_file}):")
        lines.append(json.dumps(shown["audit"]["end"], indent=2, sort_keys=True))
    if scenario.results_file.exists():
        lines.append(f"== results: {scenario.results_file}")
    return "\n".join(lines)
