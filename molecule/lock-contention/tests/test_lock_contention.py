"""The lock-contention drill: a long transaction holds a lock on documents while the rollback reverts the schema.

Run `blocked`: the blocker never lets go; lock_timeout 1 s, 3 attempts: the rollback fails naming
it, and leaves the database exactly as it was. Run `released`: the blocker ends 1.5 s after the
rollback first waits for it; 5 attempts: the rollback retries and succeeds. In both, live traffic
queued behind the revert's lock request for at most lock_timeout, and no request failed.

How long the app's queries waited is PostgreSQL's own measure (log_lock_waits: "process N acquired
... after X ms", rehearsal.lockwaits), not the load generator's HTTP latency: that one includes the
app, the client and the machine's load, and stays in the results file as a figure only.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from drills import context
from drills.checks import (
    alert_of,
    check_archive,
    check_healthy_on,
    check_no_failed_request,
    check_paged_once_then_resolved,
    check_secrets_absent,
    end_record,
    step,
)

from rehearsal.appdb import APP_APPLICATION_NAME
from rehearsal.lockwaits import LOCK_WAIT_MARGIN

LOCK_TIMEOUT = 1.0  # seconds: converge.yml's rollback_schema_lock_timeout
REVERT_APPLICATION_NAME = "emergency-rollback"  # pg_session.APPLICATION_NAME: the revert's session


def app_waits(run: dict) -> list[dict]:
    """The lock waits of the app's sessions while the run went on (longer than deadlock_timeout)."""
    return [wait for wait in run["lock_waits"] if wait["application_name"] == APP_APPLICATION_NAME]


@pytest.mark.parametrize("label", ["blocked", "released"])
def test_live_traffic_never_waited_longer_than_lock_timeout(runs, label):
    run = runs[label]
    check_no_failed_request(run)
    during_schema = run["load"]["during_schema_step"]
    assert during_schema["requests"] > 0 and during_schema["failed"] == 0, during_schema
    waits = app_waits(run)
    # A wait that never ended with the lock was cancelled (the app's statement_timeout): unbounded.
    assert all(wait["acquired_ms"] is not None for wait in waits), waits
    too_long = [wait for wait in waits if wait["acquired_ms"] > (LOCK_TIMEOUT + LOCK_WAIT_MARGIN) * 1000]
    longest = sorted(too_long, key=lambda wait: wait["acquired_ms"])[-3:]
    assert not too_long, (
        f"{len(too_long)} app lock waits longer than lock_timeout {LOCK_TIMEOUT:g} s; longest: {longest}"
    )


def test_the_lock_queue_really_formed(runs):
    """The app's writes (ROW EXCLUSIVE on documents) do not conflict with the blocker's ACCESS SHARE: they
    queued behind the revert's ACCESS EXCLUSIVE request, as PostgreSQL logged it (the drill is not vacuous)."""
    run = runs["blocked"]
    assert run["fault"]["blocker"]["first_waiters"][0]["application_name"].startswith(REVERT_APPLICATION_NAME)
    revert_waits = [
        wait
        for wait in run["lock_waits"]
        if (wait["application_name"] or "").startswith(REVERT_APPLICATION_NAME)
        and wait["mode"] == "AccessExclusiveLock"
    ]
    # Each of the 3 attempts waited until lock_timeout cancelled it: PostgreSQL never logged it acquired.
    assert len(revert_waits) == 3 and all(wait["acquired_ms"] is None for wait in revert_waits), revert_waits
    blocker = run["fault"]["blocker"]["pid"]
    assert all(wait["holders"] == [blocker] for wait in revert_waits), revert_waits
    revert_pids = {wait["pid"] for wait in revert_waits}
    waits = app_waits(run)
    assert waits, f"no app session waited for a lock during the blocked run: {run['lock_waits']}"
    for wait in waits:  # in PostgreSQL's wait queue, the revert's request came before the app's
        queue = wait["wait_queue"]
        assert wait["pid"] in queue and revert_pids & set(queue[: queue.index(wait["pid"])]), wait
    # At 30 requests a second, the first write after each request queued waited most of lock_timeout.
    assert max(wait["acquired_ms"] for wait in waits) >= 0.5 * LOCK_TIMEOUT * 1000, waits


