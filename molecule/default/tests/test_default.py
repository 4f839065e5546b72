"""The default drill: after deploy.yml and traffic on the new path, rollback.yml under steady load, then again.

Promises checked on the real services: the schema is at the rollback point with its pre-deployment
fingerprint; the rows the new path wrote are archived, all of them; the flag is off in Unleash; both
instances are healthy on the legacy path; no request failed while the rollback ran; the re-run
changed nothing and sent nothing; the success notifications went out; the audit trail holds one
record per run, with the right operator, and its chain is intact.
"""

from __future__ import annotations

import json
from pathlib import Path

import requests
from drills import context
from drills.checks import end_record, mails_of, posts_of, step

STEPS = ["preflight", "flag", "propagation", "schema", "verify", "notify"]


def _series(run: dict) -> list[str]:
    """The load generator's raw series of a run (JSONL lines)."""
    return (context.Scenario("default").dir / f"load-{run['label'].replace('#', '-')}.jsonl").read_text().splitlines()


def _new_path_writes(state: dict, run: dict) -> int:
    """Rows the new path wrote: prepare's documents plus every request the load got answered on the new path."""
    served_new = 0
    for line in _series(run):
        sample = json.loads(line)
        served_new += sample["status"] == 200 and sample["path"] == "new"
    return len(state["new_path_writes"]) + served_new


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
    run = runs["rollback"]
    archive = end_record(run)["databases"]["local-app"]["archive"]
    expected = _new_path_writes(state, run)
    assert expected > len(state["new_path_writes"]), "the load never reached the new path: the drill proves nothing"
    manifest = [m for m in context.archive_tables(stack) if m["run_id"] == archive["run_id"]]
    by_source = {(m["source_table"], m["source_column"]): m for m in manifest}
    assert set(by_source) == {("transformation_jobs", None), ("documents", "transform_version")}
    jobs = by_source[("transformation_jobs", None)]
    assert jobs["row_count"] == expected
    assert context.archive_count(stack, jobs["archive_table"]) == expected
    versions = by_source[("documents", "transform_version")]["archive_table"]
    assert context.archive_count(stack, versions, "transform_version = 2") == expected
    archived_documents = set(context.archive_column(stack, jobs["archive_table"], "document_id"))
    assert {w["document_id"] for w in state["new_path_writes"]} <= archived_documents
    # The archive may hold personal data: the application's role cannot read it.
    qualified = f'rollback_archive."{jobs["archive_table"]}"'
    assert context.query(stack, "SELECT has_table_privilege('app_rw', %s, 'SELECT')", (qualified,)) == [(False,)]
    assert sum(t["rows"] for t in archive["tables"]) == archive["rows"]


def test_the_flag_reads_off_in_unleash(flag_enabled):
    assert flag_enabled() is False


def test_both_instances_are_healthy_on_the_legacy_path(stack):
    statuses = stack.app_statuses()
    assert [s["instance"] for s in statuses] == ["app-1", "app-2"]
    assert all(s["path"] == "legacy" and s["flag_enabled"] is False for s in statuses), statuses
    for url in stack.env()["APP_URLS"].split(","):
        assert requests.get(url + "/healthz", timeout=5).status_code == 200
    for instance in ("app-1", "app-2"):
        response = stack.transform(instance)
        assert response.status_code == 200 and response.json()["path"] == "legacy", response.text


def test_no_request_failed_while_the_rollback_ran(runs):
    for label in ("rollback", "rollback#2"):
        load = runs[label]["load"]["during_rollback"]
        assert load["failed"] == 0, f"{label}: {load['failed']} failed requests ({load['by_status']})"
        # Steady traffic to both instances for the whole run (a generous floor: this machine is shared).
        assert load["requests"] >= 0.5 * load["target_rate"] * runs[label]["seconds"], load
        instances = {json.loads(line)["instance"] for line in _series(runs[label])}
        assert len(instances) == 2
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
        "Flag: enabled -> disabled",
        "DRILL-default",
    ):
        assert text in mail["text"], text
    assert len(posts_of(first)) == 1
    # A re-run that found everything done is quiet.
    assert again["sinks"]["mails"] == [] and again["sinks"]["webhooks"] == []


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
    assert first["notifications"] == {"mail": "delivered", "slack": "delivered"}
    assert step(first, "propagation")["outcome"] == "ok" and first["propagation_seconds"] >= 0
    again = end_record(runs["rollback#2"])
    assert again["outcome"] == "succeeded" and again["operator"] == "drill-operator"
    assert again["flag"]["changed"] is False and again["flag"]["previous_state"] == "disabled"


def test_the_audit_chain_is_intact_and_private(audit_verify, host, scenario):
    assert audit_verify() == "ok: 4 records, 2 runs, 0 aborted"
    audit_file = host.file(str(scenario.audit_file))
    assert audit_file.mode == 0o600


def test_no_secret_reached_the_audit_the_output_or_the_notifications(stack, scenario, runs):
    secrets = [value for key, value in stack.env().items() if key in ("FF_API_KEY", "PGPASSWORD", "SMTP_PASSWORD")]
    secrets.append(stack.env()["SLACK_WEBHOOK_URL"].rsplit("/", 1)[1])
    places = {"audit": scenario.audit_file.read_text()}
    for run in runs.values():
        places[run["log"]] = Path(run["log"]).read_text()
        places[f"{run['label']} sinks"] = json.dumps(run["sinks"])
    for where, text in places.items():
        for secret in secrets:
            assert secret not in text, f"a secret is in {where}"
