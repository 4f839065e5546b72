"""The failed-downgrade drill: the downgrade of the test-only 0003_faulty_downgrade fails halfway.

Promises: the database is exactly as before (revision, fingerprint, the rows of the tables the
failed downgrade had dropped, no archive); the flag is off and the app on the legacy path (safe);
the alert names the step and the state left behind; the audit says failed; the exit code is not 0.
"""

from __future__ import annotations

from drills import context
from drills.checks import (
    alert_of,
    check_healthy_on,
    check_no_failed_request,
    check_secrets_absent,
    end_record,
    posts_of,
    step,
)


def test_the_rollback_failed_with_a_non_zero_exit_code(runs):
    run = runs["faulty"]
    assert run["rc"] not in (0, None) and run["rc"] > 0
    assert run["recap"]["local-app"]["failed"] == 1


def test_the_database_is_exactly_as_before(stack, state, runs):
    assert state["revision_deployed"] == "0002_data_transformation"
    assert context.revision(stack) == context.FAULTY_REVISION
    assert context.fingerprint(stack) == state["fingerprints_faulty"]
    assert runs["faulty"]["after"]["fingerprint"] == state["fingerprints_faulty"]
    # What the downgrade dropped before it failed is back, with its rows.
    assert context.query(stack, "SELECT count(*) FROM transformation_audit") == [(state["faulty_rows"],)]
    assert (
        context.query(stack, "SELECT count(*) FROM transformation_jobs WHERE retries = 1")[0][0] >= state["faulty_rows"]
    )
    assert context.archive_tables(stack) == [], "a failed downgrade must leave no archive"
    assert not context.table_exists(stack, "rollback_archive.manifest")


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


def test_the_audit_says_failed_at_the_schema_step(runs, audit_verify):
    end = end_record(runs["faulty"])
    assert end["outcome"] == "failed at schema"
    assert [s["name"] for s in end["steps"]][:4] == ["preflight", "flag", "propagation", "schema"]
    assert step(end, "flag")["outcome"] == "changed"
    schema = step(end, "schema")
    assert schema["outcome"] == "failed" and "simulated failure halfway" in schema["failure"]["message"]
    database = end["databases"]["local-app"]
    assert (database["failed"], database["changed"], database["archive"]) == (True, False, None)
    assert database["revision_before"] == context.FAULTY_REVISION
    assert end["operator"] == "drill-operator"
    assert audit_verify() == "ok: 4 records, 1 runs, 0 aborted"


def test_no_secret_leaked(stack, scenario, runs):
    check_secrets_absent(stack, scenario, list(runs.values()))
