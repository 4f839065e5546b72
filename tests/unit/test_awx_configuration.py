"""playbooks/awx_configure.yml and awx/vars/, tested without an AWX server.

There is no AWX here, so the tests prove everything that does not need one:
- every awx.awx task, rendered by Ansible's own templating for each of its loop items exactly as a
  run would render it, passes the real argument spec of the installed awx.awx module (read from the
  module's main()), so a misspelt option, a wrong type or an invalid choice fails here;
- every key of every controller_* item reaches its module (none is silently dropped);
- the credential types inject the secrets of docs/interfaces.md as environment variables only, with
  names AWX accepts, from secret fields;
- the job template is protected (one run at a time, no launch-time inventory, limit, tags,
  credentials or variables), only the Operations team may launch it, and AWX notifies on start,
  success and failure with messages that use only the job attributes AWX documents;
- the playbook really runs up to the network: it refuses missing settings and secrets before any
  request, and a task that carries a secret leaks nothing even when AWX cannot be reached.
What only a real AWX shows (the objects it creates, a launch, the survey form, the approval) is
listed in docs/awx.md.
"""

from __future__ import annotations

import copy
import importlib
import json
import os
import re
import socket
import subprocess
import sys
import warnings
from functools import cache
from pathlib import Path
from typing import Any
from unittest import mock

import jinja2
import jinja2.meta
import jinja2.sandbox
import pytest
import yaml
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible.parsing.dataloader import DataLoader
from ansible.plugins.loader import init_plugin_loader
from ansible.template import Templar, trust_as_template

# Ansible's collection loader, as in a playbook run: lookups (ansible.builtin.env) and filters need it,
# and awx.awx's modules are imported through it. Another test module may have set it up already.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", "AnsibleCollectionFinder has already been configured")
    init_plugin_loader()
from ansible_collections.awx.awx.plugins.module_utils.controller_api import ControllerModule

ROOT = Path(__file__).resolve().parents[2]
PLAYBOOK = ROOT / "playbooks" / "awx_configure.yml"
BIN = Path(sys.executable).parent
AWX = Path(importlib.import_module("ansible_collections.awx.awx").__path__[0])

# What the operator of the configuration passes on the command line in these tests.
EXTRA_VARS = {
    "aap_hostname": "awx.example.com",
    "rollback_awx_project_scm_url": "https://git.example.com/ops/emergency-rollback.git",
    "rollback_awx_approval_workflow": True,
}
# Canary secrets: the configuration reads them from its environment and must never print them.
SECRETS = {
    "FF_API_KEY": "canary-ff-3f9c1e",
    "PGPASSWORD": "canary-pg-77a2d0",
    "ROLLBACK_DB_DSN": "postgresql://migrator:canary-dsn-5b8e41@db.example.com/app",
    "ROLLBACK_AUDIT_PG_DSN": "postgresql://auditor:canary-audit-0d6f13@audit.example.com/audit",
    "ROLLBACK_DISCOVERY_TOKEN": "canary-discovery-8c3d5a",
    "SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T000/B000/canary-slack-c0ffee",
    "SMTP_USERNAME": "canary-smtp-user-6a0b",
    "SMTP_PASSWORD": "canary-smtp-pass-2f95",
    "PAGERDUTY_ROUTING_KEY": "canary-pagerduty-0b5e7c9d1a2f4e63",
    "AWX_SLACK_TOKEN": "xoxb-canary-slacktoken-91d7",
    "AWX_SMTP_PASSWORD": "canary-smtp-4e21aa",
}
# Environment variables AWX refuses in a credential type's env injector (awx/main/constants.py
# ENV_BLOCKLIST, and every ANSIBLE_* name: awx/main/fields.py validate_env_var_allowed).
AWX_ENV_BLOCKLIST = {
    "VIRTUAL_ENV", "PATH", "PYTHONPATH", "JOB_ID", "INVENTORY_ID", "INVENTORY_SOURCE_ID", "INVENTORY_UPDATE_ID",
    "AD_HOC_COMMAND_ID", "REST_API_URL", "REST_API_TOKEN", "MAX_EVENT_RES", "CALLBACK_QUEUE", "CALLBACK_CONNECTION",
    "CACHE", "JOB_CALLBACK_DEBUG", "INVENTORY_HOSTVARS", "AWX_HOST", "PROJECT_REVISION", "SUPERVISOR_CONFIG_PATH",
}  # fmt: skip
# The configuration of AWX's notification backends (init_parameters of awx/main/notifications/*).
AWX_NOTIFICATION_PARAMETERS = {
    "slack": {"token", "channels"},
    "email": {"host", "port", "username", "password", "use_tls", "use_ssl", "sender", "recipients", "timeout"},
}
# The names a custom notification message may use (AWX's "Supported Attributes for Custom
# Notifications"), and the job attributes among them that our messages use.
AWX_MESSAGE_NAMES = {
    "job", "url", "job_friendly_name", "job_metadata", "approval_node_name", "approval_status", "workflow_url",
}  # fmt: skip
AWX_JOB_ATTRIBUTES = {
    "allow_simultaneous", "awx_node", "created", "custom_virtualenv", "description", "diff_mode", "elapsed",
    "execution_node", "failed", "finished", "force_handlers", "forks", "id", "job_explanation", "job_slice_count",
    "job_slice_number", "job_tags", "job_type", "launch_type", "limit", "modified", "name", "playbook",
    "scm_revision", "skip_tags", "start_at_task", "started", "status", "timeout", "type", "url", "use_fact_cache",
    "verbosity", "host_status_counts", "summary_fields",
}  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Rendering the playbook's tasks as Ansible renders them, and the modules' real argument specs
# ---------------------------------------------------------------------------------------------


