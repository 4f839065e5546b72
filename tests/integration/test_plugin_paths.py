"""Both ways a runbook plugin runs give the same result: the action on the controller (in Ansible's
worker, ActionBase's public API) and the module through AnsiballZ (a task delegated to another host).

The delegated path is taken with tests/data/connection_plugins/local_as_remote.py, ansible-core's
`local` connection under another name: the action sees a connection that is not local, exactly as
for a bastion, and runs the module file's main() through AnsiballZ. Both paths honour check mode,
diff, no_log and the task's `environment:`; without `requests` both say which library is missing.
Every test runs on the pinned ansible-core and on the newest release for this Python
(tests/fixtures/ansible_core.py): what must hold on an ansible-core upgrade.
"""

from __future__ import annotations

import json
import os

import pytest
import yaml

from tests.fakes.fixtures import CANARY, ld_fake, status_fake  # noqa: F401 - fixtures
from tests.fixtures.runner import ROOT, run_playbook
from tests.fixtures.schema import LEGACY, VERSIONS

pytestmark = pytest.mark.integration
FLAG = "DataTransformationFeature"
PATHS = {"action": {}, "module": {"ansible_connection": "local_as_remote"}}
# Keys that measure time: they differ between any two runs.
VOLATILE = {
    "elapsed_seconds",
    "duration_seconds",
    "lock_wait_seconds",
    "advisory_lock_wait_seconds",
    "seconds",
    # moments (the flag confirmed, an instance confirmed or fetching its flags) and what is measured from them
    "confirmed_at",
    "last_refresh",
    "last_confirmed_after_flag_seconds",
}


def tasks_on_both_paths(tasks: list[dict]) -> list[dict]:
    """Each task twice, named `<path>: <name>`: once as the action, once delegated (the module)."""
    both = []
    for task in tasks:
        for path, task_vars in PATHS.items():
            copy = {**task, "name": f"{path}: {task['name']}", "ignore_errors": True}
            copy["vars"] = {**task.get("vars", {}), **task_vars}
            both.append(copy)
    return both


@pytest.fixture(params=["pinned", "newest"])
def core(request) -> dict:
    """The environment that selects the ansible-core: the project's venv, or the newest release's."""
    if request.param == "pinned":
        return {}
    bin_folder, _version = request.getfixturevalue("newest_ansible_core")
    return {"PATH": f"{bin_folder}{os.pathsep}{os.environ.get('PATH', '')}"}


def run(tmp_path, tasks, core, envvars=None):
    play = {
        "name": "plugin paths",
        "hosts": "localhost",
        "gather_facts": False,
        "vars": {"ansible_python_interpreter": "{{ ansible_playbook_python }}"},
        "tasks": tasks_on_both_paths(tasks),
    }
    playbook = tmp_path / "paths.yml"
    playbook.write_text(yaml.safe_dump([play], sort_keys=False))
    env = {"ANSIBLE_CONNECTION_PLUGINS": str(ROOT / "tests" / "data" / "connection_plugins"), **core, **(envvars or {})}
    outcome = run_playbook(str(playbook), tmp_path / "run", envvars=env)
    done = {}
    for event in outcome.events:
        if event["event"] in ("runner_on_ok", "runner_on_failed"):
            res = event["event_data"]["res"]
            done[event["event_data"]["task"]] = {**res, "failed": event["event"] == "runner_on_failed"}
    return outcome, done


def comparable(value):
    """The result without what differs between any two runs (timings, Ansible's internal keys)."""
    if isinstance(value, dict):
        return {k: comparable(v) for k, v in value.items() if k not in VOLATILE and not k.startswith("_ansible")}
    if isinstance(value, list):
        return [comparable(v) for v in value]
    return value


def assert_same(done: dict, name: str) -> dict:
    action, module = done[f"action: {name}"], done[f"module: {name}"]
    if "invocation" not in action:  # the arguments were refused before the plugin ran: nothing invoked
        assert action["failed"] and module["failed"]
        module = {k: v for k, v in module.items() if k != "invocation"}
    assert comparable(action) == comparable(module), name
    return action


