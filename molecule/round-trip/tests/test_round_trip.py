"""The round-trip drill: deploy -> traffic on the new path -> rollback under load -> deploy again under load.

Promises checked on the real services: every row the new path wrote before the rollback is back,
identical (md5 of the ordered rows, against the snapshot taken before the rollback and against the
rollback's archive), in the same transaction as the upgrade; both instances serve it on the new path;
the sequence moved past the restored keys (no request failed once the new path wrote again); the
archive is marked restored and a further deployment changes and restores nothing; the audit of the
deployment says what it restored; status.yml shows the archive restored.
"""

from __future__ import annotations

import re
import subprocess

import requests
from drills import context
from drills.checks import check_archive, check_no_failed_request, check_secrets_absent, end_record
from drills.forward import compare, served

FEATURE, LEGACY = "0002_data_transformation", "0001_legacy"


def archive_run_id(runs) -> str:
    return end_record(runs["rollback"])["databases"]["local-app"]["archive"]["run_id"]


def test_the_rollback_archived_every_row_the_new_path_wrote(stack, state, runs):
    expected = check_archive(stack, state, runs["rollback"], [runs["rollback"]])
    assert expected > len(state["new_path_writes"]), "the load never reached the new path: the drill proves nothing"
    assert runs["rollback"]["after"]["revision"] == LEGACY


def test_the_deployment_restored_every_archived_row(runs):
    again = end_record(runs["deploy-again"])
    assert runs["deploy-again"]["rc"] == 0 and again["outcome"] == "succeeded"
    archive = end_record(runs["rollback"])["databases"]["local-app"]["archive"]
    database = again["databases"]["local-app"]
    assert (database["revision_before"], database["revision_after"]) == (LEGACY, FEATURE)
    restore = database["restore"]
    assert restore["runs"] == [archive["run_id"]]
    assert restore["conflict_rows"] == 0 and restore["accepted"] == []
    assert restore["rows_restored"] == archive["rows"] == again["restored_rows"]
    assert {(a["source"], a["restored"]) for a in restore["archives"]} == {
        (t["source"], t["rows"]) for t in archive["tables"]
    }


def test_every_row_written_before_the_rollback_is_back_identical(stack, state, runs):
    # Recorded by the drill right after the deployment ...
    check = runs["deploy-again"]["restore_check"]
    assert check["identical"] is True, check
    # ... and computed again now, independently.
    now = compare(stack, archive_run_id(runs), state["snapshots"]["before-rollback"])
    before = now["jobs_before_rollback"]
    assert before["then"]["rows"] >= len(state["new_path_writes"])
    assert (before["now"]["rows"], before["now"]["md5"]) == (before["then"]["rows"], before["then"]["md5"])
    for table in ("jobs", "versions"):
        archived, restored = now[table]["archived"], now[table]["now"]
        assert archived["rows"] > 0
        assert (restored["rows"], restored["md5"]) == (archived["rows"], archived["md5"]), table
    assert now["identical"] is True


def test_both_instances_serve_the_restored_rows_on_the_new_path(stack, state, runs):
    assert runs["deploy-again"]["served"]["mismatches"] == [], runs["deploy-again"]["served"]
    documents = [w["document_id"] for w in state["new_path_writes"]]
    result = served(stack, archive_run_id(runs), documents)
    assert result["reads"] == 2 * len(documents) and result["mismatches"] == [], result
    missing = requests.get(f"{stack.url('app-1')}/documents/999999999", timeout=5)
    assert missing.status_code == 404


def test_no_request_failed_during_the_rollback_and_the_deployments(runs):
    for label in ("rollback", "deploy-again", "deploy-rerun"):
        check_no_failed_request(runs[label])
    # After the flag came on again the new path wrote new jobs: the sequence was past the restored keys.
    assert runs["deploy-again"]["load"]["during_rollback"]["by_path"].get("new", 0) > 0


def test_the_archive_is_marked_restored_and_a_further_deployment_changes_nothing(stack, runs):
    run_id = archive_run_id(runs)
    marked = context.query(
        stack,
        "SELECT restore_run_id, restored_rows, restore_conflict_rows FROM rollback_archive.manifest WHERE run_id = %s",
        (run_id,),
    )
    again = end_record(runs["deploy-again"])
    assert {row[0] for row in marked} == {again["run_id"]} and all(row[2] == 0 for row in marked)
    assert sum(row[1] for row in marked) == again["restored_rows"]
    rerun = runs["deploy-rerun"]
    assert rerun["rc"] == 0 and rerun["changed"] == 0, rerun["recap"]
    assert end_record(rerun)["restored_rows"] == 0
    assert end_record(rerun)["databases"]["local-app"]["changed"] is False


def test_status_shows_the_archive_restored(stack, scenario, runs):
    run_id = archive_run_id(runs)
    status = subprocess.run(
        [str(context.VENV_BIN / "ansible-playbook"), "playbooks/status.yml", "-e", "env=local"],
        cwd=context.ROOT,
        env={**context.playbook_env(stack, scenario.dir / "status-audit.jsonl"), "ANSIBLE_NOCOLOR": "1"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert status.returncode == 0, status.stdout + status.stderr
    lines = [line for line in status.stdout.splitlines() if f"archive of rollback run {run_id}" in line]
    assert len(lines) == 1, status.stdout
    again = end_record(runs["deploy-again"])["run_id"]
    assert re.search(rf"restored \S+ by run {re.escape(again)}", lines[0]), lines[0]


def test_the_audit_chain_is_intact(audit_verify, audit):
    assert [r["playbook"] for r in audit if r["kind"] == "end"] == ["rollback.yml", "deploy.yml", "deploy.yml"]
    # Each run: start, the guard's request, (the rollback's) plan, end.
    kinds = {}
    for record in audit:
        kinds.setdefault(record["run_id"], []).append(record["kind"])
    rollback, deploy = ["start", "request", "plan", "end"], ["start", "request", "end"]
    assert list(kinds.values()) == [rollback, deploy, deploy]
    assert audit_verify() == "ok: 10 records, 3 runs, 0 aborted"


def test_no_secret_reached_the_audit_the_output_or_the_notifications(stack, scenario, runs):
    check_secrets_absent(stack, scenario, list(runs.values()))