class _Captured(Exception):
    pass


@cache
def module_argument_spec(module: str) -> tuple[dict, dict]:
    """The argument spec that awx.awx.<module> builds in main(), with the shared auth options."""
    mod = importlib.import_module(f"ansible_collections.awx.awx.plugins.modules.{module}")
    captured: dict[str, Any] = {}

    def capture(argument_spec=None, **kwargs):
        captured.update(spec=argument_spec, kwargs=kwargs)
        raise _Captured

    with mock.patch.object(mod, "ControllerAPIModule", capture), pytest.raises(_Captured):
        mod.main()
    return {**ControllerModule.AUTH_ARGSPEC, **captured["spec"]}, captured["kwargs"]


@cache
def module_documentation(module: str) -> dict:
    source = (AWX / "plugins" / "modules" / f"{module}.py").read_text()
    match = re.search(r"^DOCUMENTATION\s*=\s*r?('''|\"\"\")(.*?)\1", source, re.S | re.M)
    return yaml.safe_load(match.group(2))


def doc_to_spec(options: dict) -> dict:
    """An argument spec from DOCUMENTATION options (for suboptions that main() leaves unchecked)."""
    spec = {}
    for name, doc in options.items():
        entry = {k: doc[k] for k in ("type", "elements", "choices", "required", "aliases") if k in doc}
        if "suboptions" in doc:
            entry["options"] = doc_to_spec(doc["suboptions"])
        spec[name] = entry
    return spec


def load_trusted(path: Path) -> Any:
    """Load YAML as ansible-playbook does: templates in our own files are trusted, !unsafe is not."""
    return DataLoader().load_from_file(str(path), trusted_as_template=True)


def play_variables(**overrides) -> dict:
    play = load_trusted(PLAYBOOK)[0]
    variables: dict[str, Any] = {}
    for vars_file in play["vars_files"]:
        variables.update(load_trusted(PLAYBOOK.parent / vars_file))
    variables.update(EXTRA_VARS)
    variables.update(overrides)
    return variables


def plain(value: Any) -> Any:
    """What a module receives: Ansible sends module arguments as JSON."""
    return json.loads(json.dumps(value))


def render(value: Any, variables: dict) -> Any:
    """Render as a playbook run does; a str given here is an expression of the test (trusted)."""
    if isinstance(value, str):
        value = trust_as_template(value)
    return plain(Templar(loader=DataLoader(), variables=variables).template(value))


