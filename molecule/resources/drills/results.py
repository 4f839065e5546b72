"""The results file of a scenario (.run/molecule/results/<scenario>.json), for the benchmark and the report.

{"scenario": "default", "generated_at": "...", "scenario_seconds": 131.2,
 "prepare": {"seconds": 41.0, "deploy_seconds": 27.3},
 "runs": [{"label": "rollback", "rc": 0, "outcome": "succeeded", "seconds": 46.6,
           "steps": {"preflight": 18.5, "flag": 2.1, ...}, "step_outcomes": {...},
           "propagation_seconds": 0.03, "flag_api_writes_answered": null,
           "databases": {"local-app": {"attempts": 1, "lock_wait_seconds": 0.004, "changed": true,
                                      "archived_rows": 62, "revision_before": "...", "revision_after": "..."}},
           "load": {"requests": 1400, "failed": 0, "p50_ms": 9.1, "p99_ms": 120.4, "max_ms": 900.0,
                    "achieved_rate": 30.0, "by_path": {...}, "by_status": {...}},
           "load_schema_step": {...}, "notifications": {...},
           "lock_waits": {"transformation-engine": {"waits": 12, "longest_ms": 1003.2, "unfinished": 0}}}],
 "verify": {"passed": true, "tests": 12, "failed": 0, "seconds": 4.2, "finished_at": ...}}
"""

from __future__ import annotations

import json
import time

from drills.context import RESULTS_DIR, Scenario, parse_utc, utc_now

_LOAD_KEYS = (
    "requests",
    "failed",
    "p50_ms",
    "p99_ms",
    "max_ms",
    "achieved_rate",
    "target_rate",
    "by_path",
    "by_status",
)


def _load(summary: dict | None) -> dict | None:
    return None if not summary else {key: summary.get(key) for key in _LOAD_KEYS}


def pagerduty_figures(run: dict) -> dict:
    """What the PagerDuty sink got during the run, and the seconds from the failure to the page.

    The failure's time is the end of the first step the audit says failed (its failed task); the
    page's, when the sink received the trigger.
    """
    events = (run.get("sinks") or {}).get("pagerduty") or []
    alerts = [e for e in events if e.get("endpoint") == "alert" and e.get("accepted")]
    actions = [e["event"]["event_action"] for e in alerts]
    figures = {
        "events": len(events),
        "refused": sum(not e.get("accepted") for e in events),
        "alerts": actions,
        "change_events": sum(e.get("endpoint") == "change" and e.get("accepted") for e in events),
    }
    end = run["audit"]["end"] or {}
    failed = next((s for s in end.get("steps", []) if s.get("outcome") == "failed" and s.get("name") != "notify"), None)
    trigger = next((e for e in alerts if e["event"]["event_action"] == "trigger"), None)
    if failed and trigger and failed.get("ended_at"):
        figures["failure_to_page_seconds"] = round(parse_utc(trigger["received_at"]) - parse_utc(failed["ended_at"]), 3)
    return figures


def lock_wait_figures(run: dict) -> dict:
    """Per application_name: its lock waits longer than deadlock_timeout while the run went on, the longest
    that ended with the lock and how many never did (cancelled), as PostgreSQL measured them."""
    figures: dict[str, dict] = {}
    for wait in run.get("lock_waits") or []:
        entry = figures.setdefault(wait["application_name"] or "?", {"waits": 0, "longest_ms": None, "unfinished": 0})
        entry["waits"] += 1
        if wait["acquired_ms"] is None:
            entry["unfinished"] += 1
        else:
            entry["longest_ms"] = max(entry["longest_ms"] or 0.0, wait["acquired_ms"])
    return figures


def run_figures(run: dict) -> dict:
    end = run["audit"]["end"] or {}
    databases = {}
    for name, db in (end.get("databases") or {}).items():
        archive = db.get("archive") or {}
        databases[name] = {
            "changed": db.get("changed"),
            "attempts": db.get("attempts"),
            "lock_wait_seconds": db.get("lock_wait_seconds"),
            "duration_seconds": db.get("duration_seconds"),
            "revision_before": db.get("revision_before"),
            "revision_after": db.get("revision_after"),
            "archived_rows": archive.get("rows", 0),
            "restored_rows": (db.get("restore") or {}).get("rows_restored"),
            "restore_conflict_rows": (db.get("restore") or {}).get("conflict_rows"),
        }
    load = run.get("load") or {}
    fault = run.get("fault") or {}
    return {
        "label": run["label"],
        "rc": run["rc"],
        "outcome": end.get("outcome") or ("aborted (no end record)" if run["audit"]["start"] else "no audit record"),
        "seconds": run["seconds"],
        "audit_seconds": end.get("duration_seconds"),
        "steps": {s["name"]: s["duration_seconds"] for s in end.get("steps", [])},
        "step_outcomes": {s["name"]: s["outcome"] for s in end.get("steps", [])},
        "propagation_seconds": end.get("propagation_seconds"),
        # Every instance the barrier confirmed (configured and discovered), and the time from the flag
        # confirmed off to the last of them confirmed on legacy with a fresh fetch of the flag.
        "propagation": end.get("propagation"),
        "databases": databases,
        "notifications": end.get("notifications"),
        "pagerduty": pagerduty_figures(run),
        "load": _load(load.get("during_rollback")),
        "load_schema_step": _load(load.get("during_schema_step")),
        "lock_waits": lock_wait_figures(run),
        "flag_api_writes_answered": len(fault["flag_api"]["writes_answered"]) if "flag_api" in fault else None,
        "blocker": fault.get("blocker"),
        "kill": {k: v for k, v in fault["kill"].items() if k != "after"} if "kill" in fault else None,
        "playbook": "deploy.yml" if run.get("kind") == "deploy" else "rollback.yml",
        "restored_rows": end.get("restored_rows"),
        "restore_check": run.get("restore_check"),
        "served": run.get("served"),
    }


def write(scenario: Scenario, verify: dict | None = None) -> dict:
    """Write the figures of every run so far; `verify` is the verifier's outcome (a new run clears it)."""
    state = scenario.state
    started = state.get("prepared_at")
    figures = {
        "scenario": scenario.name,
        "generated_at": utc_now(),
        "scenario_seconds": round(time.time() - started, 2) if started else None,
        "prepare": {"seconds": state.get("prepare_seconds"), "deploy_seconds": state.get("deploy", {}).get("seconds")},
        "runs": [run_figures(run) for run in state.get("runs", [])],
        "verify": verify,
    }
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    tmp = scenario.results_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(figures, indent=2, default=str) + "\n")
    tmp.replace(scenario.results_file)
    return figures
