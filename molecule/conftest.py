"""Fixtures of the scenarios' testinfra verifiers (molecule/<scenario>/tests/), shared through this conftest.

Molecule runs `pytest --connection=ansible --ansible-inventory=<its inventory>` in the scenario's
folder with MOLECULE_SCENARIO_NAME set. The tests read the real services (the database as the
migration role, Unleash's admin API, the app instances' /status and /healthz, the sinks' files, the
audit file) and the drill's record of what it did (.run/molecule/<scenario>/state.json). At the end
the verifier's outcome is added to the scenario's results file.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "resources"))

from drills import context, results
from drills.context import Scenario
from drills.runner import audit_records

_STARTED = time.time()


def _scenario_name() -> str:
    name = os.environ.get("MOLECULE_SCENARIO_NAME")
    if not name:
        pytest.exit("run the verifiers through molecule (MOLECULE_SCENARIO_NAME is not set)", returncode=2)
    return name


@pytest.fixture(scope="session")
def scenario() -> Scenario:
    return Scenario(_scenario_name())


@pytest.fixture(scope="session")
def state(scenario) -> dict:
    return scenario.state


@pytest.fixture(scope="session")
def runs(state) -> dict[str, dict]:
    """The scenario's rollback runs by label, in the order they ran."""
    return {run["label"]: run for run in state["runs"]}


@pytest.fixture(scope="session")
def stack():
    return context.stack()


@pytest.fixture(scope="session")
def audit(scenario) -> list[dict]:
    return audit_records(scenario.audit_file)


@pytest.fixture(scope="session")
def flag_enabled(stack):
    """The flag's state read back from Unleash's admin API now."""
    return lambda: stack.unleash.flag_enabled(context.FLAG, "default", "production")


@pytest.fixture
def audit_verify(host, scenario):
    """Run playbooks/audit_verify.yml on the scenario's audit file, as an auditor would; its report line."""

    def run() -> str:
        command = host.run(
            "cd %s && ROLLBACK_AUDIT_KEY=%s ANSIBLE_CONFIG=ansible.cfg ANSIBLE_FORCE_COLOR=0 ANSIBLE_NOCOLOR=1"
            " %s/ansible-playbook playbooks/audit_verify.yml -e audit_file=%s",
            str(context.ROOT),
            context.audit_key(scenario.audit_file),
            str(context.VENV_BIN),
            str(scenario.audit_file),
        )
        assert command.rc == 0, command.stdout + command.stderr
        found = [line for line in command.stdout.splitlines() if f"{scenario.audit_file}: " in line]
        assert found, command.stdout
        return found[0].split(f"{scenario.audit_file}: ", 1)[1].strip().strip('"')

    return run


def pytest_sessionfinish(session, exitstatus):
    name = os.environ.get("MOLECULE_SCENARIO_NAME")
    if not name or not Scenario(name).state_file.exists():
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    failed = len(reporter.stats.get("failed", [])) + len(reporter.stats.get("error", [])) if reporter else None
    passed = len(reporter.stats.get("passed", [])) if reporter else None
    results.write(
        Scenario(name),
        verify={
            "passed": exitstatus == 0,
            "tests": passed,
            "failed": failed,
            "seconds": round(time.time() - _STARTED, 2),
            "finished_at": context.utc_now(),
        },
    )
