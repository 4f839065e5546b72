"""Small helpers of the verifiers: a run's audit records, steps and alert, with messages that say what is missing."""

from __future__ import annotations


def end_record(run: dict) -> dict:
    assert run["audit"]["start"], f"{run['label']}: the audit file has no start record of this run"
    assert run["audit"]["end"], f"{run['label']}: the audit file has no end record of this run"
    return run["audit"]["end"]


def step(end: dict, name: str) -> dict:
    found = [s for s in end["steps"] if s["name"] == name]
    assert found, f"no step {name} in the audit record: {[s['name'] for s in end['steps']]}"
    return found[0]


def mails_of(run: dict) -> list[dict]:
    """The e-mails of a run (matched by the audit run id their text names)."""
    run_id = run["audit"]["run_id"]
    return [m for m in run["sinks"]["mails"] if run_id and run_id in m.get("text", "")]


def posts_of(run: dict) -> list[dict]:
    """The accepted Slack webhook posts of a run (matched by the audit run id)."""
    run_id = run["audit"]["run_id"]
    return [p for p in run["sinks"]["webhooks"] if p.get("accepted") and run_id and run_id in str(p)]


def alert_of(run: dict) -> dict:
    """The one failure alert e-mail of a run."""
    mails = mails_of(run)
    assert len(mails) == 1, f"{run['label']}: expected one e-mail naming run {run['audit']['run_id']}, got {len(mails)}"
    assert mails[0]["subject"].startswith("ROLLBACK FAILED in local"), mails[0]["subject"]
    return mails[0]
