"""Each hook of the rollback_audit callback, called the way the TaskQueueManager calls it.

The objects are Ansible's own: the test playbook of tests/data/audit loaded with Playbook.load, its
role tasks and handlers, Host, CallbackTaskResult and AggregateStats. Playbooks run end to end
(ansible-runner, signals, concurrency) in tests/integration/test_audit_callback.py.
"""

from __future__ import annotations

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
from ansible.module_utils.audit_chain import verify_file
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
NOTIFY_STATUS = "rollback_notify : Show the audit status the alert would carry"
FLAG_FAIL = "rollback_flag : Fail here when asked"
SCHEMA_RECORD = "rollback_schema : Record the revert of this database"
ENV_KEYS = ("ROLLBACK_AUDIT_FILE", "ROLLBACK_AUDIT_STATUS", "ROLLBACK_AUDIT_RUN_ID")


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
    callback_loader.add_directory(str(ROOT / "plugins" / "callback"))
    loader = DataLoader()
    playbook = Playbook.load(str(DATA / "rollback.yml"), variable_manager=VariableManager(loader=loader), loader=loader)
    play = playbook.get_plays()[0]
    tasks = {t.get_name(): t for t in walk(play.compile())}
    for role in play.get_roles():
        tasks.update({t.get_name(): t for t in walk(role.get_handler_blocks(play))})
    return playbook, play, tasks


class Driver:
    """Calls the hooks in the order and with the arguments the TaskQueueManager uses."""

    def __init__(self, loaded, path: Path, **options):
        self.playbook, self.play, self.tasks = loaded
        self.path = path
        self.cb = callback_loader.get("rollback_audit")
        self.cb.set_options(direct={"path": str(path), "only_playbooks": ["rollback.yml"], **options})
        self.stats = AggregateStats()
        self.hosts = {name: Host(name) for name in ("db-eu", "db-us")}

    def start(self):
        self.cb.v2_playbook_on_start(self.playbook)
        self.cb.v2_playbook_on_play_start(self.play)

    def task(self, name):
        task = self.tasks[name]
        if task.__class__.__name__ == "Handler":
            self.cb.v2_playbook_on_handler_task_start(task)
        else:
            self.cb.v2_playbook_on_task_start(task, False)
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

    def run_task(self, name, data=None, hook="ok", hosts=("db-eu", "db-us"), **kwargs):
        task = self.task(name)
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
    monkeypatch.setattr(context, "CLIARGS", CLIArgs({"check": False}))
    return Driver(loaded, tmp_path / "audit" / "audit.jsonl")


def preflight_stats(**extra):
    data = {"operator": "alice", "operator_source": "awx", "environment": "prod", "ticket": "INC-1", **extra}
    return {"changed": False, "ansible_stats": {"data": {"rollback_audit": data}, "per_host": False, "aggregate": True}}


def test_every_hook_has_ansibles_signature():
    load_plugins()
    cls = type(callback_loader.get("rollback_audit"))
    hooks = [name for name in vars(cls) if name.startswith("v2_")]
    assert len(hooks) >= 10
    for name in hooks:
        ours = inspect.signature(getattr(cls, name))
        base = inspect.signature(getattr(CallbackBase, name))
        assert [(p.name, p.kind, p.default) for p in ours.parameters.values()] == [
            (p.name, p.kind, p.default) for p in base.parameters.values()
        ], name


def test_start_record_and_environment(driver):
    driver.start()
    (start,) = driver.records()
    assert start["kind"] == "start" and start["status"] == "running" and start["seq"] == 1
    assert start["playbook"] == "rollback.yml" and start["check_mode"] is False
    assert {"user", "host", "pid", "pid_start", "ansible_version"} <= set(start["controller"])
    assert os.environ["ROLLBACK_AUDIT_STATUS"] == "ok"
    assert os.environ["ROLLBACK_AUDIT_RUN_ID"] == start["run_id"]
    assert os.environ["ROLLBACK_AUDIT_FILE"] == str(driver.path)
    assert oct(driver.path.stat().st_mode & 0o777) == "0o600"
    driver.finish()


