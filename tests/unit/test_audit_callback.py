"""Each hook of the rollback_audit callback, called the way the TaskQueueManager calls it.

The objects are Ansible's own: the test playbook of tests/data/audit loaded with Playbook.load, its
role tasks and handlers, Host, CallbackTaskResult and AggregateStats. Playbooks run end to end
(ansible-runner, signals, concurrency, PostgreSQL) in tests/integration/test_audit_callback.py;
the guard's part in tests/unit/test_audit_guard.py and tests/integration/test_guard.py.
"""

from __future__ import annotations

import atexit
import inspect
import json
import os
import signal
from pathlib import Path

import pytest
from ansible import context
from ansible.executor.stats import AggregateStats
from ansible.executor.task_result import CallbackTaskResult
from ansible.inventory.host import Host
from ansible.module_utils import audit_run
from ansible.module_utils.audit_chain import AuditKey, verify_lines
from ansible.module_utils.audit_file import read_lines
from ansible.module_utils.audit_guard import Verdict
from ansible.module_utils.audit_redact import MARK_NO_LOG, MARK_SECRET
from ansible.module_utils.common.collections import ImmutableDict
from ansible.parsing.dataloader import DataLoader
from ansible.playbook import Playbook
from ansible.playbook.block import Block
from ansible.plugins.callback import CallbackBase
from ansible.plugins.loader import callback_loader, init_plugin_loader
from ansible.utils.collection_loader import AnsibleCollectionConfig
from ansible.utils.context_objects import CLIArgs
from ansible.vars.manager import VariableManager

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data" / "audit"
CANARY = "CANARY-unit-7f3a9c"
KEY_CANARY = "CANARY-key-unit-0123456789abcdef"
ENV_KEYS = ("ROLLBACK_AUDIT_FILE", "ROLLBACK_AUDIT_RUN_ID", "ROLLBACK_AUDIT_PG_DSN")
REQUEST = {
    "environment": "local",
    "production_like": False,
    "reason": "go/no-go failed",
    "ticket": "INC-1",
    "operator": "alice",
    "operator_source": "extra_var",
}


def load_plugins():
    if AnsibleCollectionConfig.collection_finder is None:
        init_plugin_loader()
    callback_loader.add_directory(str(ROOT / "plugins" / "callback"))


def walk(blocks):
    for block in blocks:
        for task in block.block + block.rescue + block.always:
            if isinstance(task, Block):
                yield from walk([task])
            elif not task.implicit:
                yield task


@pytest.fixture(scope="module")
def loaded():
    load_plugins()
    loader = DataLoader()
    playbook = Playbook.load(str(DATA / "rollback.yml"), variable_manager=VariableManager(loader=loader), loader=loader)
    play = playbook.get_plays()[0]
    tasks = {t.get_name(): t for t in walk(play.compile())}
    for role in play.get_roles():
        tasks.update({t.get_name(): t for t in walk(role.get_handler_blocks(play))})
    return playbook, play, tasks


class Clock:
    """An injected monotonic clock: each step's duration is exactly what the test advances."""

    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Driver:
    """Calls the hooks in the order and with the arguments the TaskQueueManager uses."""

    def __init__(self, loaded, path: Path, **options):
        self.playbook, self.play, self.tasks = loaded
        self.path = path
        self.cb = callback_loader.get("rollback_audit")
        self.cb.set_options(direct={"path": str(path), "only_playbooks": ["rollback.yml"], **options})
        self.stats = AggregateStats()
        self.hosts = {name: Host(name) for name in ("db-eu", "db-us")}
        self.clock = Clock()

    def start(self, request: dict | None = REQUEST):
        self.cb.v2_playbook_on_start(self.playbook)
        if self.cb.session is not None:
            self.cb.session.steps.clock = self.clock
            if request is not None:
                assert self.cb.session.record_request(Verdict(dict(request))) is None
        self.cb.v2_playbook_on_play_start(self.play)

    def task(self, name, seconds: float = 0.0):
        task = self.tasks[name]
        if task.__class__.__name__ == "Handler":
            self.cb.v2_playbook_on_handler_task_start(task)
        else:
            self.cb.v2_playbook_on_task_start(task, False)
        self.clock.now += seconds
        return task

    def result(self, task, host, data, hook="ok", stats=None, **kwargs):
        """Count the result as the strategy does (`stats` overrides that), then call the hook."""
        result = CallbackTaskResult(self.hosts[host], task, data, {})
        default = {"ok": ["ok"], "failed": ["failures"], "skipped": ["skipped"], "unreachable": ["dark"]}[hook]
        if kwargs.get("ignore_errors"):
            default = ["ok", "ignored"]
        for stat in default if stats is None else stats:
            self.stats.increment(stat, host)
        getattr(self.cb, f"v2_runner_on_{hook}")(result, **kwargs)

    def run_task(self, name, data=None, hook="ok", hosts=("db-eu", "db-us"), seconds=0.0, **kwargs):
        task = self.task(name, seconds)
        for host in hosts:
            self.result(task, host, dict(data or {"changed": False}), hook=hook, **kwargs)
        return task

    def finish(self):
        self.cb.v2_playbook_on_stats(self.stats)

    def records(self):
        return [json.loads(line) for line in self.path.read_text().splitlines()]


