"""The failed-downgrade drill: the downgrade of the test-only 0003_faulty_downgrade fails halfway; a DBA
removes that revision by hand (RUNBOOK.md section 4) and the same rollback, run again, finishes.

Promises: the failed run left the database exactly as before (revision, fingerprint, the rows of the
tables the failed downgrade had dropped, no archive); the flag is off and the app on the legacy path
(safe); the alert names the step and the state left behind; PagerDuty was paged once (critical: the
schema step failed) and the successful re-run resolved the page; the audit says failed, then
succeeded; the failed run's exit code is not 0.
"""

from __future__ import annotations

from drills import context
from drills.checks import (
    alert_of,
    check_healthy_on,
    check_no_failed_request,
    check_paged_once_then_resolved,
    check_secrets_absent,
    end_record,
    posts_of,
    step,
)


def test_the_rollback_failed_with_a_non_zero_exit_code(runs):
    run = runs["faulty"]
    assert run["rc"] not in (0, None) and run["rc"] > 0
    assert run["recap"]["local-app"]["failed"] == 1


def test_the_database_is_exactly_as_before(state, runs):
    # As the DBA found it after the failed run (recorded before the fix by hand).
    left = state["after_failure"]
    assert state["revision_deployed"] == "0002_data_transformation"
    assert left["revision"] == context.FAULTY_REVISION
    assert left["fingerprint"] == state["fingerprints_faulty"]
    assert runs["faulty"]["after"]["fingerprint"] == state["fingerprints_faulty"]
    # What the downgrade dropped before it failed is back, with its rows.
    assert left["audit_rows"] == state["faulty_rows"]
    assert left["jobs_with_retries"] >= state["faulty_rows"]
    assert left["archive_tables"] == [], "a failed downgrade must leave no archive"
    assert not left["manifest_exists"]
    assert left["flag_enabled"] is False


def test_the_flag_is_off_and_the_app_is_safe_on_the_legacy_path(stack, flag_enabled, runs):
    assert flag_enabled() is False
    check_healthy_on(stack, "legacy")
    check_no_failed_request(runs["faulty"])


def test_the_alert_names_the_step_and_the_state_left_behind(runs):
    run = runs["faulty"]
    alert = alert_of(run)
    assert alert["subject"] == "ROLLBACK FAILED in local: failed at schema"
    text = alert["text"]
    for expected in (
        "ROLLBACK FAILED at step schema in local.",
        "simulated failure halfway through the downgrade of 0003_faulty_downgrade",
        "the transaction was rolled back",
        "- flag DataTransformationFeature: disabled",
        "- database local-app: revision 0003_faulty_downgrade",
        "Manual intervention: RUNBOOK.md",
        "drill-operator",
    ):
        assert expected in text, expected
    assert "(target reached)" not in text
    assert len(posts_of(run)) == 1, "the alert also goes to Slack"


def test_the_page_went_out_once_critical_and_the_fixed_rerun_resolved_it(runs):
    trigger = check_paged_once_then_resolved([runs["faulty"]], runs["fixed"])
    payload = trigger["payload"]
    assert payload["severity"] == "critical", "the schema step failed"
    assert payload["summary"].startswith("ROLLBACK FAILED at step schema in local. State left: flag ")
    assert (payload["component"], payload["group"], payload["class"]) == ("step schema", "local", "rollback failed")
    details = payload["custom_details"]
    assert details["failed_step"] == "schema" and details["flag_state"] == "disabled"
    assert details["database_revisions"] == {"local-app": context.FAULTY_REVISION}
    assert details["runbook"] == "RUNBOOK.md#paged-schema"
    assert "simulated failure halfway" in details["cause"]
    page = [e["endpoint"] for e in runs["faulty"]["sinks"]["pagerduty"]]
    assert page[0] == "change" and sorted(page[1:]) == ["alert", "change"], "the start, then the page and the end"


def test_the_fixed_rerun_finished_the_rollback(stack, state, runs, flag_enabled):
    run = runs["fixed"]
    assert run["rc"] == 0 and end_record(run)["outcome"] == "succeeded"
    assert context.revision(stack) == "0001_legacy"
    assert context.fingerprint(stack) == state["fingerprints"]["baseline"]
    assert flag_enabled() is False
    check_healthy_on(stack, "legacy")
    check_no_failed_request(run)


def test_the_audit_says_failed_at_the_schema_step(runs, audit_verify):
    end = end_record(runs["faulty"])
    assert end["outcome"] == "failed at schema"
    assert [s["name"] for s in end["steps"]][:5] == ["preflight", "flag", "notify", "propagation", "schema"]
    assert step(end, "flag")["outcome"] == "changed"
    schema = step(end, "schema")
    assert schema["outcome"] == "failed" and "simulated failure halfway" in schema["failure"]["message"]
    database = end["databases"]["local-app"]
    assert (database["failed"], database["changed"], database["archive"]) == (True, False, None)
    assert database["revision_before"] == context.FAULTY_REVISION
    assert end["operator"] == "drill-operator"
    assert end["notifications"]["pagerduty"] == "delivered" and end.get("warnings") == []
    assert end_record(runs["fixed"])["outcome"] == "succeeded"
    assert audit_verify() == "ok: 4 records, 2 runs, 0 aborted"


def test_no_secret_leaked(stack, scenario, runs):
    check_secrets_absent(stack, scenario, list(runs.values()))
