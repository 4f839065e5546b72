"""The default drill: after deploy.yml and traffic on the new path, rollback.yml under steady load, then again.

Promises checked on the real services: the schema is at the rollback point with its pre-deployment
fingerprint; the rows the new path wrote are archived, all of them; the flag is off in Unleash; both
instances are healthy on the legacy path; no request failed while the rollback ran; the re-run
changed nothing and sent nothing; the success notifications went out; the audit trail holds one
record per run, with the right operator, and its chain is intact.
"""

from __future__ import annotations

from drills import context
from drills.checks import (
    check_archive,
    check_healthy_on,
    check_no_failed_request,
    check_secrets_absent,
    end_record,
    mails_of,
    posts_of,
    series,
    step,
)

# In the order each step first ran: notify's start change event goes out once the flag is off.
STEPS = ["preflight", "flag", "notify", "propagation", "schema", "verify"]


def test_the_schema_is_at_the_rollback_point_with_its_pre_deployment_fingerprint(stack, state):
    assert state["revision_deployed"] == "0002_data_transformation"
    assert context.revision(stack) == "0001_legacy"
    assert context.fingerprint(stack) == state["fingerprints"]["baseline"]
    assert context.fingerprint(stack) != state["fingerprints"]["deployed"]
    point = context.query(stack, "SELECT revision, fingerprint FROM runbook.rollback_points ORDER BY id DESC LIMIT 1")
    assert point == [("0001_legacy", state["fingerprints"]["baseline"])]


def test_the_features_objects_are_gone(stack):
    assert not context.table_exists(stack, "public.transformation_jobs")
    columns = context.query(
        stack, "SELECT column_name FROM information_schema.columns WHERE table_name = 'documents' ORDER BY 1"
    )
    assert ("transform_version",) not in columns
    assert context.query(stack, "SELECT count(*) FROM pg_type WHERE typname = 'transformation_stage'") == [(0,)]


def test_the_archive_holds_exactly_the_rows_the_new_path_wrote(stack, state, runs):
    expected = check_archive(stack, state, runs["rollback"], [runs["rollback"]])
    assert expected > len(state["new_path_writes"]), "the load never reached the new path: the drill proves nothing"
    archive = end_record(runs["rollback"])["databases"]["local-app"]["archive"]
    assert sum(t["rows"] for t in archive["tables"]) == archive["rows"]


def test_the_flag_reads_off_in_unleash(flag_enabled):
    assert flag_enabled() is False


def test_both_instances_are_healthy_on_the_legacy_path(stack):
    check_healthy_on(stack, "legacy")


def test_no_request_failed_while_the_rollback_ran(runs):
    for label in ("rollback", "rollback#2"):
        check_no_failed_request(runs[label])
        assert {s["instance"] for s in series(runs[label])} == set(runs[label]["load"]["whole_series"]["urls"])
    # The first run met traffic on the new path and moved it to the legacy path, without a failure.
    assert set(runs["rollback"]["load"]["during_rollback"]["by_path"]) == {"new", "legacy"}


def test_the_rollback_succeeded_and_the_rerun_changed_nothing(runs):
    first, again = runs["rollback"], runs["rollback#2"]
    assert first["rc"] == 0 and first["changed"] > 0
    assert again["rc"] == 0 and again["changed"] == 0, again["recap"]
    assert end_record(again)["databases"]["local-app"]["changed"] is False
    assert end_record(again)["databases"]["local-app"]["revision_before"] == "0001_legacy"


def test_the_success_notifications_were_sent_once(runs):
    first, again = runs["rollback"], runs["rollback#2"]
    mails = mails_of(first)
    assert len(mails) == 1
    mail = mails[0]
    assert mail["subject"] == "Rollback of DataTransformationFeature in local succeeded"
    assert mail["rcpt_tos"] == ["sre-oncall@rehearsal.localhost"]
    for text in (
        "drill-operator",
        "0002_data_transformation -> 0001_legacy",
        "- flag DataTransformationFeature: enabled -> disabled",
        "DRILL-default",
    ):
        assert text in mail["text"], text
    assert len(posts_of(first)) == 1
    assert mail["subject"] and mail["text"].startswith("Rollback of DataTransformationFeature in local succeeded in ")
    # A re-run that found everything done is quiet: no Slack, no e-mail. PagerDuty still gets its
    # resolve (dropped when no incident is open) and the run's start and end on the timeline.
    assert again["sinks"]["mails"] == [] and again["sinks"]["webhooks"] == []
    for run in (first, again):
        actions = [e["event"].get("event_action", "change") for e in run["sinks"]["pagerduty"] if e["accepted"]]
        assert sorted(actions) == ["change", "change", "resolve"], actions


def test_one_audit_record_per_run_with_the_right_operator(audit, runs):
    rollbacks = [r for r in audit if r["playbook"] == "rollback.yml"]
    assert [r["kind"] for r in rollbacks] == ["start", "end", "start", "end"]
    first = end_record(runs["rollback"])
    assert first["outcome"] == "succeeded" and first["status"] == "completed"
    assert (first["operator"], first["operator_source"]) == ("drill-operator", "extra_var")
    assert (first["environment"], first["ticket"]) == ("local", "DRILL-default")
    assert first["reason"].startswith("drill default (rollback)")
    assert [s["name"] for s in first["steps"]] == STEPS
    assert all(s["outcome"] in ("ok", "changed") for s in first["steps"]), first["steps"]
    assert first["flag_before"] == "enabled" and first["verification"]["flag"] == "disabled"
    assert (first["flag"]["previous_state"], first["flag"]["state"], first["flag"]["changed"]) == (
        "enabled",
        "disabled",
        True,
    )
    assert first["flag"]["change_reference"], "Unleash's event id of the change"
    assert first["target_revision"] == "0001_legacy"
    database = first["databases"]["local-app"]
    assert (database["revision_before"], database["revision_after"], database["changed"]) == (
        "0002_data_transformation",
        "0001_legacy",
        True,
    )
    assert database["sql_sha256"] == first["plan"]["local-app"]["sql_sha256"]
    assert first["notifications"] == dict.fromkeys(
        ("mail", "slack", "pagerduty", "pagerduty_change_start", "pagerduty_change_end"), "delivered"
    )
    assert first["warnings"] == []
    # The barrier's own clock, recorded as a number, and spent inside the propagation step.
    propagation = step(first, "propagation")
    assert propagation["outcome"] == "ok" and isinstance(first["propagation_seconds"], float)
    assert 0 <= first["propagation_seconds"] <= propagation["duration_seconds"], (first, propagation)
    again = end_record(runs["rollback#2"])
    assert again["outcome"] == "succeeded" and again["operator"] == "drill-operator"
    assert again["flag"]["changed"] is False and again["flag"]["previous_state"] == "disabled"


def test_the_audit_chain_is_intact_and_private(audit_verify, host, scenario):
    assert audit_verify() == "ok: 4 records, 2 runs, 0 aborted"
    audit_file = host.file(str(scenario.audit_file))
    assert audit_file.mode == 0o600


def test_no_secret_reached_the_audit_the_output_or_the_notifications(stack, scenario, runs):
    check_secrets_absent(stack, scenario, list(runs.values()))