@pytest.fixture
def driver(loaded, tmp_path, monkeypatch):
    for key in ENV_KEYS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("FF_API_KEY", CANARY)
    monkeypatch.setenv("ROLLBACK_AUDIT_KEY", KEY_CANARY)
    monkeypatch.setattr(context, "CLIARGS", CLIArgs({"check": False, "args": (str(DATA / "rollback.yml"),)}))
    driver = Driver(loaded, tmp_path / "audit" / "audit.jsonl")
    yield driver
    audit_run.register(None)
    atexit.unregister(driver.cb._at_exit)  # a session a test left open writes nothing at pytest's exit
    driver.cb._restore_signal_handlers()


def facts(**data):
    return {"changed": False, "ansible_stats": {"data": {"rollback_audit": data}, "per_host": False, "aggregate": True}}


def test_every_hook_has_ansibles_signature():
    load_plugins()
    cls = type(callback_loader.get("rollback_audit"))
    hooks = [name for name in vars(cls) if name.startswith("v2_")]
    assert sorted(hooks) == sorted(
        [
            "v2_playbook_on_start",
            "v2_playbook_on_play_start",
            "v2_playbook_on_no_hosts_matched",
            "v2_playbook_on_task_start",
            "v2_playbook_on_handler_task_start",
            "v2_runner_on_ok",
            "v2_runner_on_failed",
            "v2_runner_on_skipped",
            "v2_runner_on_unreachable",
            "v2_runner_on_async_failed",
            "v2_playbook_on_stats",
        ]
    )
    for name in hooks:
        ours = inspect.signature(getattr(cls, name))
        base = inspect.signature(getattr(CallbackBase, name))
        assert [(p.name, p.kind, p.default) for p in ours.parameters.values()] == [
            (p.name, p.kind, p.default) for p in base.parameters.values()
        ], name


def test_start_and_request_records_come_first_sealed(driver):
    driver.start()
    start, request = driver.records()
    assert (start["kind"], start["status"], start["seq"]) == ("start", "running", 1)
    assert start["playbook"] == "rollback.yml" and start["check_mode"] is False
    assert {"user", "host", "pid", "pid_start", "ansible_version"} <= set(start["controller"])
    assert start["sinks"] == ["file"] and start["audit_file"]["path"] == str(driver.path)
    assert (request["kind"], request["status"], request["run_id"]) == ("request", "accepted", start["run_id"])
    assert {k: request[k] for k in REQUEST} == REQUEST
    assert audit_run.active() is driver.cb.session
    assert os.environ["ROLLBACK_AUDIT_RUN_ID"] == start["run_id"]
    assert os.environ["ROLLBACK_AUDIT_FILE"] == str(driver.path)
    assert oct(driver.path.stat().st_mode & 0o777) == "0o600"
    report = verify_lines(read_lines(str(driver.path)), AuditKey(KEY_CANARY.encode()))
    assert report.ok and report.sealed == 2
    assert KEY_CANARY not in driver.path.read_text()
    driver.finish()