def awx_tasks() -> list[dict]:
    play = load_trusted(PLAYBOOK)[0]
    return [task for task in play["pre_tasks"] + play["tasks"] if any(key.startswith("awx.awx.") for key in task)]


def task_module(task: dict) -> str:
    return next(key for key in task if key.startswith("awx.awx.")).removeprefix("awx.awx.")


def rendered_invocations(**overrides) -> list[tuple[dict, str, dict, dict]]:
    """(task, module, item, module arguments) for every loop item of every awx.awx task that runs."""
    return copy.deepcopy(_rendered_invocations(tuple(sorted(overrides.items()))))


@cache
def _rendered_invocations(overrides: tuple) -> list[tuple[dict, str, dict, dict]]:
    play = load_trusted(PLAYBOOK)[0]
    defaults = play["module_defaults"]["group/awx.awx.controller"]
    invocations = []
    with mock.patch.dict(os.environ, SECRETS):
        variables = play_variables(**dict(overrides))
        for task in awx_tasks():
            module = task_module(task)
            for item in render(task["loop"], variables):
                item_vars = {**variables, "item": item}
                if "when" in task and not render("{{ " + task["when"] + " }}", item_vars):
                    continue
                arguments = render({**defaults, **task[f"awx.awx.{module}"]}, item_vars)
                invocations.append((task, module, item, arguments))
    return invocations


def invocations_of(module: str) -> list[dict]:
    return [arguments for _, name, _, arguments in rendered_invocations() if name == module]


# ---------------------------------------------------------------------------------------------
# Every argument every task passes is accepted by the installed awx.awx
# ---------------------------------------------------------------------------------------------


def test_every_awx_task_passes_the_real_argument_spec_of_its_module():
    invocations = rendered_invocations()
    assert {module for _, module, _, _ in invocations} >= {
        "organization", "team", "credential_type", "credential", "execution_environment", "project", "inventory",
        "inventory_source", "inventory_source_update", "notification_template", "job_template",
        "workflow_job_template", "role",
    }  # fmt: skip
    for task, module, item, arguments in invocations:
        spec, kwargs = module_argument_spec(module)
        result = ArgumentSpecValidator(spec, **kwargs).validate(arguments)
        label = f"{task['name']} / {item.get('name', item)}"
        unsupported = result.unsupported_parameters
        assert not unsupported, f"{label}: awx.awx.{module} has no option {unsupported}"
        assert not result.error_messages, f"{label}: {result.error_messages}"


def test_workflow_nodes_pass_the_documented_suboptions():
    node_doc = module_documentation("workflow_job_template")["options"]["workflow_nodes"]["suboptions"]
    validator = ArgumentSpecValidator(doc_to_spec(node_doc))
    for arguments in invocations_of("workflow_job_template"):
        for node in arguments["workflow_nodes"]:
            result = validator.validate(node)
            assert not result.unsupported_parameters and not result.error_messages, (node, result.error_messages)


def test_every_key_of_every_item_reaches_its_module():
    """A key the task does not pass on (or passes under another name) would be silently ignored."""
    owners: dict[str, str] = {}  # the first task looping over a controller_* list builds its objects
    for task in awx_tasks():
        owners.setdefault(task["loop"], task["name"])
    for task, module, item, _ in rendered_invocations():
        arguments = task[f"awx.awx.{module}"]
        missing = set(item) - set(arguments) if owners[task["loop"]] == task["name"] else set()
        assert not missing, f"{task['name']}: item keys {sorted(missing)} are not passed to awx.awx.{module}"
        for option, template in arguments.items():
            for used in re.findall(r"\bitem\.(\w+)", str(template)):
                assert used == option, f"{task['name']}: option {option} takes item.{used}"


def test_module_defaults_apply_to_every_awx_module_used():
    runtime = yaml.safe_load((AWX / "meta" / "runtime.yml").read_text())
    group = set(runtime["action_groups"]["controller"])
    used = {task_module(task) for task in awx_tasks()}
    assert used <= group, f"not in group/awx.awx.controller, so no login defaults: {sorted(used - group)}"


