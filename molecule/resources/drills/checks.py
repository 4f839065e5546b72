"""Small helpers of the verifiers: a run's audit records, steps and alert, with messages that say what is missing."""

from __future__ import annotations

import json
from pathlib import Path

import requests

from drills import context


def end_record(run: dict) -> dict:
    assert run["audit"]["start"], f"{run['label']}: the audit file has no start record of this run"
    assert run["audit"]["end"], f"{run['label']}: the audit file has no end record of this run"
    return run["audit"]["end"]


def step(end: dict, name: str) -> dict:
    found = [s for s in end["steps"] if s["name"] == name]
    assert found, f"no step {name} in the audit record: {[s['name'] for s in end['steps']]}"
    return found[0]


def mails_of(run: dict) -> list[dict]:
    """The e-mails of a run (matched by the audit run id their text names)."""
    run_id = run["audit"]["run_id"]
    return [m for m in run["sinks"]["mails"] if run_id and run_id in m.get("text", "")]


def posts_of(run: dict) -> list[dict]:
    """The accepted Slack webhook posts of a run (matched by the audit run id)."""
    run_id = run["audit"]["run_id"]
    return [p for p in run["sinks"]["webhooks"] if p.get("accepted") and run_id and run_id in str(p)]


def alert_of(run: dict) -> dict:
    """The one failure alert e-mail of a run."""
    mails = mails_of(run)
    assert len(mails) == 1, f"{run['label']}: expected one e-mail naming run {run['audit']['run_id']}, got {len(mails)}"
    assert mails[0]["subject"].startswith(("ROLLBACK FAILED in local", "ROLLBACK UNVERIFIED in local")), mails[0][
        "subject"
    ]
    return mails[0]


# -- PagerDuty (the rehearsal's Events API v2 contract sink) ---------------------------------------
DEDUP_KEY = "emergency-rollback/local/DataTransformationFeature"


def pagerduty_of(run: dict) -> list[dict]:
    """The PagerDuty events the sink received while the run went on, every one of them accepted."""
    events = run["sinks"].get("pagerduty", [])
    refused = [(e["status"], e["errors"]) for e in events if not e["accepted"]]
    assert not refused, f"{run['label']}: the PagerDuty sink refused events: {refused}"
    return events


def alerts_of(run: dict, action: str) -> list[dict]:
    """The run's alert events (`trigger` or `resolve`)."""
    return [e["event"] for e in pagerduty_of(run) if e["endpoint"] == "alert" and e["event"]["event_action"] == action]


def check_change_events(run: dict) -> None:
    """The run shows on the service's timeline: a start and an end change event, naming the run."""
    changes = [e["event"]["payload"] for e in pagerduty_of(run) if e["endpoint"] == "change"]
    assert len(changes) == 2, f"{run['label']}: expected a start and an end change event, got {len(changes)}"
    started = "Emergency rollback of DataTransformationFeature in local started by"
    # Sent at the same time when the run failed before its start event: told apart by their words.
    [start] = [c for c in changes if c["summary"].startswith(started)]
    [end] = [c for c in changes if not c["summary"].startswith(started)]
    assert start["custom_details"]["run_id"] == end["custom_details"]["run_id"] == run["audit"]["run_id"]
    assert start["timestamp"] <= end["timestamp"]


def check_paged_once_then_resolved(failed: list[dict], resolving: dict) -> dict:
    """Each failed run triggered the environment's one incident (same dedup key), the alert's words are the
    e-mail's, and the successful re-run resolved it; returns the first trigger."""
    from rehearsal.sinks import pagerduty_incidents  # noqa: PLC0415 - the drills' stack is importable here

    triggers = []
    for run in failed:
        [trigger] = alerts_of(run, "trigger")  # exactly one page per failed run
        assert trigger["dedup_key"] == DEDUP_KEY and alerts_of(run, "resolve") == []
        details = trigger["payload"]["custom_details"]
        assert details["run_id"] == run["audit"]["run_id"]
        assert details["summary"] == alert_of(run)["text"].splitlines(), "the page and the e-mail say the same"
        assert trigger["payload"]["summary"] == details["summary"][0]
        check_change_events(run)
        triggers.append(trigger)
    [resolve] = alerts_of(resolving, "resolve")
    assert resolve["dedup_key"] == DEDUP_KEY and alerts_of(resolving, "trigger") == []
    check_change_events(resolving)
    events = [e for run in [*failed, resolving] for e in pagerduty_of(run)]
    incidents = [i for i in pagerduty_incidents(events) if i["status"] != "dropped"]
    assert [(i["dedup_key"], i["triggers"], i["status"]) for i in incidents] == [(DEDUP_KEY, len(failed), "resolved")]
    return triggers[0]


