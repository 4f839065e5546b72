"""Smoke test of the benchmark's own code against the rehearsal stack (never a time: only that it works).

The floor (bench/floor.py) must really do the rollback it is compared with: flag off, instances on
legacy, the schema back at the rollback point with its rows archived, and report the figures the
report reads. The redeploy between runs (bench/deploy.py) must put a real deployment back.
"""

import json
import sys
import time

import psycopg2
import pytest

from bench.common import base_env, run_floor, run_timed
from bench.deploy import HEAD, redeploy
from bench.floor import STEPS
from rehearsal import appdb

pytestmark = pytest.mark.integration


def revision(stack, dbname=appdb.APP_DB):
    return appdb.current_revision(stack.dsn(dbname))


def test_redeploy_then_floor_rolls_back_for_real(stack_baseline, tmp_path):
    stack = stack_baseline
    # Live requests for the verification to judge (with none its 5xx verdict is rightly inconclusive).
    traffic = stack.load(rate=10).start()
    try:
        _rollback_with_the_floor(stack, tmp_path, traffic)
    finally:
        traffic.stop()


def _rollback_with_the_floor(stack, tmp_path, traffic):
    while len(traffic.samples) < 30:  # the verification's minimum (20) in its window, with a margin
        time.sleep(0.2)
    redeploy(stack, [appdb.APP_DB])
    assert revision(stack) == HEAD
    assert {s["path"] for s in stack.app_statuses()} == {"new"}

    timed, result = run_floor(
        base_env(stack.env()),
        [appdb.APP_DB],
        tmp_path / "floor.log",
        tmp_path / "floor.json",
        audit_file=str(tmp_path / "audit.jsonl"),
    )

    assert timed.rc == 0, timed.log.read_text()
    assert set(result) >= {
        "total_seconds",
        "started_at",
        "flag_confirmed_at",
        "propagation_seconds",
        "steps",
        "changed",
        "target",
    }
    assert list(result["steps"]) == list(STEPS)
    assert all(set(step) == {"seconds", "started_at", "ended_at"} for step in result["steps"].values())
    assert result["changed"] == 1
    assert result["target"] == appdb.BASELINE
    assert result["flag_before"] == "enabled"
    # The rollback happened: flag off, every instance on legacy, schema at the rollback point, rows archived.
    assert revision(stack) == appdb.BASELINE
    assert not stack.unleash.flag_enabled()
    assert {s["path"] for s in stack.app_statuses()} == {"legacy"}
    with psycopg2.connect(stack.dsn()) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM rollback_archive.manifest")
        assert cur.fetchone()[0] >= 1
    # The audit as the callback writes it: start, the request the guard accepted, the plan (recorded
    # after the flag was confirmed off, as the playbook does), the end with every step and fact.
    records = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in records] == ["start", "request", "plan", "end"]
    assert len({r["run_id"] for r in records}) == 1
    assert all(r["prev_sha256"] != "0" * 64 for r in records[1:])
    assert records[1]["status"] == "accepted" and records[1]["targets"] == ["local-app"]
    assert records[2]["flag"]["state"] == "disabled"
    assert records[2]["flag"]["confirmed_at"] == result["flag_confirmed_at"]
    assert set(records[2]["plan"]) == {"local-app"}
    end = records[3]
    assert end["outcome"] == "succeeded"
    assert [s["name"] for s in end["steps"]] == list(STEPS)
    assert end["verification"]["verdict"] == "verified"
    assert end["propagation"]["instances"]
    assert end["databases"]["local-app"]["revision_after"] == appdb.BASELINE
    assert result["notifications"]["slack"] == "delivered"
    assert result["notifications"]["mail"] == "delivered"
    assert [m["subject"] for m in stack.mails()][-1].startswith("Rollback of DataTransformationFeature")


def test_floor_refuses_in_one_line_without_secrets(stack, tmp_path):
    """The floor checks the request as the guard does, before anything is contacted: an empty reason
    is refused in one line, the flag untouched, nothing recorded but the refusal."""
    env = base_env(stack.env())
    log = tmp_path / "floor.log"
    flag_before = stack.unleash.flag_enabled()
    stack.set_flag(True)  # on, so that a floor turning it off before its checks is seen
    try:
        _refused(env, log, tmp_path)
        assert stack.unleash.flag_enabled(), "the floor turned the flag off for a refused request"
    finally:
        stack.set_flag(flag_before)


def _refused(env, log, tmp_path):
    argv = [
        sys.executable,
        "-m",
        "bench.floor",
        "--db",
        appdb.APP_DB,
        "--reason",
        " ",
        "--json-out",
        str(tmp_path / "x.json"),
    ]
    timed = run_timed([*argv, "--audit-file", str(tmp_path / "audit.jsonl")], env, log)
    output = log.read_text()
    assert timed.rc == 1
    assert output.startswith("floor: ") and output.count("\n") == 1, output
    assert "reason is empty" in output
    for key in ("PGPASSWORD", "FF_API_KEY", "SLACK_WEBHOOK_URL", "SMTP_PASSWORD"):
        assert env[key] not in output
    assert not (tmp_path / "x.json").exists()
    records = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [(r["kind"], r["status"]) for r in records] == [
        ("start", "running"),
        ("request", "refused"),
        ("end", "refused"),
    ]