def test_the_login_defaults_come_from_the_aap_variables_of_infra_aap_configuration():
    arguments = invocations_of("organization")[0]
    assert arguments["controller_host"] == "awx.example.com"
    assert arguments["validate_certs"] is True
    assert "controller_password" not in arguments and "controller_oauthtoken" not in arguments
    with mock.patch.dict(os.environ, {"CONTROLLER_HOST": "https://awx.corp.example"}):
        variables = play_variables()
        del variables["aap_hostname"]
        variables.update(load_trusted(ROOT / "awx" / "vars" / "settings.yml"))
        assert render("{{ aap_hostname }}", variables) == "https://awx.corp.example"


# ---------------------------------------------------------------------------------------------
# Credential types: secrets as environment variables, never extra vars
# ---------------------------------------------------------------------------------------------


def interface_secrets() -> set[str]:
    text = (ROOT / "docs" / "interfaces.md").read_text()
    return set(re.findall(r"^\| `([A-Z_]+)` \|[^\n]*\| yes", text, re.M))


def test_credential_types_inject_every_interface_secret_as_env_only():
    injected = set()
    for arguments in invocations_of("credential_type"):
        injectors, inputs = arguments["injectors"], arguments["inputs"]
        assert set(injectors) == {"env"}, f"{arguments['name']}: injects {sorted(injectors)}; only env is allowed"
        assert arguments["kind"] in {"cloud", "net"}, "AWX accepts custom credential types of kind cloud or net only"
        fields = {field["id"]: field for field in inputs["fields"]}
        assert set(inputs.get("required", [])) <= set(fields)
        for name, template in injectors["env"].items():
            assert re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", name)
            assert not name.startswith("ANSIBLE_") and name not in AWX_ENV_BLOCKLIST, f"AWX refuses to inject {name}"
            used = jinja2.meta.find_undeclared_variables(jinja2.sandbox.ImmutableSandboxedEnvironment().parse(template))
            assert used and used <= set(fields), f"{name} uses {sorted(used)}, fields are {sorted(fields)}"
            assert all(fields[field].get("secret") is True for field in used), f"{name} comes from a non-secret field"
            injected.add(name)
    assert interface_secrets() == {
        "FF_API_KEY",
        "PGPASSWORD",
        "ROLLBACK_DB_DSN",
        "ROLLBACK_DISCOVERY_TOKEN",
        "SLACK_WEBHOOK_URL",
        "SMTP_PASSWORD",
        "PAGERDUTY_ROUTING_KEY",
    }
    # ... and those the playbook's parts read from the environment beside them: the audit
    # callback's PostgreSQL copy and the SMTP login name.
    assert injected == interface_secrets() | {"ROLLBACK_AUDIT_PG_DSN", "SMTP_USERNAME"}
    assert "- name: ROLLBACK_AUDIT_PG_DSN" in (ROOT / "plugins" / "callback" / "rollback_audit.py").read_text()
    from ansible.module_utils.notify_options import ENV_FALLBACKS  # noqa: PLC0415 - what the notification plugin reads

    assert set(ENV_FALLBACKS.values()) == {
        "SMTP_USERNAME",
        "SMTP_PASSWORD",
        "SLACK_WEBHOOK_URL",
        "PAGERDUTY_ROUTING_KEY",
    }


def test_credentials_carry_the_configuration_environment_into_the_injected_environment():
    """FF_API_KEY in the configuration's environment comes out as FF_API_KEY in the job's."""
    types = {arguments["name"]: arguments for arguments in invocations_of("credential_type")}
    credentials = invocations_of("credential")
    assert {credential["credential_type"] for credential in credentials} == set(types)
    sandbox = jinja2.sandbox.ImmutableSandboxedEnvironment()  # what AWX renders injectors with
    for credential in credentials:
        credential_type = types[credential["credential_type"]]
        assert set(credential["inputs"]) == {field["id"] for field in credential_type["inputs"]["fields"]}
        assert credential["update_secrets"] is False, "a re-run must not overwrite a stored secret unless asked"
        for name, template in credential_type["injectors"]["env"].items():
            assert sandbox.from_string(template).render(**credential["inputs"]) == SECRETS[name]
    # An optional input left empty is injected as an empty string (AWX leaves it out of the
    # namespace): the rollback must read an empty ROLLBACK_DB_DSN / ROLLBACK_AUDIT_PG_DSN as unset.
    optional = [
        ("Rollback database", "ROLLBACK_DB_DSN", "dsn"),
        ("Rollback database", "ROLLBACK_AUDIT_PG_DSN", "audit_dsn"),
        ("Rollback e-mail", "SMTP_USERNAME", "smtp_username"),
        ("Rollback e-mail", "SMTP_PASSWORD", "smtp_password"),
    ]
    for type_name, name, field in optional:
        assert sandbox.from_string(types[type_name]["injectors"]["env"][name]).render() == ""
        assert field not in types[type_name]["inputs"]["required"]


