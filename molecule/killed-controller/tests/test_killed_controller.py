"""The killed-controller drill: SIGKILL of the controller (ansible-playbook and every process it started, as
when its machine dies) after the flag is off, while the schema revert waits inside its transaction.

Promises: nothing is half-done (the database exactly as deployed, no archive, the advisory lock
released by PostgreSQL); the app stays safe on the legacy path; a re-run finishes the job and loses
nothing (every row the new path wrote is archived); the audit shows the aborted run and the
completing one, and its chain is intact.
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
    step,
)


def test_the_controller_died_in_the_middle_of_the_revert(runs):
    run = runs["killed"]
    kill = run["fault"]["kill"]
    assert run["rc"] == -9
    # When it died: the flag was off, and the revert held the advisory lock inside its transaction.
    assert kill["flag_enabled"] is False
    session = kill["revert_session"]
    assert session["application_name"].startswith("emergency-rollback") and session["in_transaction"] is True
    assert session["wait_event_type"] == "Lock"
    # The revert ran inside the controller's tree: in a worker of ansible-playbook (the runbook's action
    # plugins run its modules in the worker) or in an AnsiballZ module process. Both died with it.
    names = [p["name"] for p in kill["killed"]]
    assert len(names) >= 2 and all("ansible" in name.lower() for name in names), names
    assert kill["after"]["processes_left"] == []


def test_the_kill_left_nothing_half_done(state, runs):
    kill, after = runs["killed"]["fault"]["kill"], runs["killed"]["after"]
    # PostgreSQL rolled the revert back and released the advisory lock as soon as the client was gone.
    assert kill["after"]["advisory_lock_released_after"] is not None
    assert after["revision"] == "0002_data_transformation"
    assert after["fingerprint"] == state["fingerprints"]["deployed"]
    assert after["archive_tables"] == [], "the archive copy was part of the rolled-back transaction"
    assert after["flag_enabled"] is False and after["paths"] == ["legacy", "legacy"]
    assert mails_of(runs["killed"]) == [] and runs["killed"]["sinks"]["webhooks"] == []


def test_the_rerun_finished_the_job_and_lost_nothing(stack, state, runs, flag_enabled):
    run = runs["rerun"]
    end = end_record(run)
    assert run["rc"] == 0 and end["outcome"] == "succeeded"
    assert step(end, "flag")["outcome"] == "ok" and end["flag"]["changed"] is False, "the flag was off already"
    database = end["databases"]["local-app"]
    assert (database["revision_before"], database["revision_after"], database["changed"]) == (
        "0002_data_transformation",
        "0001_legacy",
        True,
    )
    assert context.revision(stack) == "0001_legacy"
    assert context.fingerprint(stack) == state["fingerprints"]["baseline"]
    check_archive(stack, state, run, [runs["killed"], run])
    assert len({m["run_id"] for m in context.archive_tables(stack)}) == 1
    assert flag_enabled() is False
    check_healthy_on(stack, "legacy")
    assert [m["subject"] for m in mails_of(run)] == ["Rollback of DataTransformationFeature in local succeeded"]


def test_no_request_failed(runs):
    for run in runs.values():
        check_no_failed_request(run)


def test_the_audit_shows_the_aborted_run_and_the_completing_run(audit, runs, audit_verify, host, scenario):
    killed = runs["killed"]["audit"]
    assert killed["start"] is not None and killed["end"] is None
    # Who, why and which ticket are in the audit from the moment the request was checked, kill or not.
    assert (killed["request"]["operator"], killed["request"]["ticket"]) == ("drill-operator", "DRILL-killed-controller")
    assert killed["request"]["reason"].startswith("drill killed-controller")
    assert [(r["run_id"], r["kind"]) for r in audit] == [
        (killed["run_id"], "start"),
        (killed["run_id"], "request"),
        (killed["run_id"], "plan"),
        (runs["rerun"]["audit"]["run_id"], "start"),
        (runs["rerun"]["audit"]["run_id"], "request"),
        (runs["rerun"]["audit"]["run_id"], "plan"),
        (runs["rerun"]["audit"]["run_id"], "end"),
    ]
    assert audit_verify() == "ok: 7 records, 2 runs, 1 aborted"
    listing = host.run(
        "cd %s && ROLLBACK_AUDIT_KEY=%s ANSIBLE_CONFIG=ansible.cfg ANSIBLE_NOCOLOR=1"
        " %s/ansible-playbook playbooks/audit_verify.yml -e audit_file=%s",
        str(context.ROOT),
        context.audit_key(scenario.audit_file),
        str(context.VENV_BIN),
        str(scenario.audit_file),
    )
    assert f"run {killed['run_id']} (rollback.yml" in listing.stdout
    assert "aborted (no end record)" in listing.stdout


def test_no_secret_leaked(stack, scenario, runs):
    check_secrets_absent(stack, scenario, list(runs.values()))