def test_succeeding_run_keeps_only_the_published_facts(driver):
    driver.start()
    driver.run_task("rollback_preflight : Start the stand-in preflight", seconds=1.5)
    driver.run_task(
        "rollback_preflight : Tell the audit who operates, and why",
        facts(plan={"db-eu": {"sql_sha256": "a" * 64}}, note=f"key {CANARY} leaked", api_token=CANARY, run_id="x"),
        hosts=("db-eu",),
        seconds=0.25,
    )
    driver.run_task(
        "rollback_preflight : Send a no_log value to the audit (it must be dropped)",
        {"censored": "the output has been hidden", "changed": False},
        hosts=("db-eu",),
    )
    driver.run_task("rollback_preflight : Fail here when asked", {"skipped": True}, hook="skipped")
    # A module result with the keys the old callback whitelisted: none of them is kept any more.
    driver.run_task(
        "rollback_flag : Record the flag switch",
        {"changed": True, "provider": "unleash", "previous_state": "enabled", "from_revision": "0002", "dsn": CANARY},
        hosts=("db-eu",),
        seconds=2.0,
    )
    driver.run_task("rollback_flag : Record the flag switch", facts(flag={"state": "disabled"}), hosts=("db-eu",))
    driver.run_task("rollback_schema : Schema reverted", seconds=3.0)
    driver.run_task(
        "rollback_notify : Show the audit status the alert would carry", {"changed": True}, hosts=("db-eu",)
    )
    driver.run_task("Summarise outside any role")
    driver.finish()

    start, request, plan, end = driver.records()
    assert CANARY not in driver.path.read_text() and KEY_CANARY not in driver.path.read_text()
    # The plan is written the moment it is published, with the request, before any later step.
    assert (plan["kind"], plan["run_id"], plan["plan"]) == (
        "plan",
        start["run_id"],
        {"db-eu": {"sql_sha256": "a" * 64}},
    )
    assert plan["seq"] == 3 and plan["operator"] == "alice" and "steps" not in plan
    assert end["kind"] == "end" and end["run_id"] == start["run_id"] == request["run_id"]
    assert end["outcome"] == "succeeded" and end["status"] == "completed"
    assert {k: end[k] for k in REQUEST} == REQUEST
    assert end["plan"] == {"db-eu": {"sql_sha256": "a" * 64}} and end["flag"] == {"state": "disabled"}
    assert end["note"] == f"key {MARK_SECRET} leaked" and end["api_token"] == MARK_SECRET
    for absent in ("provider", "previous_state", "from_revision", "databases", "leaked"):
        assert absent not in end and absent not in end.get("flag", {})
    assert "set_stats key 'run_id' is reserved for the audit record: ignored" in end["audit_warnings"]
    steps = {s["name"]: s for s in end["steps"]}
    assert list(steps) == ["preflight", "flag", "schema", "notify", "Stand-in rollback"]
    assert {name: s["duration_seconds"] for name, s in steps.items()} == {
        "preflight": 1.75,
        "flag": 2.0,
        "schema": 3.0,
        "notify": 0.0,
        "Stand-in rollback": 0.0,
    }
    assert (steps["preflight"]["outcome"], steps["preflight"]["hosts"]) == ("ok", 2)
    assert (steps["flag"]["outcome"], steps["flag"]["hosts"]) == ("changed", 1)
    assert end["recap"]["db-eu"]["failures"] == 0
    assert verify_lines(read_lines(str(driver.path)), AuditKey(KEY_CANARY.encode())).summary() == (
        "ok: 4 records, 1 runs, 0 aborted"
    )


def test_failed_step_names_the_task_and_censors_no_log(driver):
    driver.start()
    driver.run_task("rollback_preflight : Start the stand-in preflight")
    driver.run_task(
        "rollback_flag : Fail without logging the secret",
        {"censored": "the output has been hidden", "changed": False, "failed": True},
        hook="failed",
        hosts=("db-eu",),
    )
    driver.run_task(
        "rollback_flag : Fail here when asked", {"failed": True, "msg": f"401 with {CANARY}"}, hook="failed"
    )
    driver.finish()
    end = driver.records()[-1]
    assert end["outcome"] == "failed at flag" and end["status"] == "failed"
    flag = next(s for s in end["steps"] if s["name"] == "flag")
    assert flag["outcome"] == "failed"
    assert flag["failure"] == {
        "task": "rollback_flag : Fail without logging the secret",
        "host": "db-eu",
        "message": MARK_NO_LOG,
    }
    assert CANARY not in driver.path.read_text()


def test_ignored_and_rescued_failures_do_not_fail_the_run(driver):
    driver.start()
    driver.run_task(
        "rollback_flag : Fail here when asked", {"failed": True, "msg": "x"}, hook="failed", ignore_errors=True
    )
    task = driver.task("rollback_schema : Fail inside a block that has a rescue")
    # in a block with a rescue section, the strategy counts "rescued" instead of "failures"
    driver.result(task, "db-eu", {"failed": True, "msg": "lock timeout"}, hook="failed", stats=["rescued"])
    driver.run_task("rollback_schema : Recover from the failed attempt", hosts=("db-eu",))
    driver.finish()
    end = driver.records()[-1]
    assert end["outcome"] == "succeeded"
    assert {s["name"]: s["outcome"] for s in end["steps"]} == {"flag": "ok", "schema": "rescued"}