def test_flag_plugins_give_the_same_result_on_both_paths(tmp_path, core, ld_fake, status_fake):  # noqa: F811
    flag = {"provider": "launchdarkly", "api_url": ld_fake.url, "flag": FLAG, "environment": "production"}
    status_url = status_fake.add("app-1", path="legacy")
    tasks = [
        # The key reaches the plugin through the task's environment only.
        {"name": "plan", "feature_flag": flag, "check_mode": True, "diff": True, "environment": {"FF_API_KEY": CANARY}},
        {"name": "wrong option", "feature_flag": {**flag, "colour": "red"}},
        {"name": "barrier", "flag_propagation": {"status_urls": [status_url], "timeout": 5}},
        {"name": "barrier config error", "flag_propagation": {"status_urls": [], "cache_ttl": 0}},
    ]
    outcome, done = run(tmp_path, tasks, core)
    plan = assert_same(done, "plan")
    assert not plan["failed"] and plan["changed"] and plan["previous_state"] == "enabled"
    assert plan["diff"]["after"] == {"state": "disabled"}
    assert ld_fake.is_on(FLAG)  # check mode wrote nothing, on either path
    wrong = assert_same(done, "wrong option")
    assert wrong["failed"] and "colour" in wrong["msg"]
    barrier = assert_same(done, "barrier")
    assert not barrier["failed"] and barrier["instances"][0]["path"] == "legacy"
    config = assert_same(done, "barrier config error")
    assert config["failed"] and config["msg"].startswith("Nothing to wait for")
    assert CANARY not in outcome.everything()


def test_the_disable_is_the_same_on_both_paths(tmp_path, core, ld_fake):  # noqa: F811
    flag = {"provider": "launchdarkly", "api_url": ld_fake.url, "flag": FLAG, "api_key": CANARY}
    tasks = [{"name": "disable", "feature_flag": flag, "no_log": False}]
    outcome, done = run(tmp_path, tasks, core)
    action, module = done["action: disable"], done["module: disable"]
    assert action["changed"] and not module["changed"]  # the second run found it off
    assert (action["state"], module["state"]) == ("disabled", "disabled")
    # The no_log option is masked in what each path reports of its arguments.
    for result in (action, module):
        assert result["invocation"]["module_args"]["api_key"] == "VALUE_SPECIFIED_IN_NO_LOG_PARAMETER"
    assert CANARY not in outcome.everything()


def test_schema_plugins_give_the_same_result_on_both_paths(tmp_path, core, app_db):
    database = {"script_location": str(VERSIONS.parent)}
    tasks = [
        {"name": "state", "schema_state": {**database, "dsn": app_db.dsn}},
        {
            "name": "plan",
            "schema_migration": {**database, "dsn": app_db.dsn, "revision": LEGACY, "run_id": "paths"},
            "check_mode": True,
        },
        {"name": "no target", "schema_migration": {**database, "dsn": app_db.dsn}},
        {
            "name": "many",
            "schema_state": {
                **database,
                "databases": [{"name": "a", "dsn": app_db.dsn}, {"name": "b", "dsn": app_db.dsn}],
            },
        },
    ]
    outcome, done = run(tmp_path, tasks, core)
    state = assert_same(done, "state")
    assert not state["failed"] and state["revision"] == "0002_data_transformation"
    plan = assert_same(done, "plan")
    assert plan["changed"] and plan["drops"] and app_db.revision() == "0002_data_transformation"
    assert assert_same(done, "no target")["msg"].startswith("missing required arguments: revision")
    assert [db["name"] for db in assert_same(done, "many")["databases"]] == ["a", "b"]
    assert app_db.cluster.password not in outcome.everything()


def test_without_requests_both_paths_name_the_missing_library(tmp_path, core, ld_fake):  # noqa: F811
    """The spec lives apart from the logic: the task is validated, then fails on the missing library,
    never with "Unsupported parameters", and the task's api_key is not echoed."""
    flag = {"provider": "launchdarkly", "api_url": ld_fake.url, "flag": FLAG, "api_key": CANARY}
    tasks = [
        {"name": "flag", "feature_flag": flag},
        {"name": "barrier", "flag_propagation": {"status_urls": ["http://127.0.0.1:9/status"]}},
    ]
    hidden = str(ROOT / "tests" / "data" / "no_requests")
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [hidden, os.environ.get("PYTHONPATH")]))}
    outcome, done = run(tmp_path, tasks, core, envvars=env)
    for name in ("flag", "barrier"):
        result = assert_same(done, name)
        assert result["failed"], result
        assert "Failed to import the required Python library (requests)" in result["msg"]
        assert "Unsupported parameters" not in json.dumps(result)
    assert ld_fake.is_on(FLAG) and not ld_fake.audit
    assert CANARY not in outcome.everything()
