"""The flag_propagation module as AWX runs it, against a stand-in of the instances' /status."""

import pytest
import yaml

from tests.fakes.fixtures import status_fake  # noqa: F401 - fixture
from tests.fixtures.runner import run_playbook

pytestmark = pytest.mark.integration


def test_barrier_module_passes_fails_and_reports(status_fake, tmp_path):  # noqa: F811
    fast = status_fake.add("app-1", path="legacy")
    slow = status_fake.add("app-2")
    stuck = status_fake.add("app-3")
    status_fake.switch_after_polls("app-2", 3)  # "new" three times, then "legacy"
    tasks = [
        {"name": "check mode", "flag_propagation": {"status_urls": [fast, stuck], "timeout": 30}, "check_mode": True},
        {"name": "wait", "flag_propagation": {"status_urls": [fast, slow], "timeout": 20, "interval": 0.2}},
        {
            "name": "stuck",
            "flag_propagation": {"status_urls": [fast, stuck], "timeout": 1, "interval": 0.2},
            "ignore_errors": True,
        },
        {"name": "ttl only", "flag_propagation": {"cache_ttl": 0.5, "timeout": 5}},
        {"name": "nothing", "flag_propagation": {}, "ignore_errors": True},
    ]
    play = {
        "name": "barrier",
        "hosts": "localhost",
        "gather_facts": False,
        "vars": {"ansible_python_interpreter": "{{ ansible_playbook_python }}"},
        "tasks": tasks,
    }
    playbook = tmp_path / "barrier.yml"
    playbook.write_text(yaml.safe_dump([play], sort_keys=False))
    run = run_playbook(str(playbook), tmp_path / "run")
    done = {
        e["event_data"]["task"]: {**e["event_data"]["res"], "failed": e["event"] == "runner_on_failed"}
        for e in run.events
        if e["event"] in ("runner_on_ok", "runner_on_failed")
    }
    assert done["check mode"]["failed"] is False, run
    assert [i["path"] for i in done["check mode"]["instances"]] == ["legacy", "new"]
    assert done["wait"]["failed"] is False
    assert done["wait"]["changed"] is False
    assert done["wait"]["rounds"] == 4
    assert done["wait"]["elapsed_seconds"] >= 0.6  # three intervals of 0.2 s
    assert {i["path"] for i in done["wait"]["instances"]} == {"legacy"}
    assert done["stuck"]["failed"] is True
    assert "still on another path: app-3" in done["stuck"]["msg"]
    assert [i["path"] for i in done["stuck"]["instances"]] == ["legacy", "new"]
    assert done["ttl only"]["elapsed_seconds"] >= 0.5
    assert "Nothing to wait for" in done["nothing"]["msg"]
