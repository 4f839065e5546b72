"""The words of every notification (notify_report.compose): outcome line, what changed, state left,
verification, what to do next; severity and dedup key for PagerDuty."""

from __future__ import annotations

from pathlib import Path

import pytest
from ansible.module_utils.notify_facts import STEPS, failed_step_of
from ansible.module_utils.notify_report import RUNBOOK_ANCHORS, SUMMARY_MAX, compose, dedup_key

FEATURE = "DataTransformationFeature"
NOW = 2000.0


def base(**overrides) -> dict:
    found = {
        "feature": FEATURE,
        "environment": "prod",
        "run_id": "run-1",
        "audit_file": "audit.jsonl",
        "operator": "alice",
        "operator_source": "awx",
        "ticket": "INC-9",
        "reason": "go/no-go failed",
        "started_at": 1987.5,
        "target_revision": "0001_legacy",
        "flag_before": "enabled",
        "job_url": "https://awx.example.test/#/jobs/playbook/9",
        "plan": {"databases": [{"name": "eu"}, {"name": "us"}]},
    }
    found.update(overrides)
    return found


FLAG_OFF = {
    "changed": True,
    "previous_state": "enabled",
    "state": "disabled",
    "provider": "unleash",
    "change_reference": 77,
}
REVERTED = {
    "changed": True,
    "databases": [
        {
            "name": "eu",
            "changed": True,
            "from_revision": "0002_data_transformation",
            "to_revision": "0001_legacy",
            "archive": {"rows": 12, "tables": [{"archive_table": 'rollback_archive."run-1__jobs"'}]},
        },
        {"name": "us", "changed": False, "from_revision": "0001_legacy", "to_revision": "0001_legacy"},
    ],
}


def success(**overrides) -> dict:
    return base(flag=FLAG_OFF, propagation={"elapsed_seconds": 1.0}, schema=REVERTED, **overrides)


def left(eu: str | None, us: str | None, flag: str = "disabled") -> dict:
    def one(name, revision):
        return (
            {"name": name, "failed": True, "msg": "cannot connect"}
            if revision is None
            else {"name": name, "revision": revision}
        )

    return {"flag_left": {"previous_state": flag}, "state_left": {"databases": [one("eu", eu), one("us", us)]}}


def test_success_leads_with_the_outcome_in_one_line_then_what_changed_and_what_was_verified():
    message = compose(success(), "succeeded", NOW)
    assert message.outcome == "succeeded" and message.severity == "info"
    assert message.subject == f"Rollback of {FEATURE} in prod succeeded"
    assert message.lines[0] == (
        f"Rollback of {FEATURE} in prod succeeded in 12.5 s: flag off, 1 of 2 database(s) reverted to 0001_legacy, "
        "verified."
    )
    text = message.text
    assert f"- flag {FEATURE}: enabled -> disabled (unleash, change 77)" in text
    assert (
        '- database eu: 0002_data_transformation -> 0001_legacy; 12 rows archived in rollback_archive."run-1__jobs"'
        in text
    )
    assert "- database us: unchanged, already at 0001_legacy" in text
    assert text.index("What changed:") < text.index("Verification:") < text.index("What to do next:")
    assert "Operator: alice (awx); ticket: INC-9; reason: go/no-go failed" in text
    assert "Job: https://awx.example.test/#/jobs/playbook/9" in text
    assert "State left behind" not in text and "Cause:" not in text


def test_a_rerun_with_nothing_to_do_says_so():
    unchanged = {**FLAG_OFF, "changed": False, "previous_state": "disabled"}
    schema = {"databases": [{"name": "eu", "changed": False, "to_revision": "0001_legacy"}]}
    message = compose(base(flag=unchanged, schema=schema, plan={}), "succeeded", NOW)
    assert "nothing left to do (flag already off, every database already at 0001_legacy)" in message.lines[0]
    assert f"- flag {FEATURE}: unchanged, already disabled" in message.text


def test_the_checks_published_by_verify_are_listed_one_per_line():
    verification = {
        "verdict": "verified",
        "checks": [
            {"name": "flag", "verdict": "verified", "detail": "disabled"},
            {"name": "error rate", "verdict": "verified", "detail": "0.001 over 1m (baseline 0.0)"},
        ],
    }
    text = compose(success(verification=verification), "succeeded", NOW).text
    assert "- flag: verified: disabled" in text and "- error rate: verified: 0.001 over 1m (baseline 0.0)" in text


