"""The concurrent-rollback drill: two rollback.yml launched at the same moment on the same environment.

Promises: exactly one performs the revert; the other waits for the runbook's advisory lock and finds
nothing to do (or stops with a clear message naming the other); the final state is right; each run's
audit record and notifications tell what that run did, no more, no less.
"""

from __future__ import annotations

import pytest
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
from drills.context import parse_utc

ADVISORY_MESSAGE = "Another schema revert holds the runbook's advisory lock"


@pytest.fixture(scope="module")
def reverted(runs):
    """(the run that reverted the schema, the other one)."""
    changed = [
        run for run in runs.values() if (end_record(run).get("databases") or {}).get("local-app", {}).get("changed")
    ]
    assert len(changed) == 1, f"{len(changed)} runs report a schema revert"
    other = next(run for run in runs.values() if run is not changed[0])
    return changed[0], other


def test_two_rollbacks_ran_at_the_same_time(runs):
    """The runs overlapped, and so did their schema steps: the race the drill is about took place."""
    first, second = runs["race-A"], runs["race-B"]
    assert first["started"] < second["ended"] and second["started"] < first["ended"]
    schema_a, schema_b = step(end_record(first), "schema"), step(end_record(second), "schema")
    assert parse_utc(schema_a["started_at"]) < parse_utc(schema_b["ended_at"])
    assert parse_utc(schema_b["started_at"]) < parse_utc(schema_a["ended_at"])


def test_exactly_one_performed_the_revert(reverted):
    done, _other = reverted
    database = end_record(done)["databases"]["local-app"]
    assert done["rc"] == 0 and end_record(done)["outcome"] == "succeeded"
    assert (database["revision_before"], database["revision_after"]) == ("0002_data_transformation", "0001_legacy")
    assert database["archive"]["rows"] > 0


def test_the_other_waited_and_found_nothing_to_do_or_stopped_clearly(reverted):
    done, other = reverted
    end = end_record(other)
    database = end["databases"]["local-app"]
    assert database["changed"] is False and not database.get("archive")
    if other["rc"] == 0:
        assert end["outcome"] == "succeeded"
        assert database["msg"] == "Already at 0001_legacy: nothing to do."
        # It met the first at the advisory lock: its revert started while the first one's ran, and waited.
        other_schema, done_schema = step(end, "schema"), step(end_record(done), "schema")
        assert parse_utc(other_schema["started_at"]) < parse_utc(done_schema["ended_at"])
        assert database["lock_wait_seconds"] > 0
    else:
        assert end["outcome"] == "failed at schema"
        assert ADVISORY_MESSAGE in database["msg"] and "application_name 'emergency-rollback'" in database["msg"]


def test_the_final_state_is_right(stack, state, reverted, flag_enabled):
    assert context.revision(stack) == "0001_legacy"
    assert context.fingerprint(stack) == state["fingerprints"]["baseline"]
    assert flag_enabled() is False
    check_healthy_on(stack, "legacy")
    # One archive, holding every row the new path wrote (both runs' load saw the same traffic).
    assert len({m["run_id"] for m in context.archive_tables(stack)}) == 1
    check_archive(stack, state, reverted[0], [reverted[0]])


def test_no_request_failed(runs):
    for run in runs.values():
        check_no_failed_request(run)


def test_each_audit_record_and_notification_tells_what_that_run_did(runs, audit_verify):
    assert audit_verify() == "ok: 8 records, 2 runs, 0 aborted"
    flag_changes = []
    for run in runs.values():
        end = end_record(run)
        assert end["operator"] == "drill-operator" and end["flag"]["previous_state"] in ("enabled", "disabled")
        flag = end["flag"]
        assert (step(end, "flag")["outcome"] == "changed") == flag["changed"]
        if flag["changed"]:
            assert flag["previous_state"] == "enabled" and flag["change_reference"]
            flag_changes.append(flag["change_reference"])
        else:  # found it off, or read it on and lost the race to the other run's write (which it names)
            assert flag["previous_state"] == "disabled" or flag["change_reference"], flag
        # A run that changed something announces it; one that found everything done is quiet.
        changed_something = flag["changed"] or end["databases"]["local-app"]["changed"]
        successes = [m for m in mails_of(run) if m["subject"].endswith("succeeded")]
        assert len(successes) == (1 if changed_something and run["rc"] == 0 else 0), run["label"]
    # Unleash writes one event for the one toggle that changed the flag; two runs that toggled at the
    # same moment both name it (its answer does not say whose it was), never a different one.
    assert len(flag_changes) >= 1 and len(set(flag_changes)) == 1, flag_changes


def test_no_secret_leaked(stack, scenario, runs):
    check_secrets_absent(stack, scenario, list(runs.values()))