def test_tasks_that_carry_secrets_hide_their_arguments():
    variables = play_variables()
    carrying = {task["name"] for task, _, _, arguments in rendered_invocations() if _secrets_in(json.dumps(arguments))}
    assert carrying == {"Ensure the credentials", "Ensure the notification templates"}
    for task in awx_tasks():
        if task["name"] in carrying:
            assert render(task.get("no_log", False), variables) is True, f"{task['name']} must be no_log"


def _secrets_in(text: str) -> list[str]:
    return [name for name, secret in SECRETS.items() if secret in text]


# ---------------------------------------------------------------------------------------------
# The job template, its permissions and notifications
# ---------------------------------------------------------------------------------------------


def job_template() -> dict:
    (template,) = invocations_of("job_template")
    return template


def test_job_template_is_the_protected_rollback_job():
    template = job_template()
    assert template["name"] == "Rollback-DataTransformation-Feature"
    assert template["playbook"] == "rollback.yml" and (ROOT / "rollback.yml").is_file()
    assert template["allow_simultaneous"] is False
    assert template["become_enabled"] is False
    assert template["survey_enabled"] is True and template["survey_spec"]["spec"]
    prompts = {name: value for name, value in template.items() if name.startswith("ask_")}
    assert prompts.pop("ask_job_type_on_launch") is True, "job_type check is the plan-only run"
    assert prompts and not any(prompts.values()), f"prompted on launch: {[k for k, v in prompts.items() if v]}"
    spec, _ = module_argument_spec("job_template")
    unset = {name for name in spec if name.startswith("ask_") and name not in template}
    assert not unset, f"every launch prompt must be set explicitly (AWX's default may change): {sorted(unset)}"


def test_job_template_uses_the_objects_the_configuration_creates():
    template = job_template()
    assert set(template["credentials"]) == {credential["name"] for credential in invocations_of("credential")}
    assert template["project"] in {project["name"] for project in invocations_of("project")}
    assert template["inventory"] in {inventory["name"] for inventory in invocations_of("inventory")}
    environments = {environment["name"] for environment in invocations_of("execution_environment")}
    assert template["execution_environment"] in environments
    (project,) = invocations_of("project")
    assert project["default_environment"] in environments
    assert project["allow_override"] is False, "no launch may run another branch"
    assert project["scm_update_on_launch"] is False, "a rollback must not depend on the Git server"
    (source,) = invocations_of("inventory_source")
    assert (source["source"], source["source_project"]) == ("scm", project["name"])
    assert (ROOT / source["source_path"]).is_file()


@pytest.mark.parametrize(
    ("aap_hostname", "expected"),
    [
        ("awx.example.com", "https://awx.example.com"),
        ("https://aap.example.com/", "https://aap.example.com"),
        ("http://127.0.0.1:8052", "http://127.0.0.1:8052"),
    ],
)
def test_job_template_hands_the_playbook_the_awx_address_for_its_job_link(aap_hostname, expected):
    """AWX injects awx_job_id but not its own address; the rollback builds the job's link from both."""
    invocations = rendered_invocations(aap_hostname=aap_hostname)
    (template,) = [arguments for _, module, _, arguments in invocations if module == "job_template"]
    assert template["extra_vars"] == {"rollback_awx_url": expected}
    preflight = "\n".join(path.read_text() for path in (ROOT / "roles" / "rollback_preflight").rglob("*.yml"))
    assert "rollback_awx_url" in preflight and "awx_job_id" in preflight, "the rollback no longer reads them"


