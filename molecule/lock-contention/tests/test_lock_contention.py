"""The lock-contention drill: a long transaction holds a lock on documents while the rollback reverts the schema.

Run `blocked`: the blocker never lets go; lock_timeout 1 s, 3 attempts: the rollback fails naming
it, and leaves the database exactly as it was. Run `released`: the blocker ends 1.5 s after the
rollback first waits for it; 5 attempts: the rollback retries and succeeds. In both, live traffic
queued behind the revert's lock request for at most about lock_timeout, and no request failed.
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

LOCK_TIMEOUT_MS = 1000
# Without lock_timeout a queued request would wait as long as the blocker holds (here: for good, then
# the app's 10 s statement_timeout would fail it); 3 s over lock_timeout is room for a noisy machine.
QUEUE_BOUND_MS = LOCK_TIMEOUT_MS + 3000


@pytest.mark.parametrize("label", ["blocked", "released"])
def test_live_traffic_never_waited_much_longer_than_lock_timeout(runs, label):
    run = runs[label]
    check_no_failed_request(run)
    during_schema = run["load"]["during_schema_step"]
    assert during_schema["requests"] > 0 and during_schema["failed"] == 0, during_schema
    assert run["load"]["slowest_during_schema_step"]["latency_ms"] <= QUEUE_BOUND_MS, run["load"]
    assert run["load"]["during_rollback"]["max_ms"] <= QUEUE_BOUND_MS


def test_the_lock_queue_really_formed(runs):
    # Requests did queue behind the revert's lock request while it waited (the drill is not vacuous).
    slowest = runs["blocked"]["load"]["slowest_during_schema_step"]
    assert slowest["latency_ms"] >= 0.3 * LOCK_TIMEOUT_MS, slowest
    assert runs["blocked"]["fault"]["blocker"]["first_waiters"][0]["application_name"].startswith("emergency-rollback")


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
    assert audit_verify() == "ok: 4 records, 2 runs, 0 aborted"


def test_no_secret_leaked(stack, scenario, runs):
    check_secrets_absent(stack, scenario, list(runs.values()))
