"""The guard decides from the command line, the extra vars, the inventory and the environment alone.

Each attack of issue 12 §2 (and its neighbours) against the real inventory of inventories/: the
verdict refuses it with one sentence naming what to do, and records who, why, ticket and environment.
The playbook-level proof (non-zero exit, nothing contacted, the audit complete) is in
tests/integration/test_guard.py.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from ansible import context
from ansible.inventory.manager import InventoryManager
from ansible.module_utils import audit_guard as guard
from ansible.parsing.dataloader import DataLoader
from ansible.plugins.loader import init_plugin_loader
from ansible.utils import vars as ansible_vars
from ansible.utils.collection_loader import AnsibleCollectionConfig
from ansible.utils.context_objects import CLIArgs

ROOT = Path(__file__).resolve().parents[2]
INVENTORY = str(ROOT / "inventories")
PROD = {"env": "prod", "reason": "go/no-go failed", "ticket": "INC-1", "confirm": "prod"}
LOCAL = {"env": "local", "reason": "rehearsal"}
AWX_ENV = {"JOB_ID": "42", "AWX_HOST": "https://awx.example.com", "USER": "runner"}
CLI_DEFAULTS = {"tags": ("all",), "skip_tags": (), "subset": None, "check": False, "inventory": (INVENTORY,)}


@pytest.fixture(scope="module")
def inventory_loader():
    if AnsibleCollectionConfig.collection_finder is None:
        init_plugin_loader()
    return DataLoader()


def given(inventory_loader, extra_vars, environ=None, sources=(INVENTORY,), playbook="rollback", **cli):
    inventory = InventoryManager(loader=inventory_loader, sources=list(sources))
    groups = {name: [h.name for h in group.get_hosts()] for name, group in inventory.groups.items()}
    cliargs = {**CLI_DEFAULTS, **cli}
    if cliargs["subset"]:
        inventory.subset(cliargs["subset"])
    return guard.GuardInput(
        playbook=playbook,
        cliargs=cliargs,
        extra_vars=dict(extra_vars),
        groups=groups,
        hosts_in_limit=lambda pattern: [h.name for h in inventory.get_hosts(pattern)],
        environ={"USER": "alice"} if environ is None else environ,
        project_dir=str(ROOT),
        inventory_sources=list(sources),
    )


def refusal(inventory_loader, extra_vars, **kwargs) -> str:
    verdict = guard.check_request(given(inventory_loader, extra_vars, **kwargs))
    assert verdict.refusal is not None, verdict.request
    assert verdict.refusal.endswith("nothing was contacted and nothing was changed.")
    assert not re.search(r"\.\s+[A-Z]", verdict.refusal), "one sentence"
    return verdict.refusal


def test_a_sound_production_request_is_accepted_and_described(inventory_loader):
    verdict = guard.check_request(given(inventory_loader, PROD))
    assert verdict.refusal is None
    request = verdict.request
    assert request["environment"] == "prod" and request["production_like"] is True
    assert (request["reason"], request["ticket"]) == ("go/no-go failed", "INC-1")
    assert (request["operator"], request["operator_source"]) == ("alice", "os_user")
    assert request["targets"] == ["prod-eu", "prod-us"]
    assert request["tunables"] == {} and request["limit"] is None and request["job_url"] == ""


def test_production_like_is_group_membership(inventory_loader):
    assert guard.check_request(given(inventory_loader, {**PROD, "env": "staging", "confirm": "staging"})).request[
        "production_like"
    ]
    for env in ("local", "dev"):
        verdict = guard.check_request(given(inventory_loader, {"env": env, "reason": "x"}))
        assert verdict.refusal is None and verdict.request["production_like"] is False


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({**PROD, "rollback_prod_like": False}, "-e rollback_prod_like cannot be set on the command line: whether an"),
        ({**PROD, "rollback_schema_archive": False}, "-e rollback_schema_archive cannot be set on the command line"),
        ({**PROD, "rollback_preflight_identity": {}}, "-e rollback_preflight_identity cannot be set on the command"),
        ({**PROD, "rollback_flag_api_url": "http://evil"}, "the inventory or an earlier step of the runbook sets it"),
        ({**PROD, "ansible_connection": "ssh"}, "-e ansible_connection cannot be set on the command line: Ansible's"),
        ({**PROD, "groups": {}}, "-e groups is not an input of rollback.yml"),
        ({**PROD, "zzz": 1, "yyy": 2}, "-e yyy is not an input of rollback.yml (nor is zzz)"),
        ({**PROD, "rollback_verify_error_rate_tolerance": 1}, "-e rollback_verify_error_rate_tolerance is for"),
        ({**PROD, "rollback_migrations_version_locations": ["/tmp"]}, "is for rehearsals only: prod is production"),
        ({"reason": "x"}, "env is missing: give -e env=<one of dev, local, prod, staging>"),
        ({"env": "production_like", "reason": "x"}, "env=production_like is not an environment of the inventory"),
        ({"env": "all", "reason": "x"}, "env=all is not an environment"),
        ({"env": "prod", "reason": "  ", "ticket": "I", "confirm": "prod"}, "reason is empty: say why with -e reason="),
        (
            {"env": "prod", "reason": "x"},
            "prod is production-like: give the incident ticket and confirm the environment",
        ),
        ({**PROD, "confirm": "staging"}, "prod is production-like: give the incident ticket"),
        ({**PROD, "ticket": " "}, "prod is production-like: give the incident ticket"),
    ],
    ids=lambda v: v if isinstance(v, str) and len(v) < 30 else None,
)
def test_bad_extra_vars_are_refused(inventory_loader, extra, expected):
    assert expected in refusal(inventory_loader, extra)


@pytest.mark.parametrize(
    ("cli", "expected"),
    [
        ({"start_at_task": "Turn the flag off"}, "--start-at-task is refused: the rollback runs whole"),
        ({"step": True}, "--step is refused"),
        ({"tags": ("flag",)}, "--tags flag is refused"),
        ({"tags": ("all", "schema")}, "--tags schema is refused"),
        ({"skip_tags": ("never",)}, "--skip-tags never is refused"),
        ({"module_path": ["/tmp/evil"]}, "--module-path is refused"),
        ({"subset": "prod-us,localhost"}, "--limit prod-us,localhost leaves out prod-eu: the rollback acts on every"),
        ({"subset": "prod"}, "--limit prod leaves out localhost (where the request is checked)"),
        ({"subset": "all"}, "--limit all leaves out localhost"),
        ({"subset": "localhost,prod:!prod-eu"}, "leaves out prod-eu"),
        ({"subset": "localhost,~prod-u.*"}, "leaves out prod-eu"),
        ({"subset": "localhost"}, "leaves out prod-eu, prod-us"),
    ],
)
def test_command_line_options_that_skip_or_narrow_are_refused(inventory_loader, cli, expected):
    assert expected in refusal(inventory_loader, PROD, **cli)


@pytest.mark.parametrize("subset", ["prod,localhost", "localhost,prod-eu,prod-us", "all,localhost", "*,localhost"])
def test_a_limit_that_keeps_everything_is_accepted(inventory_loader, subset):
    verdict = guard.check_request(given(inventory_loader, PROD, subset=subset))
    assert verdict.refusal is None and verdict.request["limit"] == subset


def test_documented_tunables_and_awx_variables_are_accepted_and_recorded(inventory_loader):
    extra = {**PROD, "rollback_flag_max_wait": 60, "rollback_schema_lock_timeout": 0.5, "awx_user_name": "x"}
    verdict = guard.check_request(given(inventory_loader, extra))
    assert verdict.refusal is None
    assert verdict.request["tunables"] == {"rollback_flag_max_wait": 60, "rollback_schema_lock_timeout": 0.5}
    rehearsal = {
        **LOCAL,
        "rollback_migrations_version_locations": ["a", "b"],
        "rollback_verify_error_rate_tolerance": 1,
    }
    assert guard.check_request(given(inventory_loader, rehearsal)).refusal is None


def test_an_inventory_outside_the_project_is_refused_outside_awx(inventory_loader, tmp_path):
    outside = tmp_path / "hosts.yml"
    outside.write_text((ROOT / "inventories" / "hosts.yml").read_text().replace("production_like", "nothing_special"))
    text = refusal(inventory_loader, PROD, sources=(str(outside),))
    assert f"the inventory {outside} is outside the project" in text
    awx = {**PROD, "awx_job_id": 42, "awx_user_name": "alice"}
    text = refusal(inventory_loader, awx, sources=(str(outside),), environ=AWX_ENV)
    assert "the inventory has no group production_like" in text  # AWX's own inventory must say it too


def test_the_request_is_known_even_when_refused(inventory_loader):
    verdict = guard.check_request(given(inventory_loader, {**PROD, "confirm": "no"}, start_at_task="x"))
    assert verdict.refusal.startswith("--start-at-task is refused")
    assert verdict.request["environment"] == "prod" and verdict.request["reason"] == "go/no-go failed"
    assert verdict.request["ticket"] == "INC-1" and verdict.request["operator"] == "alice"


# -- who operates ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "environ", "expected"),
    [
        ({"awx_user_name": "x"}, {"USER": "bob"}, ("x", "extra_var")),
        ({"tower_user_name": "x", "tower_job_id": 7}, {"USER": "bob"}, ("x", "extra_var")),
        ({"awx_user_name": "x", "awx_job_id": 42}, {**AWX_ENV, "JOB_ID": "41"}, ("x", "extra_var")),
        ({"awx_user_name": "x", "awx_job_id": 42}, {"JOB_ID": "42", "USER": "bob"}, ("x", "extra_var")),
        ({"awx_user_name": "alice", "awx_job_id": 42}, AWX_ENV, ("alice", "awx")),
        ({"tower_user_name": "bob", "tower_job_id": 42}, {"JOB_ID": "42", "AWX_PRIVATE_DATA_DIR": "/"}, ("bob", "awx")),
        ({"operator": "carol", "awx_user_name": "x"}, {"USER": "bob"}, ("carol", "extra_var")),
        ({}, {"GITHUB_ACTOR": "gh", "USER": "bob"}, ("bob", "os_user")),
        ({}, {"GITHUB_ACTIONS": "true", "GITHUB_ACTOR": "gh", "GITHUB_TRIGGERING_ACTOR": "re"}, ("re", "github")),
        ({}, {"GITHUB_ACTIONS": "true", "GITHUB_ACTOR": "gh"}, ("gh", "github")),
        ({}, {"GITLAB_CI": "true", "GITLAB_USER_LOGIN": "gl", "USER": "bob"}, ("gl", "gitlab")),
        ({}, {"JENKINS_URL": "https://j", "BUILD_USER_ID": "jk", "USER": "bob"}, ("jk", "jenkins")),
        ({"operator": "carol"}, {"USER": "bob"}, ("carol", "extra_var")),
        ({}, {"USER": "bob"}, ("bob", "os_user")),
    ],
)  # fmt: skip
def test_the_operator_source_is_what_it_is(extra, environ, expected):
    who = guard.resolve_operator(extra, environ)
    assert (who["operator"], who["operator_source"]) == expected
    if expected[1] == "extra_var" and "operator" not in extra:
        assert "outside an AWX job" in who["operator_note"]


def test_job_url_of_each_system():
    awx = {"awx_job_id": 42, "rollback_awx_url": "https://awx.example.com/"}
    assert guard.job_url(awx, AWX_ENV) == "https://awx.example.com/#/jobs/playbook/42"
    assert guard.job_url({"awx_job_id": 42}, AWX_ENV) == "https://awx.example.com/#/jobs/playbook/42"
    assert guard.job_url(awx, {}) == ""
    assert guard.job_url({}, {"GITLAB_CI": "true", "CI_JOB_URL": "https://gl/j/1"}) == "https://gl/j/1"
    assert guard.job_url({}, {"JENKINS_URL": "x", "BUILD_URL": "https://j/1"}) == "https://j/1"
    github = {
        "GITHUB_ACTIONS": "true",
        "GITHUB_SERVER_URL": "https://gh",
        "GITHUB_REPOSITORY": "o/r",
        "GITHUB_RUN_ID": "9",
    }
    assert guard.job_url({}, github) == "https://gh/o/r/actions/runs/9"


# -- the allowlist, in one place --------------------------------------------------------------------


def test_every_role_variable_is_either_a_tunable_or_refused():
    """A new role default must be classified here: tunable from the command line, or internal."""
    defaults = set()
    for path in (ROOT / "roles").glob("*/defaults/main.yml"):
        defaults |= set(yaml.safe_load(path.read_text()) or {})
    tunable = set(guard.TUNABLES) | set(guard.REHEARSAL_TUNABLES)
    internal = {"rollback_schema_archive"} | {
        name for name in defaults if name.startswith("rollback_notify_") and name not in guard.TUNABLES
    }
    assert defaults - tunable == internal, "classify the new default in audit_guard.py and this test"
    assert not set(guard.INTERNAL) & set(guard.allowed("rollback"))


def test_docs_list_the_inputs_and_tunables():
    docs = (ROOT / "docs" / "interfaces.md").read_text()
    for name in (*guard.REQUEST_INPUTS["rollback"], *guard.TUNABLES, *guard.REHEARSAL_TUNABLES):
        assert f"`{name}`" in docs, name


def test_from_ansible_reads_the_command_line_through_public_api(monkeypatch, inventory_loader):
    monkeypatch.setattr(
        context,
        "CLIARGS",
        CLIArgs({**CLI_DEFAULTS, "extra_vars": ("env=prod reason=x ticket=I-1 confirm=prod", '{"operator": "o"}')}),
    )
    monkeypatch.setattr(ansible_vars.load_extra_vars, "extra_vars", None, raising=False)  # the CLI's cache
    built = guard.from_ansible("rollback", str(ROOT), environ={"USER": "u"})
    assert built.extra_vars == {"env": "prod", "reason": "x", "ticket": "I-1", "confirm": "prod", "operator": "o"}
    assert built.groups["production_like"] == ["staging-eu", "staging-us", "prod-eu", "prod-us"]
    verdict = guard.check_request(built)
    assert verdict.refusal is None and verdict.request["operator"] == "o"
