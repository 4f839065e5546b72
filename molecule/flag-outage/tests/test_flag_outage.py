"""The flag-outage drill: the flag API fails the rollback's write of the flag (500 beyond the retry budget, then
401); once it answers again, the same rollback succeeds.

Promises: the schema is untouched (no flag confirmed off, no schema change); the feature keeps
working as it did (flag on, new path, no failed request); the 500 is retried within the budget and
the 401 never; an alert is sent for each, and PagerDuty paged: both failures update the
environment's one incident, which the successful run resolves; the audit says failed at the flag step.
"""

from __future__ import annotations

import pytest
from drills import context
from drills.checks import (
    alert_of,
    check_no_failed_request,
    check_paged_once_then_resolved,
    check_secrets_absent,
    end_record,
    posts_of,
    step,
)

LABELS = ("flag-500", "flag-401")


def test_the_schema_is_untouched(state, runs):
    for label in LABELS:
        assert runs[label]["after"]["revision"] == "0002_data_transformation"
        assert runs[label]["after"]["fingerprint"] == state["fingerprints"]["deployed"]
        assert runs[label]["after"]["archive_tables"] == []


def test_the_feature_keeps_working_as_before(runs):
    # The outage kept the flag on: the instances stay on the new path, which still has its schema.
    for label in LABELS:
        assert runs[label]["after"]["flag_enabled"] is True
        assert runs[label]["after"]["paths"] == ["new", "new"]
        assert check_no_failed_request(runs[label])["by_path"] == {
            "new": runs[label]["load"]["during_rollback"]["requests"]
        }


def test_a_500_is_retried_within_the_budget_then_the_run_fails(runs):
    run = runs["flag-500"]
    assert run["rc"] > 0
    writes = run["fault"]["flag_api"]["writes_answered"]
    assert len(writes) >= 2, "a 5xx must be retried"
    assert all(w["method"] == "POST" and w["path"].endswith("/environments/production/off") for w in writes)
    # The budget is 6 s (-e rollback_flag_max_wait=6): no attempt starts after it.
    assert writes[-1]["t"] - writes[0]["t"] <= 6 + 1
    assert run["fault"]["flag_api"]["passed_through"] > 0, "the reads reached the real Unleash"


def test_a_401_is_never_retried(runs):
    run = runs["flag-401"]
    assert run["rc"] > 0
    assert len(run["fault"]["flag_api"]["writes_answered"]) == 1


@pytest.mark.parametrize("label", LABELS)
def test_the_audit_says_failed_at_the_flag_step(runs, label):
    end = end_record(runs[label])
    assert end["outcome"] == "failed at flag"
    assert step(end, "preflight")["outcome"] in ("ok", "changed")
    flag = step(end, "flag")
    assert flag["outcome"] == "failed"
    assert label.removeprefix("flag-") in flag["failure"]["message"]
    assert [s["name"] for s in end["steps"]] == ["preflight", "flag", "notify"], "nothing ran after the flag step"
    assert "databases" not in end, "no schema step ran"
    assert end["flag"]["previous_state"] == "enabled" and end["flag"]["state"] == "unknown"


@pytest.mark.parametrize("label", LABELS)
def test_an_alert_is_sent(runs, label):
    alert = alert_of(runs[label])
    assert alert["subject"] == "ROLLBACK FAILED in local: failed at flag"
    for expected in (
        "ROLLBACK FAILED at step flag in local.",
        f"({label.removeprefix('flag-')})" if label == "flag-401" else "answered 500",
        "- flag DataTransformationFeature: enabled",
        "- database local-app: revision 0002_data_transformation",
        "The schema was not touched.",
    ):
        assert expected in alert["text"], expected
    assert len(posts_of(runs[label])) == 1


def test_both_failures_paged_one_incident_that_the_recovered_run_resolved(runs):
    trigger = check_paged_once_then_resolved([runs[label] for label in LABELS], runs["recovered"])
    payload = trigger["payload"]
    assert payload["severity"] == "error", "the flag step failed; the schema was not touched: not critical"
    assert payload["summary"].startswith("ROLLBACK FAILED at step flag in local. State left: flag ")
    details = payload["custom_details"]
    assert (details["failed_step"], details["flag_state"]) == ("flag", "enabled")
    assert details["database_revisions"] == {"local-app": "0002_data_transformation"}
    assert details["runbook"] == "RUNBOOK.md#paged-flag"
    # The flag step failed before the start change event: the alert sent it beside the end's (they
    # arrive in any order), with the run's start time: check_change_events, called above, tells them
    # apart by their words and checks the start's time is not after the end's.


def test_the_recovered_run_finished_the_rollback(stack, flag_enabled, runs):
    run = runs["recovered"]
    assert run["rc"] == 0 and end_record(run)["outcome"] == "succeeded"
    assert run["after"]["revision"] == "0001_legacy" and run["after"]["paths"] == ["legacy", "legacy"]
    assert flag_enabled() is False and context.revision(stack) == "0001_legacy"
    check_no_failed_request(run)


def test_the_audit_chain_is_intact(audit_verify):
    assert audit_verify() == "ok: 10 records, 3 runs, 0 aborted"


def test_no_secret_leaked(stack, scenario, runs):
    check_secrets_absent(stack, scenario, list(runs.values()))
