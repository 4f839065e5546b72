"""The production guard cannot be switched off from the command line (issue 12 §2).

rollback.yml as AWX runs it (ansible-runner), on the inventory of tests/data/guard, whose every
endpoint (flag API, instances, Prometheus, SMTP, the databases' host and port) is a recorder of
contact. Each attack must exit non-zero, leave the recorder untouched, and leave a complete audit
record (start, request, end: who, why, ticket, environment, and the refusal), in the file and in
PostgreSQL. The control - a sound request - does reach the recorder, so the recorder can see.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import ansible_runner
import pytest
from ansible.module_utils.audit_crosscheck import run_audit_verify

from tests.fakes.recorder import Recorder

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
INVENTORY = ROOT / "tests" / "data" / "guard" / "inventory"
BIN = Path(sys.executable).parent
KEY = "CANARY-audit-key-4b7e19d2c0a8f6e3"
FF_KEY = "CANARY-ff-key-guard-6c2d"
PG_PASSWORD = "CANARY-pg-guard-91e0"
PROD = {
    "env": "prod",
    "reason": "go/no-go failed: 5xx at 4%",
    "ticket": "INC-77",
    "confirm": "prod",
    "operator": "alice",
}


@dataclass(repr=False)
class Run:
    rc: int
    stdout: str
    events: list[dict] = field(repr=False)
    audit: Path

    def __repr__(self) -> str:
        return f"rc={self.rc}\n{self.stdout[-4000:]}"

    def records(self) -> list[dict]:
        return [json.loads(line) for line in self.audit.read_text().splitlines()] if self.audit.exists() else []

    def tasks_started(self) -> list[str]:
        return [e["event_data"].get("task", "") for e in self.events if e["event"] == "playbook_on_task_start"]


@pytest.fixture
def recorder():
    with Recorder() as rec:
        yield rec


def rollback(tmp_path, recorder, extravars, cmdline="", pg_dsn="", **env) -> Run:
    pdd = tmp_path / f"runner-{time.monotonic_ns()}"
    pdd.mkdir()
    audit = tmp_path / "audit" / "rollback-audit.jsonl"
    envvars = {
        "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "HOME": os.environ.get("HOME", "/root"),
        "USER": "laptop-user",
        "ANSIBLE_NOCOLOR": "1",
        "ROLLBACK_AUDIT_FILE": str(audit),
        "ROLLBACK_AUDIT_KEY": KEY,
        "ROLLBACK_AUDIT_PG_DSN": pg_dsn,
        "GUARD_RECORDER_URL": recorder.url,
        "GUARD_DB_PORT": str(recorder.tcp_port),
        "FF_API_KEY": FF_KEY,
        "PGPASSWORD": PG_PASSWORD,
        "SLACK_WEBHOOK_URL": recorder.url + "/services/T0/B0/x",
        **env,
    }
    result = ansible_runner.run(
        private_data_dir=str(pdd),
        project_dir=str(ROOT),
        playbook="rollback.yml",
        inventory=str(INVENTORY),
        extravars=extravars,
        envvars={k: v for k, v in envvars.items() if v is not None},
        cmdline=cmdline or None,
        quiet=True,
        timeout=300,
    )
    return Run(result.rc, result.stdout.read(), list(result.events), audit)


def assert_refused_untouched_and_recorded(run: Run, recorder: Recorder, expected: str, request: dict) -> dict:
    assert run.rc != 0, run
    assert expected in run.stdout, run
    assert not recorder.contacted(), f"a refused run contacted {recorder.requests} / {recorder.connections} connections"
    assert run.tasks_started() == [], "a task ran before the refusal"
    records = run.records()
    assert [r["kind"] for r in records] == ["start", "request", "end"], run
    for record in records[1:]:
        assert record["environment"] == request["env"] and record["reason"] == request["reason"]
        assert record["ticket"] == request.get("ticket", "") and record["operator"] == request.get(
            "operator", "laptop-user"
        )
        assert expected in record["refused"]
    assert (records[2]["status"], records[2]["outcome"]) == ("refused", "refused")
    everything = run.stdout + json.dumps(run.events) + run.audit.read_text()
    for secret in (KEY, FF_KEY, PG_PASSWORD):
        assert secret not in everything
    return records[-1]


ATTACKS = [
    ("prod-like-off", {**PROD, "rollback_prod_like": False}, "", {}, "-e rollback_prod_like cannot be set"),
    ("archive-off", {**PROD, "rollback_schema_archive": False}, "", {}, "-e rollback_schema_archive cannot be set"),
    ("endpoint", {**PROD, "rollback_flag_api_url": "http://x"}, "", {}, "-e rollback_flag_api_url cannot be set"),
    ("unknown-var", {**PROD, "force": True}, "", {}, "-e force is not an input of rollback.yml"),
    ("start-at-task", PROD, "--start-at-task 'Turn the flag off'", {}, "--start-at-task is refused"),
    ("step", PROD, "--step", {}, "--step is refused"),
    ("tags", PROD, "--tags flag", {}, "--tags flag is refused"),
    ("skip-tags", PROD, "--skip-tags never", {}, "--skip-tags never is refused"),
    ("run-tags-env", PROD, "", {"ANSIBLE_RUN_TAGS": "schema"}, "--tags schema is refused"),
    ("module-path", PROD, "--module-path /tmp", {}, "--module-path is refused"),
    ("limit-one-db", PROD, "--limit prod-us,localhost", {}, "--limit prod-us,localhost leaves out prod-eu"),
    ("limit-no-localhost", PROD, "--limit prod", {}, "--limit prod leaves out localhost"),
    ("other-inventory", PROD, "-i /etc/hosts", {}, "the inventory /etc/hosts is outside the project"),
    ("no-ticket", {**PROD, "ticket": ""}, "", {}, "prod is production-like: give the incident ticket"),
    ("wrong-confirm", {**PROD, "confirm": "staging"}, "", {}, "prod is production-like: give the incident ticket"),
    ("no-key", PROD, "", {"ROLLBACK_AUDIT_KEY": ""}, "prod is production-like: its audit must be sealed"),
    ("no-postgresql", PROD, "", {"ROLLBACK_AUDIT_PG_DSN": ""}, "its audit must also go to PostgreSQL"),
    (
        "callback-off",
        PROD,
        "",
        {"ANSIBLE_CALLBACKS_ENABLED": "timer", "ROLLBACK_AUDIT_STATUS": "ok"},
        "the audit callback rollback_audit is not running",
    ),
]


@pytest.fixture(autouse=True)
def _verifier_key(monkeypatch):
    monkeypatch.setenv("ROLLBACK_AUDIT_KEY", KEY)  # what the auditor who verifies holds


@pytest.mark.parametrize("attack", [a[1:] for a in ATTACKS], ids=[a[0] for a in ATTACKS])
def test_each_attack_is_refused_before_any_contact_and_recorded(tmp_path, recorder, audit_db, monkeypatch, attack):
    extravars, cmdline, env, expected = attack
    env = {"ROLLBACK_AUDIT_PG_DSN": audit_db.writer_dsn, **env}
    run = rollback(tmp_path, recorder, extravars, cmdline, **env)
    end = assert_refused_untouched_and_recorded(run, recorder, expected, extravars)
    in_pg = end["sinks"] == ["file", "postgresql"]
    if env.get("ROLLBACK_AUDIT_KEY") == "":  # written unsealed, checked as a chain; PostgreSQL needs the key
        monkeypatch.delenv("ROLLBACK_AUDIT_KEY")
        assert not in_pg and "needs ROLLBACK_AUDIT_KEY" in end["audit_warnings"][0]
    checked = run_audit_verify({"path": str(run.audit), "pg_dsn": env["ROLLBACK_AUDIT_PG_DSN"] if in_pg else None})
    assert checked["ok"], checked["msg"]
    if in_pg:
        assert checked["postgresql"]["records"] == 3


def test_extra_vars_from_a_file_are_checked_too(tmp_path, recorder, audit_db):
    varsfile = tmp_path / "vars.yml"
    varsfile.write_text("rollback_prod_like: false\n")
    run = rollback(tmp_path, recorder, PROD, f"-e @{varsfile}", pg_dsn=audit_db.writer_dsn)
    assert_refused_untouched_and_recorded(run, recorder, "-e rollback_prod_like cannot be set", PROD)


def test_a_bad_request_on_a_laptop_is_refused_with_its_sentence(tmp_path, recorder):
    run = rollback(tmp_path, recorder, {"env": "local", "reason": " "})
    assert_refused_untouched_and_recorded(run, recorder, 'reason is empty: say why with -e reason="..."', {
        "env": "local", "reason": ""})  # fmt: skip


def test_the_control_a_sound_request_does_reach_the_endpoints_and_is_recorded_from_the_start(
    tmp_path, recorder, audit_db
):
    """The review's last finding: a failed prod attempt that contacted the flag API recorded no operator."""
    request = {**PROD, "awx_user_name": "mallory"}
    request.pop("operator")
    run = rollback(tmp_path, recorder, request, pg_dsn=audit_db.writer_dsn)
    assert run.rc != 0, run
    assert recorder.contacted(), "the control must contact the recorder, or the attacks prove nothing"
    assert "Show the request as checked" in run.tasks_started()
    _, req, end = run.records()
    for record in (req, end):
        assert (record["environment"], record["reason"], record["ticket"]) == ("prod", PROD["reason"], "INC-77")
        assert (record["operator"], record["operator_source"]) == ("mallory", "extra_var")
        assert "outside an AWX job" in record["operator_note"]
        assert record["production_like"] is True
    assert req["status"] == "accepted" and end["outcome"].startswith("failed at ")
    checked = run_audit_verify({"path": str(run.audit), "pg_dsn": audit_db.writer_dsn})
    assert checked["ok"], checked["msg"]
    for secret in (KEY, FF_KEY, PG_PASSWORD):
        assert secret not in run.stdout + json.dumps(run.events) + run.audit.read_text()