def test_an_inconclusive_verification_is_never_called_a_success():
    verification = {
        "verdict": "inconclusive",
        "checks": [
            {"name": "flag", "verdict": "verified", "detail": "disabled"},
            {"name": "error rate", "verdict": "inconclusive", "detail": "no requests in the last 1m"},
        ],
        "msg": "the error rate could not be checked",  # app_verify's result names it msg
    }
    report = success(verification=verification, cause="verification inconclusive", **left("0001_legacy", "0001_legacy"))
    message = compose(report, "failed", NOW)
    assert message.outcome == "inconclusive" and message.failed_step == "verify"
    assert message.subject == "ROLLBACK UNVERIFIED in prod: verification inconclusive"
    assert message.lines[0].startswith(
        "ROLLBACK NOT VERIFIED in prod: the rollback of DataTransformationFeature completed"
    )
    assert "error rate: no requests in the last 1m" in message.lines[0]
    assert "succeeded" not in message.text.lower()
    assert "was INCONCLUSIVE (error rate: no requests in the last 1m)" in message.lines[0]
    assert "- error rate: inconclusive: no requests in the last 1m" in message.text
    assert "Verification: the error rate could not be checked" in message.lines
    assert "Check by hand what could not be verified: error rate: no requests in the last 1m." in message.text
    assert message.severity == "error", "inconclusive, nothing mixed: error, not critical"


def test_a_failed_schema_step_is_critical_and_names_the_state_left_behind():
    schema = {
        "failed": True,
        "databases": [{"name": "eu", "failed": True, "changed": False, "attempts": 3}, REVERTED["databases"][1]],
    }
    report = base(
        flag=FLAG_OFF,
        propagation={"elapsed_seconds": 1},
        schema=schema,
        cause="lock timeout",
        **left("0002_data_transformation", "0001_legacy"),
    )
    message = compose(report, "failed", NOW)
    assert message.severity == "critical" and message.failed_step == "schema"
    assert message.lines[0] == (
        "ROLLBACK FAILED at step schema in prod. State left: flag DataTransformationFeature disabled; "
        "eu at 0002_data_transformation; us at 0001_legacy (target)."
    )
    assert message.lines[1] == "Cause: lock timeout"
    assert "- database eu: not changed (its revert failed and was rolled back; 3 attempt(s))" in message.text
    assert "- database us: revision 0001_legacy (target reached)" in message.text
    assert "Manual intervention: RUNBOOK.md, section 4" in message.text
    assert message.runbook_ref == "RUNBOOK.md#paged-schema"
    assert message.details["database_revisions"] == {"eu": "0002_data_transformation", "us": "0001_legacy"}
    assert message.details["flag_state"] == "disabled" and message.details["run_id"] == "run-1"


@pytest.mark.parametrize(
    ("revisions", "severity"),
    [
        (("0001_legacy", "0001_legacy"), "error"),
        (("0002_data_transformation", "0001_legacy"), "critical"),  # mixed
        (("0001_legacy", None), "critical"),  # a database whose state is unknown
    ],
    ids=["all-at-target", "mixed", "unknown"],
)
def test_severity_is_critical_when_the_state_is_mixed(revisions, severity):
    report = base(
        flag=FLAG_OFF,
        propagation={"elapsed_seconds": 1},
        schema=REVERTED,
        cause="5xx above baseline",
        **left(*revisions),
    )
    message = compose(report, "failed", NOW)
    assert message.failed_step == "verify" and message.severity == severity


def test_a_flag_step_failure_says_the_schema_was_not_touched_and_the_flag_is_still_on():
    report = base(
        flag={"failed": True, "msg": "answered 500"},
        cause="answered 500",
        **left("0002_data_transformation", "0002_data_transformation", flag="enabled"),
    )
    message = compose(report, "failed", NOW)
    assert message.failed_step == "flag" and message.severity == "error"
    text = message.text
    assert f"- flag {FEATURE}: not changed (the flag step failed; read afterwards: enabled)" in text
    assert "- database eu: not touched (the run stopped before the schema step)" in text
    assert "The schema was not touched." in text and "The flag is still ON" in text
    assert "Verification: not reached (the run stopped at flag)." in text
    assert "Nothing was changed" not in text, "the flag write may have gone through: not checked, not said"


def test_a_flag_that_cannot_be_read_after_the_failure_is_unknown_not_unchanged():
    report = base(flag={"failed": True}, cause="timeout", flag_left={"failed": True, "msg": "Unleash did not answer"})
    text = compose(report, "failed", NOW).text
    assert f"- flag {FEATURE}: unknown (the flag step failed and the flag could not be read afterwards)" in text
    assert f"- flag {FEATURE}: unknown (Unleash did not answer)" in text


def test_nothing_was_changed_only_when_the_run_stopped_before_any_change():
    report = base(
        plan={"failed": True, "databases": [{"name": "eu"}]},
        cause="cannot connect",
        **left("0002_data_transformation", "0002_data_transformation", flag="enabled"),
    )
    message = compose(report, "failed", NOW)
    assert message.failed_step == "preflight"
    assert "Nothing was changed (the request stopped before the flag step and the schema step)." in message.text
    assert "- Nothing was changed. Fix the cause above and run the same command again." in message.text