def test_only_the_operations_team_may_launch():
    variables = play_variables()
    operations = render("{{ rollback_awx_operations_team }}", variables)
    grants = [(arguments["role"], arguments) for arguments in invocations_of("role")]
    on_template = [(role, arguments) for role, arguments in grants if arguments.get("job_templates")]
    assert [(role, arguments["team"], arguments["job_templates"]) for role, arguments in on_template] == [
        ("execute", operations, ["Rollback-DataTransformation-Feature"])
    ]
    for role, arguments in grants:
        assert "users" not in arguments and "user" not in arguments, "grant to teams, not to people"
        assert not arguments.get("credentials"), "launching needs no use of the credentials"
        if role == "execute":
            assert arguments["team"] == operations
    workflow_roles = {(role, arguments["team"]) for role, arguments in grants if arguments.get("workflows")}
    approvers = render("{{ rollback_awx_approvers_team }}", variables)
    assert workflow_roles == {("execute", operations), ("approval", approvers)}


def test_no_role_is_granted_without_the_approval_workflow():
    invocations = rendered_invocations(rollback_awx_approval_workflow=False)
    assert not [args for _, module, _, args in invocations if module == "workflow_job_template"]
    assert not [args for _, module, _, args in invocations if module == "role" and args.get("workflows")]


def test_notifications_on_start_success_and_failure_by_slack_and_email():
    template = job_template()
    notifications = {arguments["name"]: arguments for arguments in invocations_of("notification_template")}
    assert {arguments["notification_type"] for arguments in notifications.values()} == {"slack", "email"}
    for event in ("started", "success", "error"):
        assert set(template[f"notification_templates_{event}"]) == set(notifications), event
    for arguments in notifications.values():
        configuration = arguments["notification_configuration"]
        required = AWX_NOTIFICATION_PARAMETERS[arguments["notification_type"]]
        missing = required - set(configuration)
        assert not missing, f"{arguments['name']}: AWX requires {sorted(missing)}"
        if arguments["notification_type"] == "email":
            assert not (configuration["use_tls"] and configuration["use_ssl"])
            assert isinstance(configuration["port"], int) and configuration["recipients"]
            assert configuration["password"] == SECRETS["AWX_SMTP_PASSWORD"]
        else:
            assert configuration["token"] == SECRETS["AWX_SLACK_TOKEN"] and configuration["channels"]


def _message_templates(messages: dict) -> list[str]:
    found = []
    for value in messages.values():
        if isinstance(value, dict):
            found += _message_templates(value)
        else:
            found.append(value)
    return found


def test_notification_messages_use_only_what_awx_provides_and_render():
    (arguments, _) = invocations_of("notification_template")
    messages = arguments["messages"]
    assert set(messages) == {"started", "success", "error", "workflow_approval"}
    assert set(messages["workflow_approval"]) == {"running", "approved", "denied", "timed_out"}
    environment = jinja2.sandbox.ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined)
    context = {
        "job": {attribute: "x" for attribute in AWX_JOB_ATTRIBUTES}
        | {"id": 42, "summary_fields": {"created_by": {"username": "alice"}}},
        "url": "https://awx.example.com/#/jobs/playbook/42",
        "job_friendly_name": "Job",
        "job_metadata": "{}",
        "approval_node_name": "Approve the prod rollback",
        "approval_status": "approved",
        "workflow_url": "https://awx.example.com/#/jobs/workflow/41",
    }
    for template in _message_templates(messages):
        parsed = environment.parse(template)
        assert jinja2.meta.find_undeclared_variables(parsed) <= AWX_MESSAGE_NAMES, template
        for attribute in re.findall(r"\bjob\.(\w+)", template):
            assert attribute in AWX_JOB_ATTRIBUTES, f"job.{attribute} is not an attribute AWX provides"
        rendered = environment.from_string(template).render(**context)
        assert "{{" not in rendered and rendered.strip()
    for event in ("started", "success", "error"):
        assert "\n" not in messages[event]["message"], "a message (Slack text, e-mail subject) is one line"