def test_succeeding_run_end_record(driver):
    driver.start()
    driver.run_task("rollback_preflight : Refuse to start without a working audit log")
    driver.run_task(
        "rollback_preflight : Tell the audit who operates, and why",
        preflight_stats(reason=f"key {CANARY} leaked in the reason", api_token=CANARY, run_id="forged"),
        hosts=("db-eu",),
    )
    driver.run_task(
        "rollback_preflight : Send a no_log value to the audit (it must be dropped)",
        {"censored": "the output has been hidden", "changed": False},
        hosts=("db-eu",),
    )
    driver.run_task("rollback_preflight : Fail here when asked", {"skipped": True}, hook="skipped")
    flag = driver.tasks["rollback_flag : Record the flag switch"].copy(exclude_parent=False)
    flag.action = "feature_flag"
    driver.cb.v2_playbook_on_task_start(flag, False)
    driver.result(
        flag,
        "db-eu",
        {
            "changed": True,
            "provider": "unleash",
            "previous_state": "enabled",
            "state": "disabled",
            "change_reference": "evt-9",
            "attempts": 2,
            "api_key": CANARY,
            "invocation": {"module_args": {"api_key": CANARY}},
            "raw_response": {"secret": CANARY},
        },
    )
    schema = driver.tasks["rollback_schema : Record the revert of this database"].copy(exclude_parent=False)
    schema.action = "ansible.legacy.schema_migration"
    driver.cb.v2_playbook_on_task_start(schema, False)
    for host in ("db-eu", "db-us"):
        driver.result(
            schema,
            host,
            {
                "changed": True,
                "from_revision": "0002_data_transformation",
                "to_revision": "0001_legacy",
                "sql_sha256": "ab" * 32,
                "archive": "rollback_archive.x",
                "lock_wait_seconds": 0.5,
                "sql": "DROP TABLE transformation_jobs",
                "dsn": f"postgresql://u:{CANARY}@h/db",
            },
        )
    driver.run_task("rollback_schema : Schema reverted")
    driver.run_task(
        "rollback_notify : Show the audit status the alert would carry", {"changed": True}, hosts=("db-eu",)
    )
    driver.run_task("Summarise outside any role")
    driver.finish()

    start, end = driver.records()
    text = driver.path.read_text()
    assert CANARY not in text
    assert "DROP TABLE" not in text and "invocation" not in text and "raw_response" not in text
    assert end["kind"] == "end" and end["run_id"] == start["run_id"]
    assert end["outcome"] == "succeeded" and end["status"] == "completed"
    assert end["operator"] == "alice" and end["operator_source"] == "awx" and end["ticket"] == "INC-1"
    assert end["reason"] == f"key {MARK_SECRET} leaked in the reason"
    assert end["api_token"] == MARK_SECRET
    assert "leaked" not in end
    assert "set_stats key 'run_id' is reserved for the audit record: ignored" in end["audit_warnings"]
    assert end["flag"] == {
        "provider": "unleash",
        "previous_state": "enabled",
        "state": "disabled",
        "change_reference": "evt-9",
        "attempts": 2,
        "changed": True,
    }
    assert end["databases"]["db-us"] == {
        "changed": True,
        "from_revision": "0002_data_transformation",
        "to_revision": "0001_legacy",
        "sql_sha256": "ab" * 32,
        "archive": "rollback_archive.x",
        "lock_wait_seconds": 0.5,
    }
    steps = {s["name"]: s for s in end["steps"]}
    assert list(steps) == ["preflight", "flag", "schema", "notify", "Stand-in rollback"]
    assert steps["preflight"]["outcome"] == "ok" and steps["preflight"]["hosts"] == 2
    assert steps["flag"]["outcome"] == "changed" and steps["flag"]["hosts"] == 1
    assert steps["schema"]["outcome"] == "changed"
    assert all(s["duration_seconds"] >= 0 and s["started_at"] <= s["ended_at"] for s in end["steps"])
    assert end["recap"]["db-eu"]["failures"] == 0
    assert verify_file(str(driver.path)).summary() == "ok: 2 records, 1 runs, 0 aborted"


def test_failed_step_names_the_task_and_censors_no_log(driver):
    driver.start()
    driver.run_task("rollback_preflight : Refuse to start without a working audit log")
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
    outcomes = {s["name"]: s["outcome"] for s in end["steps"]}
    assert outcomes == {"flag": "ok", "schema": "rescued"}


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
    handler._role = None
    driver.cb.v2_playbook_on_handler_task_start(handler)
    driver.result(handler, "db-eu", {"changed": False})
    driver.finish()
    assert [s["name"] for s in driver.records()[-1]["steps"]] == ["notify"]


