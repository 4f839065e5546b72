"""The audit callback in real playbook runs: through ansible-runner (as AWX runs them), and as a
plain ansible-playbook process where signals are sent.

The playbook is tests/data/audit/rollback.yml, a stand-in of the rollback with the real step
names (roles rollback_preflight, rollback_flag, rollback_schema, rollback_notify), driven by extra
vars. The repo's ansible.cfg enables the callback; the playbook-adjacent callback_plugins link is
what lets ansible-runner (which sets ANSIBLE_CALLBACK_PLUGINS) find it, as in AWX.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import ansible_runner
import psycopg2
import pytest
from ansible.module_utils.audit_crosscheck import run_audit_verify

from rehearsal.postgres import free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data" / "audit"
BIN = Path(sys.executable).parent
CANARY_EXTRA = "CANARY-extra-5b1f0e77"
CANARY_ENV = "CANARY-env-93c2aa41"
CANARY_ARG = "CANARY-arg-2d7e6f18"
KEY = "CANARY-audit-key-0f9e8d7c6b5a4"
PLAYBOOK = DATA / "rollback.yml"
FLAG_WAIT_TASK = "TASK [rollback_flag : Wait like a slow flag API]"


@dataclass(repr=False)
class Run:
    rc: int
    status: str
    stdout: str
    events: list[dict] = field(repr=False)
    audit: Path

    def __repr__(self) -> str:  # what pytest shows when an assertion about the run fails
        return f"rc={self.rc} status={self.status}\n{self.stdout[-5000:]}"

    def records(self) -> list[dict]:
        return [json.loads(line) for line in self.audit.read_text().splitlines()]

    def end(self) -> dict:
        return self.records()[-1]

    def task_msgs(self, task_suffix: str) -> list[str]:
        return [
            e["event_data"]["res"].get("msg", "")
            for e in self.events
            if e["event"] in ("runner_on_ok", "runner_on_failed")
            and e["event_data"].get("task", "").endswith(task_suffix)
        ]


def base_env(audit: Path, **extra: str) -> dict:
    return {
        "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "HOME": os.environ.get("HOME", "/root"),
        "ANSIBLE_NOCOLOR": "1",
        "ROLLBACK_AUDIT_FILE": str(audit),
        "ROLLBACK_AUDIT_PLAYBOOKS": "rollback.yml",
        "ROLLBACK_AUDIT_KEY": KEY,
        **extra,
    }


def run(
    tmp_path: Path, audit: Path, extravars: dict | None = None, playbook: Path = DATA / "rollback.yml", **env
) -> Run:
    """One playbook run through ansible-runner; its private data dir is a fresh folder of tmp_path."""
    pdd = Path(os.path.join(tmp_path, f"runner-{time.monotonic_ns()}"))
    pdd.mkdir()
    result = ansible_runner.run(
        private_data_dir=str(pdd),
        project_dir=str(playbook.parent),
        playbook=playbook.name,
        inventory=str(DATA / "inventory"),
        extravars=extravars or {},
        envvars=base_env(audit, **env),
        quiet=True,
        timeout=300,
    )
    return Run(result.rc, result.status, result.stdout.read(), list(result.events), audit)


def verify(tmp_path: Path, audit: Path) -> Run:
    """playbooks/audit_verify.yml through ansible-runner, as an auditor (or AWX) runs it."""
    return run(tmp_path, audit, {"audit_file": str(audit)}, playbook=ROOT / "playbooks" / "audit_verify.yml")


def verify_msg(result: Run) -> str:
    failed = [e for e in result.events if e["event"] == "runner_on_failed"]
    if failed:
        return failed[0]["event_data"]["res"]["msg"]
    return result.task_msgs("Report the audit")[0]


class Playbook:
    """ansible-playbook as a plain process (what an operator's shell runs), to send it signals."""

    def __init__(self, tmp_path: Path, audit: Path, *extra: str):
        self.log = tmp_path / f"ansible-{time.monotonic_ns()}.log"
        self.handle = open(self.log, "wb")
        self.proc = subprocess.Popen(
            [str(BIN / "ansible-playbook"), "-i", str(DATA / "inventory"), "rollback.yml", *extra],
            cwd=DATA,
            # banners at task start (the default callback delays them while skipped hosts are hidden)
            env={**os.environ, **base_env(audit), "ANSIBLE_DISPLAY_SKIPPED_HOSTS": "true"},
            stdout=self.handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_for_output(self, marker: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while marker not in self.log.read_text(errors="replace"):
            assert self.proc.poll() is None, f"ansible-playbook ended early:\n{self.output()}"
            assert time.monotonic() < deadline, f"no {marker!r} after {timeout} s:\n{self.output()}"
            time.sleep(0.1)

    def wait(self, timeout: float = 120) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self.handle.close()

    def kill_group(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.wait()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def verify_file(path: Path, pg_dsn: str | None = None) -> str:
    return run_audit_verify({"path": str(path), "pg_dsn": pg_dsn})["msg"]


@pytest.fixture(autouse=True)
def _verifier_key(monkeypatch):
    monkeypatch.setenv("ROLLBACK_AUDIT_KEY", KEY)


@pytest.fixture
def audit(tmp_path) -> Path:
    return tmp_path / "audit" / "rollback-audit.jsonl"


def test_succeeding_run(tmp_path, audit):
    result = run(tmp_path, audit)
    assert result.rc == 0, result
    start, end = result.records()
    assert (start["kind"], end["kind"]) == ("start", "end")
    assert start["run_id"] == end["run_id"]
    assert end["outcome"] == "succeeded" and end["status"] == "completed"
    assert [s["name"] for s in end["steps"]] == ["preflight", "flag", "schema", "notify", "Stand-in rollback"]
    assert {s["name"]: s["hosts"] for s in end["steps"]}["schema"] == 2
    assert end["target_revision"] == "0001_legacy" and end["drops"]["db-eu"]["drops"] == 3
    assert end["flag"]["previous_state"] == "enabled" and end["flag"]["state"] == "disabled"
    assert end["databases"]["db-us"]["revision_after"] == "0001_legacy"
    assert end["recap"]["db-eu"]["failures"] == 0
    assert end["started_at"] < end["ended_at"] and end["duration_seconds"] > 0
    assert oct(audit.stat().st_mode & 0o777) == "0o600"
    assert oct(audit.parent.stat().st_mode & 0o777) == "0o700"
    assert result.task_msgs("Show the audit status the alert would carry") == ["audit status: ok"]
    assert "rollback_audit" not in result.stdout  # no audit warning
    assert KEY not in result.stdout + json.dumps(result.events) + audit.read_text()
    checked = verify(tmp_path, audit)
    assert checked.rc == 0, checked
    assert verify_msg(checked).endswith(": ok: 2 records, 1 runs, 0 aborted")


def test_failing_run_names_the_step(tmp_path, audit):
    result = run(tmp_path, audit, {"audit_fail_step": "schema"})
    assert result.rc == 2, result
    end = result.end()
    assert end["outcome"] == "failed at schema" and end["status"] == "failed"
    schema = next(s for s in end["steps"] if s["name"] == "schema")
    assert schema["outcome"] == "failed"
    assert schema["failure"]["task"] == "rollback_schema : Fail here when asked"
    assert schema["failure"]["message"].startswith("downgrade of db-")
    assert [s["name"] for s in end["steps"]] == ["preflight", "flag", "schema"]


def test_rescued_failure_is_not_a_failed_run(tmp_path, audit):
    result = run(tmp_path, audit, {"audit_rescue": True})
    assert result.rc == 0, result
    end = result.end()
    assert end["outcome"] == "succeeded"
    assert {s["name"]: s["outcome"] for s in end["steps"]}["schema"] == "rescued"
    assert end["recap"]["db-eu"]["rescued"] == 1


def test_secrets_never_reach_the_audit_file(tmp_path, audit):
    result = run(
        tmp_path,
        audit,
        {
            "audit_fail_step": "schema",
            "audit_canary": CANARY_ARG,
            "ff_api_key": CANARY_EXTRA,
            "audit_fail_message": f"the API rejected key {CANARY_EXTRA}",
        },
        FF_API_KEY=CANARY_ENV,
    )
    assert result.rc == 2, result
    events = json.dumps(result.events)
    # the canaries did flow through the run (so their absence below means something) ...
    assert CANARY_ARG in events and CANARY_EXTRA in events and CANARY_ENV in events
    # ... and none of them, nor any no_log value, is in the audit file
    text = audit.read_text()
    for canary in (CANARY_ARG, CANARY_EXTRA, CANARY_ENV):
        assert canary not in text
    end = result.end()
    assert end["api_token"] == "<censored: secret>"
    assert "leaked" not in end
    assert end["note"] == "go/no-go failed: 5xx rate up (key <censored: secret>)"
    message = next(s for s in end["steps"] if s["name"] == "schema")["failure"]["message"]
    assert message.count("<censored: secret>") == 2


def test_no_log_failure_is_censored(tmp_path, audit):
    result = run(tmp_path, audit, {"audit_fail_step": "flag-no-log", "audit_canary": CANARY_ARG})
    assert result.rc == 2, result
    end = result.end()
    assert end["outcome"] == "failed at flag"
    flag = next(s for s in end["steps"] if s["name"] == "flag")
    assert flag["failure"] == {
        "task": "rollback_flag : Fail without logging the secret",
        "host": flag["failure"]["host"],
        "message": "<censored: no_log>",
    }
    assert CANARY_ARG not in audit.read_text()


def test_audit_file_broken_mid_run_is_alerted_and_the_run_goes_on(tmp_path, audit):
    result = run(tmp_path, audit, {"audit_break_file": True})
    assert result.rc == 0, result
    (status,) = result.task_msgs("Show the audit status the alert would carry")
    assert status.startswith(f"audit status: error: {audit} is no longer a regular file"), status
    assert "the audit file cannot be written (before step notify)" in result.stdout
    assert "this run has no end record" in result.stdout


@pytest.mark.parametrize(("signame", "returncodes"), [("SIGTERM", {-15}), ("SIGINT", {99}), ("SIGHUP", {-1})])
def test_interrupted_run_is_recorded_as_aborted(tmp_path, audit, signame, returncodes):
    playbook = Playbook(tmp_path, audit, "-e", "audit_sleep_seconds=60")
    try:
        playbook.wait_for_output(FLAG_WAIT_TASK)
        time.sleep(0.5)
        playbook.proc.send_signal(getattr(signal, signame))
        rc = playbook.wait(60)
    finally:
        playbook.kill_group()
    assert rc in returncodes, playbook.output()
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [r["kind"] for r in records] == ["start", "end"], playbook.output()
    end = records[-1]
    assert end["outcome"] == f"aborted by signal {signame}" and end["status"] == "aborted"
    assert [s["name"] for s in end["steps"]] == ["preflight", "flag"]
    assert end["target_revision"] == "0001_legacy"
    assert verify_file(audit) == "ok: 2 records, 1 runs, 1 aborted"


def test_sigkilled_run_leaves_its_start_record_and_verify_reports_it(tmp_path, audit):
    playbook = Playbook(tmp_path, audit, "-e", "audit_sleep_seconds=60")
    try:
        playbook.wait_for_output(FLAG_WAIT_TASK)
    finally:
        playbook.kill_group()
    (start,) = [json.loads(line) for line in audit.read_text().splitlines()]
    assert start["kind"] == "start"
    checked = verify(tmp_path, audit)
    assert checked.rc == 0, checked
    assert verify_msg(checked).endswith(": ok: 1 records, 1 runs, 1 aborted")
    (line,) = [
        e["event_data"]["res"]["msg"]
        for e in checked.events
        if e["event"] == "runner_item_on_ok" and e["event_data"]["task"] == "List the aborted runs"
    ]
    assert line == f"run {start['run_id']} (rollback.yml, started {start['started_at']}): aborted (no end record)"
    # the next rollback's preflight sees it too (audit_verify with current_run_id)
    again = run(tmp_path, audit)
    assert again.rc == 0, again
    (warning,) = [
        e["event_data"]["res"]["msg"]
        for e in again.events
        if e["event"] == "runner_item_on_ok" and e["event_data"]["task"] == "Warn about earlier runs that were aborted"
    ]
    assert warning == f"Earlier run {start['run_id']} (rollback.yml, {start['started_at']}): aborted (no end record)"


def test_two_concurrent_runs_share_the_chain(tmp_path, audit):
    go = tmp_path / "go"
    first = Playbook(tmp_path, audit, "-e", f"audit_wait_for={go}")
    try:
        first.wait_for_output("TASK [rollback_flag : Wait for the test's go")
        second = run(tmp_path, audit)  # starts and ends while the first is running
        assert second.rc == 0, second
        go.write_text("go")
        assert first.wait(120) == 0, first.output()
    finally:
        first.kill_group()
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    runs = [r["run_id"] for r in records]
    assert [r["kind"] for r in records] == ["start", "start", "end", "end"]
    assert runs[0] == runs[3] and runs[1] == runs[2] and runs[0] != runs[1]
    assert {r["outcome"] for r in records if r["kind"] == "end"} == {"succeeded"}
    assert verify_file(audit) == "ok: 4 records, 2 runs, 0 aborted"


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> Path:
    """An audit file written by two real runs (4 records)."""
    tmp = tmp_path_factory.mktemp("two-runs")
    audit = tmp / "audit.jsonl"
    for _ in range(2):
        assert run(tmp, audit).rc == 0
    return audit


def tampered(two_runs: Path, tmp_path: Path, change) -> Path:
    lines = two_runs.read_bytes().split(b"\n")[:-1]
    change(lines)
    copy = tmp_path / "tampered.jsonl"
    copy.write_bytes(b"".join(line + b"\n" for line in lines))
    return copy


def _edit(lines):
    lines[1] = lines[1].replace(b'"target_revision":"0001_legacy"', b'"target_revision":"0002_data_transformation"')


def _delete(lines):
    del lines[1]


def _swap(lines):
    lines[1], lines[2] = lines[2], lines[1]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (_edit, "broken at line 2 (run {0}): edited"),
        (_delete, "broken at line 2 (run {1}): missing in the middle"),
        (_swap, "broken at line 2 (run {1}): reordered"),
    ],
    ids=["edited", "deleted", "swapped"],
)
def test_verify_finds_the_first_broken_record(two_runs, tmp_path, change, expected):
    runs = [json.loads(line)["run_id"] for line in two_runs.read_text().splitlines()]
    path = tampered(two_runs, tmp_path, change)
    checked = verify(tmp_path, path)
    assert checked.rc == 2, checked
    assert expected.format(runs[0], runs[2]) in verify_msg(checked)


def test_pg_sink_receives_the_same_records(tmp_path, audit, audit_db):
    result = run(tmp_path, audit, ROLLBACK_AUDIT_PG_DSN=audit_db.writer_dsn)
    assert result.rc == 0, result
    conn = psycopg2.connect(audit_db.writer_dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT line, kind, run_id FROM runbook.audit_log ORDER BY seq")
            rows = cur.fetchall()
    finally:
        conn.close()
    assert [row[0] for row in rows] == audit.read_text().splitlines()
    assert [row[1] for row in rows] == ["start", "end"]
    assert verify_file(audit, audit_db.writer_dsn).endswith("PostgreSQL: 2 records, head seq 2, agrees")
    password = audit_db.writer_dsn.split(":")[2].split("@")[0]
    for text in (audit.read_text(), result.stdout, json.dumps(result.events)):
        assert password not in text and KEY not in text


def test_pg_sink_down_is_a_warning_not_a_failure(tmp_path, audit):
    dsn = f"postgresql://audit:pg-pass-CANARY-61d0@127.0.0.1:{free_port()}/audit"
    result = run(tmp_path, audit, ROLLBACK_AUDIT_PG_DSN=dsn)
    assert result.rc == 0, result
    assert (
        "rollback_audit: the PostgreSQL copy did not take the start record (file seq 1): cannot write" in result.stdout
    )
    end = result.end()
    assert end["outcome"] == "succeeded"
    assert end["audit_warnings"][0].startswith("the PostgreSQL copy did not take the start record (file seq 1)")
    # Its run said so, in sealed records: the file verifies against PostgreSQL with a warning (not here: no
    # PostgreSQL to compare with), and the end record, written when PostgreSQL was still down, says it too.
    assert "the PostgreSQL copy did not take the end record" in result.stdout
    assert "pg-pass-CANARY-61d0" not in audit.read_text() + result.stdout


def test_verify_playbook_without_a_file_says_what_to_do(tmp_path):
    missing = tmp_path / "none.jsonl"
    checked = verify(tmp_path, missing)
    assert checked.rc == 2, checked
    expected = f"{missing} does not exist: no audited run has written to it yet, or the path is wrong"
    assert verify_msg(checked) == f"Cannot verify the audit: {expected}"


@pytest.fixture(autouse=True)
def _no_directory_left_where_a_file_was(audit):
    yield
    if audit.is_dir():
        shutil.rmtree(audit)