def test_a_failure_the_rescue_turns_into_a_failed_run_stays_failed(driver):
    driver.start()
    task = driver.task("rollback_schema : Fail inside a block that has a rescue")
    driver.result(task, "db-eu", {"failed": True, "msg": "lock timeout"}, hook="failed", stats=["rescued"])
    driver.run_task("rollback_notify : Show the audit status the alert would carry", {"failed": True}, hook="failed")
    driver.finish()
    end = driver.records()[-1]
    assert end["outcome"] == "failed at schema"
    assert next(s for s in end["steps"] if s["name"] == "schema")["failure"]["message"] == "lock timeout"


def test_failed_at_names_the_step_that_failed_first_when_a_role_runs_twice(driver):
    """notify runs right after the flag step (the start event) and again at the end, where the alert's own
    `fail` must not be taken for the cause."""
    driver.start()
    driver.run_task("rollback_flag : Record the flag switch", seconds=1.0)
    driver.run_task("rollback_notify : Show the audit status the alert would carry", hosts=("db-eu",), seconds=1.0)
    failed = {"failed": True, "msg": "lock"}
    driver.run_task("rollback_schema : Fail here when asked", failed, hook="failed", seconds=1.0)
    alert_failed = {"failed": True, "msg": "ROLLBACK FAILED"}
    driver.run_task("rollback_notify : Record the notifications", alert_failed, hook="failed", seconds=1.0)
    driver.finish()
    end = driver.records()[-1]
    assert [s["name"] for s in end["steps"]] == ["flag", "notify", "schema"]
    assert end["outcome"] == "failed at schema"


def test_unreachable_host_fails_its_step(driver):
    driver.start()
    driver.run_task(
        "rollback_schema : Record the revert of this database",
        {"unreachable": True, "msg": "no route"},
        hook="unreachable",
    )
    driver.finish()
    end = driver.records()[-1]
    assert end["outcome"] == "failed at schema"
    assert end["steps"][0]["failure"]["message"] == "unreachable: no route"


def test_handler_outside_a_role_is_the_notify_step(driver):
    driver.start()
    handler = driver.tasks["rollback_notify : Send the notification"].copy(exclude_parent=False)
    handler._role = None  # a handler of the play itself
    driver.cb.v2_playbook_on_handler_task_start(handler)
    driver.result(handler, "db-eu", {"changed": False})
    driver.finish()
    assert [s["name"] for s in driver.records()[-1]["steps"]] == ["notify"]


def test_a_play_that_matches_no_host_fails_the_run(driver):
    driver.start()
    driver.cb.v2_playbook_on_no_hosts_matched()
    driver.finish()
    end = driver.records()[-1]
    assert (end["status"], end["outcome"]) == ("failed", "failed at Stand-in rollback: the play matched no host")


def test_a_refused_request_ends_refused_with_its_sentence(driver):
    driver.start(request=None)
    sentence = "--start-at-task is refused: drop it; nothing was contacted and nothing was changed."
    assert driver.cb.session.record_request(Verdict(dict(REQUEST), sentence)) == sentence
    driver.cb._at_exit()  # the lookup's error ends the playbook before its recap
    _, request, end = driver.records()
    assert (request["status"], request["refused"]) == ("refused", sentence)
    assert (end["status"], end["outcome"], end["refused"]) == ("refused", "refused", sentence)
    assert end["operator"] == "alice" and end["environment"] == "local" and "error" not in end