def test_inside_an_awx_job_awx_names_the_operator(tmp_path, recorder, audit_db):
    request = {**PROD, "awx_user_name": "alice", "awx_job_id": 4242, "rollback_awx_url": "https://awx.example.com"}
    request.pop("operator")
    awx = {"JOB_ID": "4242", "AWX_HOST": "https://awx.example.com"}
    run = rollback(tmp_path, recorder, request, "--limit prod-eu", pg_dsn=audit_db.writer_dsn, **awx)
    _, req, _ = run.records()
    assert (req["operator"], req["operator_source"], req["awx_job_id"]) == ("alice", "awx", 4242)
    assert req["job_url"] == "https://awx.example.com/#/jobs/playbook/4242"
    assert "--limit prod-eu leaves out" in req["refused"] and not recorder.contacted()


def test_syntax_check_and_listing_run_nothing_and_need_no_request(tmp_path):
    for option in ("--syntax-check", "--list-tasks", "--list-hosts"):
        (tmp_path / option.strip("-")).mkdir()
        done = ansible_runner.run(
            private_data_dir=str(tmp_path / option.strip("-")),
            project_dir=str(ROOT),
            playbook="rollback.yml",
            inventory=str(ROOT / "inventories"),
            cmdline=option,
            extravars={"env": "prod"},  # no reason, ticket or confirmation: nothing runs, nothing is checked
            envvars={
                "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
                "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
                "ROLLBACK_AUDIT_FILE": str(tmp_path / "a.jsonl"),
            },
            quiet=True,
        )
        assert done.rc == 0, shlex.join([option, done.stdout.read()[-2000:]])
    assert not (tmp_path / "a.jsonl").exists()