def test_a_propagation_timeout_keeps_the_flag_off():
    report = base(
        flag=FLAG_OFF,
        propagation={"failed": True},
        cause="app-3 is on the new path",
        **left("0002_data_transformation", "0002_data_transformation"),
    )
    message = compose(report, "failed", NOW)
    assert message.failed_step == "propagation" and message.severity == "error"
    assert "The flag is off (the legacy path is safe); the schema was not touched." in message.text
    assert message.runbook_ref == "RUNBOOK.md#paged-propagation"


def test_a_plan_that_failed_after_the_flag_step_says_the_flag_is_off_not_nothing_changed():
    """Issue 15 orders the flag off before the plan: a plan failing then is a preflight failure with the flag off."""
    report = base(plan={"failed": True}, flag=FLAG_OFF, cause="db down", **left("0002_data_transformation", None))
    message = compose(report, "failed", NOW)
    assert message.failed_step == "preflight"
    assert "Nothing was changed" not in message.text
    assert f"- flag {FEATURE}: enabled -> disabled" in message.text
    assert "- The flag is off (the legacy path is safe); the schema was not touched." in message.text


def test_failed_step_is_the_first_missing_or_failed_result():
    assert failed_step_of(base(plan={})) == "preflight"
    assert failed_step_of(base(plan={}, flag={"failed": True})) == "flag"
    assert failed_step_of(base(flag={"failed": True})) == "flag"
    assert failed_step_of(base(flag=FLAG_OFF)) == "propagation"
    assert failed_step_of(base(flag=FLAG_OFF, propagation={"elapsed_seconds": 1}, schema={"skipped": True})) == "schema"
    assert failed_step_of(base(flag=FLAG_OFF, propagation={"ok": 1}, schema=REVERTED)) == "verify"
    assert failed_step_of(base(failed_step="flag")) == "flag"


def test_the_dedup_key_is_one_per_environment_and_feature():
    assert dedup_key("prod", FEATURE) == f"emergency-rollback/prod/{FEATURE}"
    first = compose(base(cause="a"), "failed", NOW).dedup_key
    again = compose(base(cause="b", run_id="run-2", started_at=5), "failed", NOW + 600).dedup_key
    assert first == again != compose(base(environment="staging"), "failed", NOW).dedup_key
    assert len(dedup_key("x" * 400, FEATURE)) == 255


def test_many_databases_are_counted_per_revision_in_the_outcome_line():
    databases = [{"name": f"tenant_{n:03d}", "revision": "0001_legacy"} for n in range(97)]
    databases += [
        {"name": "tenant_097", "revision": "0002_data_transformation"},
        {"name": "tenant_098", "failed": True, "msg": "x"},
    ]
    report = base(
        plan={"changed": True, "databases": []},
        flag=FLAG_OFF,
        propagation={"elapsed_seconds": 1},
        schema={"failed": True},
        cause="c",
        flag_left={"previous_state": "disabled"},
        state_left={"databases": databases},
    )
    message = compose(report, "failed", NOW)
    assert message.lines[0] == (
        "ROLLBACK FAILED at step schema in prod. State left: flag DataTransformationFeature disabled; "
        "97 database(s) at 0001_legacy (target); 1 database(s) at 0002_data_transformation; 1 unknown (tenant_098)."
    )
    assert len(message.pagerduty_summary()) <= SUMMARY_MAX


def test_a_summary_over_pagerduty_limit_is_cut_with_an_ellipsis():
    message = compose(base(environment="e" * 3000, cause="c"), "failed", NOW)
    summary = message.pagerduty_summary()
    assert len(summary) == SUMMARY_MAX and summary.endswith("\u2026")


def test_the_audit_trail_failing_is_said_in_every_message():
    text = compose(success(audit_status="error: disk full"), "succeeded", NOW).text
    assert "WARNING: the audit trail failed during this run (error: disk full)" in text


def test_the_start_line_names_who_why_and_the_ticket():
    message = compose(base(), "start", NOW)
    assert message.lines[0] == f"Emergency rollback of {FEATURE} in prod started by alice (INC-9): go/no-go failed"


def test_a_blocking_sessions_report_arrives_as_the_cause_and_nothing_else_is_added():
    """compose() adds no session detail of its own: what it says of a blocker is the cause it is given."""
    cause = "Blocking: pid 42 (idle in transaction for 93.0 s, role app_rw, application_name 'report')"
    report = base(
        flag=FLAG_OFF,
        propagation={},
        schema={"failed": True},
        cause=cause,
        **left("0002_data_transformation", "0002_data_transformation"),
    )
    message = compose(report, "failed", NOW)
    assert message.lines[1] == f"Cause: {cause}" and message.details["cause"] == cause


def test_every_step_a_page_links_to_has_its_section_in_the_runbook():
    runbook = (Path(__file__).resolve().parents[2] / "RUNBOOK.md").read_text()
    assert set(RUNBOOK_ANCHORS) == set(STEPS)
    for anchor in RUNBOOK_ANCHORS.values():
        assert f'<a id="{anchor}"></a>' in runbook, anchor
