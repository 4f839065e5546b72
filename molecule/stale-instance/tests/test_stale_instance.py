"""The stale-instance drill: app-3, scraped by Prometheus but absent from the configured status URLs, lost its
connection to Unleash and keeps serving the cached "on" value.

Promises: the barrier finds it (Prometheus' targets), so the schema step never starts while it is on the
new path; the alert names it, where it was found and what it reported; nothing is dropped (the schema is
exactly as deployed, app-3's writes succeed and survive); the flag stays off; once its link is back, a
re-run completes, confirming all three instances with a flag fetch after the flag went off.
"""

from __future__ import annotations

from drills import context
from drills.checks import (
    alert_of,
    check_no_failed_request,
    check_paged_once_then_resolved,
    check_secrets_absent,
    end_record,
    posts_of,
    series,
    step,
)

DEPLOYED, LEGACY = "0002_data_transformation", "0001_legacy"
FOUND_IN = "Prometheus job transformation-engine"


def test_the_stale_instance_was_on_the_new_path_and_cut_off(state):
    third = state["third_instance"]
    assert third["started"]["path"] == "new"
    assert third["cut"]["path"] == "new", "cut off from Unleash, it keeps the cached 'on'"
    assert context.parse_utc(third["cut"]["last_refresh"]) < third["cut_at"]


def test_the_schema_step_never_started_while_it_was_stale(runs, state):
    run = runs["stale"]
    assert run["rc"] > 0
    end = end_record(run)
    assert end["outcome"] == "failed at propagation"
    # notify runs right after the flag step (PagerDuty's start change event), then at the end (the alert).
    assert [s["name"] for s in end["steps"]] == ["preflight", "flag", "notify", "propagation"]
    assert "databases" not in end, "no schema step ran"
    failure = step(end, "propagation")["failure"]["message"]
    assert "still on another path: app-3 (" in failure
    assert run["after"]["revision"] == DEPLOYED
    assert run["after"]["fingerprint"] == state["fingerprints"]["deployed"]
    assert run["after"]["archive_tables"] == []
    assert run["after"]["flag_enabled"] is False, "the flag stays off: the legacy path is the safe one"
    check_no_failed_request(run)


def test_the_alert_names_the_instance_where_it_was_found_and_what_it_said(runs, state):
    run = runs["stale"]
    alert = alert_of(run)
    assert alert["subject"] == "ROLLBACK FAILED in local: failed at propagation"
    port = state["third_instance"]["port"]
    for expected in (
        "ROLLBACK FAILED at step propagation in local.",
        f"app-3 (http://127.0.0.1:{port}/status, discovered in {FOUND_IN} (target 127.0.0.1:{port}",
        "not in status_urls: path=new",
        "- flag DataTransformationFeature: disabled",
        f"- database local-app: revision {DEPLOYED}",
        "the schema was not touched",
    ):
        assert expected in alert["text"], expected
    assert "app-1 (" not in alert["text"] and "app-2 (" not in alert["text"], "the healthy instances passed"
    assert len(posts_of(run)) == 1


def test_nothing_the_stale_instance_wrote_was_lost(stack, state, runs):
    writes = state["third_instance"]["writes"]
    assert len(writes) == 5
    archive = end_record(runs["fixed"])["databases"]["local-app"]["archive"]
    manifest = [m for m in context.archive_tables(stack) if m["run_id"] == archive["run_id"]]
    jobs = next(m for m in manifest if m["source_table"] == "transformation_jobs")
    served_new = sum(1 for run in runs.values() for s in series(run) if s["status"] == 200 and s["path"] == "new")
    assert jobs["row_count"] == len(state["new_path_writes"]) + served_new + len(writes)
    archived = set(context.archive_column(stack, jobs["archive_table"], "document_id"))
    assert {w["document_id"] for w in writes} <= archived


def test_once_fixed_a_rerun_completes_with_every_discovered_instance(stack, state, runs):
    assert state["third_instance"]["fixed"]["path"] == "legacy"
    run = runs["fixed"]
    assert run["rc"] == 0
    end = end_record(run)
    assert end["outcome"] == "succeeded"
    assert end["flag"]["changed"] in (False, "False"), "the flag was already off since the first run"
    propagation = end["propagation"]
    assert propagation["discovered_in"] == FOUND_IN
    assert sorted(propagation["instances"]) == ["app-1", "app-2", "app-3"]
    assert propagation["not_configured"] == [f"http://127.0.0.1:{state['third_instance']['port']}/status"]
    # Each instance fetched the flag after it was confirmed off, beyond the 1 s clock-skew allowance.
    assert float(propagation["last_confirmed_after_flag_seconds"]) >= 1.0
    assert run["after"]["revision"] == LEGACY
    assert context.revision(stack) == LEGACY
    check_no_failed_request(run)


def test_the_stale_run_paged_and_the_fixed_run_resolved_it(runs):
    trigger = check_paged_once_then_resolved([runs["stale"]], runs["fixed"])
    payload = trigger["payload"]
    assert payload["severity"] == "error", "the schema was not touched: not critical"
    assert payload["custom_details"]["failed_step"] == "propagation" and "app-3 (" in payload["custom_details"]["cause"]
    assert payload["custom_details"]["runbook"] == "RUNBOOK.md#paged-propagation"


def test_the_audit_chain_is_intact(audit_verify):
    assert audit_verify() == "ok: 4 records, 2 runs, 0 aborted"


def test_no_secret_leaked(stack, scenario, runs):
    check_secrets_absent(stack, scenario, list(runs.values()))