@pytest.mark.parametrize(
    ("env", "missing", "expected"),
    [
        ({"ROLLBACK_AUDIT_PG_DSN": "postgresql://u@127.0.0.1:9/a"}, "ROLLBACK_AUDIT_KEY", "its audit must be sealed"),
        ({}, "ROLLBACK_AUDIT_PG_DSN", "its audit must also go to PostgreSQL: set ROLLBACK_AUDIT_PG_DSN"),
    ],
)
def test_production_like_needs_the_key_and_postgresql(driver, monkeypatch, env, missing, expected):
    monkeypatch.delenv(missing, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    driver.cb.set_options(
        direct={
            "path": str(driver.path),
            "only_playbooks": ["rollback.yml"],
            "pg_dsn": env.get("ROLLBACK_AUDIT_PG_DSN"),
        }
    )
    driver.start(request=None)
    problem = driver.cb.session.record_request(Verdict({**REQUEST, "environment": "prod", "production_like": True}))
    assert problem.startswith(f"prod is production-like: {expected}")
    assert driver.records()[1]["refused"] == problem


def test_postgresql_without_the_key_refuses_even_a_rehearsal(driver, monkeypatch):
    monkeypatch.delenv("ROLLBACK_AUDIT_KEY")
    dsn = "postgresql://u@127.0.0.1:9/a"
    driver.cb.set_options(direct={"path": str(driver.path), "only_playbooks": ["rollback.yml"], "pg_dsn": dsn})
    driver.start(request=None)
    problem = driver.cb.session.record_request(Verdict(dict(REQUEST)))
    assert problem.startswith("ROLLBACK_AUDIT_PG_DSN is set but ROLLBACK_AUDIT_KEY is not")


def test_a_short_key_refuses_the_run(driver, monkeypatch):
    monkeypatch.setenv("ROLLBACK_AUDIT_KEY", "short")
    driver.start(request=None)
    assert driver.cb.session.record_request(Verdict(dict(REQUEST))).startswith("ROLLBACK_AUDIT_KEY is too short")


def test_unwritable_audit_file_refuses_the_request(driver, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a directory")
    driver.cb.set_options(direct={"path": str(blocker / "audit.jsonl"), "only_playbooks": ["rollback.yml"]})
    driver.start(request=None)
    problem = driver.cb.session.record_request(Verdict(dict(REQUEST)))
    assert problem.startswith(f"the audit record cannot be written (cannot create {blocker / 'audit.jsonl'}")
    driver.finish()
    assert "this run has no end record" in driver.cb.session.warnings[-1]


def test_a_start_record_another_process_wrote_is_not_ours(driver, monkeypatch):
    driver.start(request=None)
    monkeypatch.setattr(audit_run, "controller_identity", lambda: {"host": "h", "pid": 1, "pid_start": 1})
    problem = driver.cb.session.record_request(Verdict(dict(REQUEST)))
    assert "the start record in the audit file was not written by this process" in problem


def test_file_broken_mid_run_is_a_warning_and_the_status_the_alert_reads(driver):
    driver.start()
    driver.run_task("rollback_preflight : Start the stand-in preflight")
    driver.path.unlink()
    driver.path.mkdir()
    driver.run_task("rollback_flag : Record the flag switch")
    assert driver.cb.session.status.startswith("error: ") and "regular file" in driver.cb.session.status
    driver.finish()
    assert driver.cb.session.finished


def test_playbook_outside_only_playbooks_is_not_audited(driver, monkeypatch):
    monkeypatch.setenv("ROLLBACK_AUDIT_RUN_ID", "stale")
    driver.cb.set_options(direct={"path": str(driver.path), "only_playbooks": ["deploy.yml"]})
    driver.start(request=None)
    driver.run_task("rollback_preflight : Start the stand-in preflight")
    driver.finish()
    assert not driver.path.exists() and driver.cb.session is None and audit_run.active() is None


def test_check_mode_is_recorded(driver, monkeypatch):
    monkeypatch.setattr(context, "CLIARGS", CLIArgs(ImmutableDict(check=True, args=("rollback.yml",))))
    driver.start()
    driver.finish()
    assert [r["check_mode"] for r in driver.records()] == [True, True, True]


def test_sigterm_writes_the_end_record_then_calls_the_previous_handler(driver):
    received = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    try:
        driver.start()
        driver.run_task("rollback_preflight : Start the stand-in preflight")
        driver.task("rollback_flag : Wait like a slow flag API")
        os.kill(os.getpid(), signal.SIGTERM)
        assert received == [signal.SIGTERM]
        assert signal.getsignal(signal.SIGTERM) is not driver.cb._on_signal
        end = driver.records()[-1]
        assert end["outcome"] == "aborted by signal SIGTERM" and end["status"] == "aborted"
        assert [s["name"] for s in end["steps"]] == ["preflight", "flag"]
        driver.finish()  # the recap after an abort writes nothing more
        assert len(driver.records()) == 3
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_signal_during_an_append_waits_for_it(driver):
    received = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    try:
        driver.start()
        session = driver.cb.session
        session.writing = True  # as if the signal arrived inside an append
        driver.cb._on_signal(signal.SIGTERM, None)
        assert session.pending is not None and received == [] and len(driver.records()) == 2
        session.writing = False
        session.facts({"note": "x"})
        session._write({"kind": "request", **session.head})  # the append finishing
        assert received == [signal.SIGTERM]
        assert driver.records()[-1]["outcome"] == "aborted by signal SIGTERM"
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_exit_without_recap_is_a_failure_with_an_error(driver):
    driver.start()
    driver.run_task("rollback_preflight : Start the stand-in preflight")
    driver.cb._at_exit()
    end = driver.records()[-1]
    assert end["outcome"] == "failed at preflight"
    assert "before its recap" in end["error"]