def test_approval_workflow_puts_an_approval_before_the_prod_rollback():
    (workflow,) = invocations_of("workflow_job_template")
    nodes = {node["identifier"]: node for node in workflow["workflow_nodes"]}
    approval = [node for node in nodes.values() if node["unified_job_template"]["type"] == "workflow_approval"]
    assert len(approval) == 1 and approval[0]["unified_job_template"]["timeout"] > 0
    (rollback,) = [nodes[n["identifier"]] for n in approval[0]["related"]["success_nodes"]]
    assert rollback["unified_job_template"] == {
        "name": job_template()["name"],
        "type": "job_template",
        "organization": {"name": job_template()["organization"]},
    }
    roots = set(nodes) - {
        child["identifier"] for node in nodes.values() for edges in node.get("related", {}).values() for child in edges
    }
    assert roots == {approval[0]["identifier"]}, "the approval must be the only way into the workflow"
    assert workflow["extra_vars"] == {"env": "prod"} and workflow["ask_variables_on_launch"] is False
    assert workflow["allow_simultaneous"] is False
    assert set(workflow["notification_templates_approvals"]) == set(job_template()["notification_templates_error"])


# ---------------------------------------------------------------------------------------------
# The playbook itself: syntax, lint, and a real run up to the network
# ---------------------------------------------------------------------------------------------


def run_playbook(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in SECRETS and not k.startswith("CONTROLLER_")}
    return subprocess.run(
        [str(BIN / "ansible-playbook"), str(PLAYBOOK), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**base, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1", **env},
        timeout=240,
        check=False,
    )


def test_syntax_check():
    proc = run_playbook({}, "--syntax-check")
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.fixture
def closed_port() -> int:
    """A local port nothing listens on: AWX 'is down'."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


SCM = ("-e", "rollback_awx_project_scm_url=https://git.example.com/ops/emergency-rollback.git")


@pytest.mark.parametrize(
    "missing", ["FF_API_KEY", "PGPASSWORD", "SLACK_WEBHOOK_URL", "PAGERDUTY_ROUTING_KEY", "AWX_SLACK_TOKEN"]
)
def test_a_missing_secret_is_refused_before_any_request(missing, closed_port):
    env = {k: v for k, v in SECRETS.items() if k != missing} | {"CONTROLLER_HOST": f"http://127.0.0.1:{closed_port}"}
    proc = run_playbook(env, *SCM)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert f"{missing} is not set: export" in output and "nothing was changed" in output, output
    assert "Ensure the organization" not in output, "it must stop before the first request to AWX"
    assert not _secrets_in(output)


def test_missing_settings_are_refused_with_the_fix(closed_port):
    proc = run_playbook(dict(SECRETS))
    assert proc.returncode != 0
    assert "aap_hostname is empty: export CONTROLLER_HOST=" in proc.stdout, proc.stdout + proc.stderr
    proc = run_playbook({**SECRETS, "CONTROLLER_HOST": f"http://127.0.0.1:{closed_port}"})
    assert proc.returncode != 0
    assert "rollback_awx_project_scm_url is empty: pass -e rollback_awx_project_scm_url=" in proc.stdout
    assert "Ensure the organization" not in proc.stdout


def test_the_modules_accept_their_arguments_and_reach_for_awx(closed_port):
    """The real module runs (its argument check passes) and fails only because AWX is not there."""
    proc = run_playbook({**SECRETS, "CONTROLLER_HOST": f"http://127.0.0.1:{closed_port}"}, *SCM)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "TASK [Ensure the organization]" in output
    assert f"127.0.0.1:{closed_port}" in output and "Unsupported parameters" not in output, output


@pytest.mark.parametrize("task", ["Ensure the credentials", "Ensure the notification templates"])
def test_a_task_with_secrets_leaks_nothing_when_awx_fails(task, closed_port):
    env = {**SECRETS, "CONTROLLER_HOST": f"http://127.0.0.1:{closed_port}"}
    proc = run_playbook(env, *SCM, "--start-at-task", task, "-vvv")
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0 and f"TASK [{task}]" in output, output
    assert "censored" in output, output
    assert not _secrets_in(output), output