def series(run: dict) -> list[dict]:
    """The load generator's raw series of a run (one dict per request)."""
    return [json.loads(line) for line in Path(run["load"]["series"]).read_text().splitlines()]


def new_path_writes(state: dict, runs: list[dict]) -> int:
    """Rows the new path wrote since the deployment: prepare's documents plus every request of these runs'
    load that an instance answered 200 on the new path (each one inserted a transformation_jobs row)."""
    served = sum(1 for run in runs for s in series(run) if s["status"] == 200 and s["path"] == "new")
    return len(state["new_path_writes"]) + served


def archive_of(run: dict) -> dict:
    """The archive a run's schema revert made (from its audit record)."""
    archive = end_record(run)["databases"]["local-app"]["archive"]
    assert archive and archive["rows"] > 0, f"{run['label']}: no archive in the audit record"
    return archive


def check_archive(stack, state: dict, archiving_run: dict, runs: list[dict]) -> int:
    """The archive of `archiving_run` holds exactly the rows the new path wrote, readable by the migration role
    only; returns that row count."""
    archive = archive_of(archiving_run)
    expected = new_path_writes(state, runs)
    manifest = [m for m in context.archive_tables(stack) if m["run_id"] == archive["run_id"]]
    by_source = {(m["source_table"], m["source_column"]): m for m in manifest}
    assert set(by_source) == {("transformation_jobs", None), ("documents", "transform_version")}, manifest
    jobs = by_source[("transformation_jobs", None)]
    assert jobs["row_count"] == expected
    assert context.archive_count(stack, jobs["archive_table"]) == expected
    versions = by_source[("documents", "transform_version")]["archive_table"]
    assert context.archive_count(stack, versions, "transform_version = 2") == expected
    archived_documents = set(context.archive_column(stack, jobs["archive_table"], "document_id"))
    assert {w["document_id"] for w in state["new_path_writes"]} <= archived_documents
    qualified = f'rollback_archive."{jobs["archive_table"]}"'
    assert context.query(stack, "SELECT has_table_privilege('app_rw', %s, 'SELECT')", (qualified,)) == [(False,)]
    return expected


def check_healthy_on(stack, path: str) -> None:
    """Both instances report `path` on /status, answer /healthz, and serve a request on that path now."""
    statuses = stack.app_statuses()
    assert [s["instance"] for s in statuses] == ["app-1", "app-2"]
    assert all(s["path"] == path for s in statuses), statuses
    for url in stack.env()["APP_URLS"].split(","):
        assert requests.get(url + "/healthz", timeout=5).status_code == 200
    for instance in ("app-1", "app-2"):
        response = stack.transform(instance)
        assert response.status_code == 200 and response.json()["path"] == path, response.text


def check_no_failed_request(run: dict) -> dict:
    """No request failed while the run went on, and steady traffic reached both instances."""
    load = run["load"]["during_rollback"]
    assert load["failed"] == 0, f"{run['label']}: {load['failed']} failed requests ({load['by_status']})"
    # A generous floor of the steady rate: this machine is shared and noisy.
    assert load["requests"] >= 0.5 * load["target_rate"] * run["seconds"], load
    return load


def check_secrets_absent(stack, scenario, runs: list[dict]) -> None:
    """No secret of the stack in the audit file, the runs' output or what the sinks received."""
    env = stack.env()
    secrets = [env[key] for key in ("FF_API_KEY", "PGPASSWORD", "SMTP_PASSWORD", "PAGERDUTY_ROUTING_KEY")]
    secrets.append(env["SLACK_WEBHOOK_URL"].rsplit("/", 1)[1])
    places = {"the audit file": scenario.audit_file.read_text()}
    for run in runs:
        places[run["log"]] = Path(run["log"]).read_text()
        places[f"what the sinks got during {run['label']}"] = json.dumps(run["sinks"])
    for where, text in places.items():
        for secret in secrets:
            assert secret not in text, f"a secret is in {where}"