def test_loop_results_of_schema_migration_per_database(driver):
    driver.start()
    schema = driver.tasks["rollback_schema : Record the revert of this database"].copy(exclude_parent=False)
    schema.action = "schema_migration"
    driver.cb.v2_playbook_on_task_start(schema, False)
    databases = [
        {"name": "orders", "from_revision": "0002", "to_revision": "0001", "changed": True},
        {"name": "billing", "from_revision": "0001", "to_revision": "0001", "changed": False},
    ]
    driver.result(schema, "db-eu", {"changed": True, "databases": databases})
    driver.finish()
    assert driver.records()[-1]["databases"] == {
        "orders": {"from_revision": "0002", "to_revision": "0001", "changed": True},
        "billing": {"from_revision": "0001", "to_revision": "0001", "changed": False},
    }


def test_unwritable_audit_file_sets_the_error_status(driver, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a directory")
    driver.cb.set_options(direct={"path": str(blocker / "audit.jsonl"), "only_playbooks": ["rollback.yml"]})
    driver.start()
    status = os.environ["ROLLBACK_AUDIT_STATUS"]
    assert status.startswith("error: cannot create ") and str(blocker) in status
    driver.finish()
    assert "this run has no end record" in driver.cb._run.warnings[-1]


def test_file_broken_mid_run_sets_error_and_keeps_going(driver):
    driver.start()
    driver.run_task("rollback_preflight : Refuse to start without a working audit log")
    driver.path.unlink()
    driver.path.mkdir()
    driver.run_task("rollback_flag : Record the flag switch")
    assert os.environ["ROLLBACK_AUDIT_STATUS"].startswith("error: ")
    assert "is no longer a regular file" in os.environ["ROLLBACK_AUDIT_STATUS"]
    driver.finish()
    assert driver.cb._run.finished


def test_playbook_outside_only_playbooks_is_not_audited(driver, monkeypatch):
    monkeypatch.setenv("ROLLBACK_AUDIT_STATUS", "ok")  # a stale value from the caller's shell
    monkeypatch.setenv("ROLLBACK_AUDIT_RUN_ID", "stale")
    driver.cb.set_options(direct={"path": str(driver.path), "only_playbooks": ["deploy.yml"]})
    driver.start()
    driver.run_task("rollback_preflight : Refuse to start without a working audit log")
    driver.finish()
    assert not driver.path.exists()
    assert os.environ["ROLLBACK_AUDIT_STATUS"] == "off: rollback.yml is not audited (only_playbooks)"
    assert "ROLLBACK_AUDIT_RUN_ID" not in os.environ
    assert os.environ["ROLLBACK_AUDIT_FILE"] == str(driver.path)


def test_check_mode_is_recorded(driver, monkeypatch):
    monkeypatch.setattr(context, "CLIARGS", CLIArgs(ImmutableDict(check=True)))
    driver.start()
    driver.finish()
    assert [r["check_mode"] for r in driver.records()] == [True, True]


def test_sigterm_writes_the_end_record_then_calls_the_previous_handler(driver):
    received = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    try:
        driver.start()
        driver.run_task("rollback_preflight : Refuse to start without a working audit log")
        driver.task("rollback_flag : Wait like a slow flag API")
        os.kill(os.getpid(), signal.SIGTERM)
        assert received == [signal.SIGTERM]
        assert signal.getsignal(signal.SIGTERM) is not driver.cb._on_signal
        end = driver.records()[-1]
        assert end["outcome"] == "aborted by signal SIGTERM" and end["status"] == "aborted"
        assert [s["name"] for s in end["steps"]] == ["preflight", "flag"]
        driver.finish()  # the recap after an abort writes nothing more
        assert len(driver.records()) == 2
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_signal_during_an_append_waits_for_it(driver):
    received = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    try:
        driver.start()
        run = driver.cb._run
        run.writing = True  # as if the signal arrived inside append_record
        driver.cb._on_signal(signal.SIGTERM, None)
        assert run.pending_signal == signal.SIGTERM and received == [] and len(driver.records()) == 1
        run.writing = False
        driver.cb._write({"kind": "start", **run.head(), "status": "running"})  # the append finishing
        assert received == [signal.SIGTERM]
        assert driver.records()[-1]["outcome"] == "aborted by signal SIGTERM"
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_exit_without_recap_is_a_failure_with_an_error(driver):
    driver.start()
    driver.run_task("rollback_preflight : Refuse to start without a working audit log")
    driver.cb._at_exit()
    end = driver.records()[-1]
    assert end["outcome"] == "failed at preflight"
    assert "before its recap" in end["error"]