def test_the_blocked_rollback_failed_naming_the_blocker(runs):
    run = runs["blocked"]
    blocker = run["fault"]["blocker"]
    assert run["rc"] > 0
    end = end_record(run)
    assert end["outcome"] == "failed at schema"
    database = end["databases"]["local-app"]
    assert database["attempts"] == 3 and database["failed"] is True and database["changed"] is False
    for text in (database["msg"], step(end, "schema")["failure"]["message"], alert_of(run)["text"]):
        assert f"pid {blocker['pid']}" in text and "application_name 'drill-lock-blocker'" in text, text
        assert "timed out after lock_timeout 1 s" in text


def test_the_blocking_session_is_named_without_its_query(stack, scenario, runs):
    """The blocker's query names a customer (a canary). The migration role may read it (pg_read_all_stats),
    yet it reaches neither the output, the audit, Slack, e-mail nor PagerDuty: only pid, role,
    application_name, state and age do."""
    run = runs["blocked"]
    canary = run["fault"]["blocker"]["query_canary"]
    assert canary.startswith("canary-customer-")
    assert context.query(stack, "SELECT pg_has_role('migrator', 'pg_read_all_stats', 'MEMBER')") == [(True,)]
    places = {
        "the job output": Path(run["log"]).read_text(),
        "the audit file": scenario.audit_file.read_text(),
        "the sinks (Slack, e-mail, PagerDuty)": json.dumps(run["sinks"]),
    }
    for where, text in places.items():
        assert canary not in text, f"a blocking session's query text reached {where}"
    message = end_record(run)["databases"]["local-app"]["msg"]
    blocker = run["fault"]["blocker"]
    assert f"pid {blocker['pid']} (idle in transaction for " in message and ", role app_rw, " in message


def test_the_blocked_run_paged_and_the_released_run_resolved_it(runs):
    trigger = check_paged_once_then_resolved([runs["blocked"]], runs["released"])
    assert trigger["payload"]["severity"] == "critical", "the schema step failed"
    details = trigger["payload"]["custom_details"]
    assert details["failed_step"] == "schema" and details["runbook"] == "RUNBOOK.md#paged-schema"
    assert "application_name 'drill-lock-blocker'" in details["cause"]


def test_the_blocked_rollback_left_nothing_half_done(state, runs):
    after = runs["blocked"]["after"]
    assert after["revision"] == "0002_data_transformation"
    assert after["fingerprint"] == state["fingerprints"]["deployed"]
    assert after["archive_tables"] == []
    # The flag went off before the revert (the safe order): the app runs on the legacy path.
    assert after["flag_enabled"] is False and after["paths"] == ["legacy", "legacy"]
    assert "- database local-app: revision 0002_data_transformation" in alert_of(runs["blocked"])["text"]


def test_the_rollback_retried_and_succeeded_once_the_blocker_ended(stack, state, runs, flag_enabled):
    run = runs["released"]
    blocker = run["fault"]["blocker"]
    assert run["rc"] == 0
    end = end_record(run)
    assert end["outcome"] == "succeeded"
    database = end["databases"]["local-app"]
    assert database["changed"] is True and database["attempts"] >= 2, database
    assert database["lock_wait_seconds"] >= 1.0, "at least one attempt waited its whole lock_timeout"
    assert blocker["released_at"] - blocker["first_waiter_at"] >= 1.5
    # The final state: at the rollback point, every row the new path wrote archived, flag off.
    assert context.revision(stack) == "0001_legacy"
    assert context.fingerprint(stack) == state["fingerprints"]["baseline"]
    check_archive(stack, state, run, [runs["blocked"], run])
    assert flag_enabled() is False
    check_healthy_on(stack, "legacy")


def test_the_audit_tells_both_runs(audit_verify, runs):
    assert [end_record(runs[label])["outcome"] for label in ("blocked", "released")] == [
        "failed at schema",
        "succeeded",
    ]
    assert audit_verify() == "ok: 8 records, 2 runs, 0 aborted"


def test_no_secret_leaked(stack, scenario, runs):
    check_secrets_absent(stack, scenario, list(runs.values()))
