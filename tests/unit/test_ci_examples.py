"""The CI examples: one protected, manual job that runs the same playbook, safely.

- Both files pass the vendors' JSON schemas (check-jsonschema's vendored GitHub workflow and
  GitLab CI schemas; actionlint cannot be installed here), and a broken copy fails them.
- Their inputs are the rollback's argument_specs inputs, the same as the AWX survey's.
- No input is expanded into a script (GitHub script injection); secrets reach only `env:`.
- ci-examples/extra_vars.py, which both jobs run, hands any text to Ansible untouched: a reason
  containing a Jinja payload or quotes arrives verbatim and is never evaluated (a real
  ansible-playbook run proves it).
Only a real GitHub/GitLab shows the reviewers' gate, the environment secrets and the runner.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from ansible_builder import constants as builder_constants

from tests.unit.test_awx_survey import CHOICES_NOT_IN_SURVEY, NOT_IN_SURVEY, spec_options

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
GITHUB = ROOT / "ci-examples" / "github" / "rollback.yml"
GITLAB = ROOT / "ci-examples" / "gitlab" / "rollback.gitlab-ci.yml"
EXTRA_VARS = ROOT / "ci-examples" / "extra_vars.py"

_spec = importlib.util.spec_from_file_location("ci_extra_vars", EXTRA_VARS)
extra_vars_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(extra_vars_module)


def load(path: Path) -> dict:
    # PyYAML (YAML 1.1) reads the key `on` as True; the workflow means the string.
    data = yaml.safe_load(path.read_text())
    if True in data:
        data["on"] = data.pop(True)
    return data


def surveyed_inputs() -> dict[str, dict]:
    return {name: option for name, option in spec_options().items() if name not in NOT_IN_SURVEY}


def check_schema(schema: str, path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "check-jsonschema"), "--builtin-schema", schema, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    ("schema", "path", "breakage"),
    [
        ("vendor.github-workflows", GITHUB, ("runs-on:", "runs_on:")),
        ("vendor.gitlab-ci", GITLAB, ("  when: manual", "  when: by-hand")),
    ],
    ids=["github", "gitlab"],
)
def test_the_examples_pass_their_vendor_schema_and_a_broken_copy_does_not(schema, path, breakage, tmp_path):
    proc = check_schema(schema, path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    broken = tmp_path / path.name
    old, new = breakage
    assert old in path.read_text()
    broken.write_text(path.read_text().replace(old, new, 1))
    assert check_schema(schema, broken).returncode != 0, "the schema check would not notice a broken file"


def test_github_inputs_are_the_rollback_inputs():
    inputs = load(GITHUB)["on"]["workflow_dispatch"]["inputs"]
    expected = surveyed_inputs()
    assert set(inputs) == set(expected)
    for name, option in expected.items():
        assert inputs[name]["required"] is bool(option.get("required")), name
        if "choices" in option:
            choices = [c for c in option["choices"] if c not in CHOICES_NOT_IN_SURVEY.get(name, set())]
            assert (inputs[name]["type"], inputs[name]["options"]) == ("choice", choices), name
        else:
            assert inputs[name]["type"] == "string", name
        if not option.get("required"):
            assert inputs[name]["default"] == option.get("default", ""), name


def test_gitlab_variables_are_the_rollback_inputs():
    variables = load(GITLAB)["variables"]
    expected = surveyed_inputs()
    assert set(variables) == {f"ROLLBACK_INPUT_{name.upper()}" for name in expected}
    for name, option in expected.items():
        variable = variables[f"ROLLBACK_INPUT_{name.upper()}"]
        if "choices" in option:
            choices = [c for c in option["choices"] if c not in CHOICES_NOT_IN_SURVEY.get(name, set())]
            assert variable["options"] == choices and variable["value"] in choices, name
        else:
            assert variable["value"] == option.get("default", ""), name


def test_extra_vars_maps_every_input():
    assert set(extra_vars_module.INPUTS) == set(surveyed_inputs())
    for variable, name in extra_vars_module.INPUTS.items():
        assert name == f"ROLLBACK_INPUT_{variable.upper()}"
    github_env = load(GITHUB)["jobs"]["rollback"]["env"]
    assert set(extra_vars_module.INPUTS.values()) <= set(github_env)
    assert set(extra_vars_module.INPUTS.values()) <= set(load(GITLAB)["variables"])


def github_steps() -> list[dict]:
    return load(GITHUB)["jobs"]["rollback"]["steps"]


def test_github_job_is_protected_manual_and_serialised():
    workflow = load(GITHUB)
    assert set(workflow["on"]) == {"workflow_dispatch"}, "only a person may start a rollback"
    assert workflow["permissions"] == {"contents": "read"}
    assert workflow["concurrency"] == {"group": "rollback-${{ inputs.env }}", "cancel-in-progress": False}
    (job,) = workflow["jobs"].values()
    assert job["environment"] == "${{ inputs.env }}", "the environment's reviewers and secrets apply"
    assert job["container"]["image"] == "${{ vars.ROLLBACK_EE_IMAGE }}"
    runs = [step["run"] for step in github_steps() if "run" in step]
    assert any("ansible-playbook rollback.yml" in run for run in runs)


def test_gitlab_job_is_protected_manual_and_serialised():
    job = load(GITLAB)["emergency-rollback"]
    assert [rule["when"] for rule in job["rules"]] == ["manual"]
    assert '$CI_PIPELINE_SOURCE == "web"' in job["rules"][0]["if"]
    assert job["environment"]["name"] == "$ROLLBACK_INPUT_ENV"
    assert job["resource_group"] == "rollback-$ROLLBACK_INPUT_ENV"
    assert job["allow_failure"] is False and job["image"] == "$ROLLBACK_EE_IMAGE"
    assert any("ansible-playbook rollback.yml" in line for line in job["script"])


def test_no_expression_is_expanded_inside_a_github_script():
    """${{ }} in run: is pasted into the shell script before it runs: script injection."""
    for step in github_steps():
        assert "${{" not in step.get("run", ""), f"step {step['name']!r} expands an expression in its script"
    text = GITHUB.read_text()
    assert text.count("run: |") == sum(1 for step in github_steps() if "run" in step), "every run: is parsed"


def test_no_input_reaches_a_command_line():
    """Inputs are read by extra_vars.py from the environment only, never by the shell of the job."""
    scripts = [step["run"] for step in github_steps() if "run" in step] + load(GITLAB)["emergency-rollback"]["script"]
    for script in scripts:
        assert "ROLLBACK_INPUT_" not in script and "inputs." not in script, script


def test_secrets_reach_only_env():
    workflow = load(GITHUB)
    found = []

    def walk(node, path):
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, [*path, str(key)])
        elif isinstance(node, list):
            for index, value in enumerate(node):
                walk(value, [*path, str(index)])
        elif isinstance(node, str) and "secrets." in node:
            found.append(path)
            assert path[-2] == "env" and re.fullmatch(r"\$\{\{ secrets\.[A-Z_]+ \}\}", node), (path, node)

    walk(workflow, [])
    names = {path[-1] for path in found}
    assert names == {
        "FF_API_KEY", "PGPASSWORD", "SLACK_WEBHOOK_URL", "ROLLBACK_AUDIT_PG_DSN", "SMTP_USERNAME", "SMTP_PASSWORD",
        "PAGERDUTY_ROUTING_KEY",
    }  # fmt: skip
    gitlab = load(GITLAB)["emergency-rollback"]
    for name in names:  # GitLab puts masked CI/CD variables in the environment; the file names none
        assert name not in yaml.safe_dump(gitlab), name


def test_operator_identity_and_job_link_are_what_the_ci_system_sets_and_the_playbook_reads():
    preflight = "\n".join(path.read_text() for path in (ROOT / "roles" / "rollback_preflight").rglob("*.yml"))
    for name in ("GITHUB_ACTOR", "GITLAB_USER_LOGIN", "GITHUB_RUN_ID", "CI_JOB_URL"):
        assert name in preflight, f"the rollback no longer reads {name}, which the CI examples rely on"
    # Actions and GitLab set these themselves; a job that set them could forge the operator.
    assert "GITHUB_ACTOR" not in yaml.safe_dump(load(GITHUB)["jobs"]["rollback"].get("env", {}))
    assert "GITLAB_USER_LOGIN" not in GITLAB.read_text().split("Who started the job")[1].split("\n", 1)[1]


def test_the_jobs_find_the_execution_environment_collections():
    path = builder_constants.base_collections_path.rstrip("/")
    assert load(GITHUB)["jobs"]["rollback"]["env"]["ANSIBLE_COLLECTIONS_PATH"] == path
    assert load(GITLAB)["emergency-rollback"]["variables"]["ANSIBLE_COLLECTIONS_PATH"] == path


HOSTILE = {
    "ROLLBACK_INPUT_ENV": "prod",
    "ROLLBACK_INPUT_REASON": (
        "5xx at 40% after cutover; \"quoted\" 'single' {{ lookup('ansible.builtin.pipe', 'touch PWNED') }}"
        " {% raw %}x{% endraw %} key=value $(touch PWNED2) `id` \\ back\\slash\nsecond line \u00e9\u2028 \U0001f525"
    ),
    "ROLLBACK_INPUT_TICKET": "INC-123",
    "ROLLBACK_INPUT_CONFIRM": "prod",
}

PROBE = """\
- name: Show what the rollback would receive
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Write the received values, and use them in templates as the roles do
      ansible.builtin.copy:
        content: "{{ {'env': env, 'reason': reason, 'ticket': ticket, 'confirm': confirm,
                      'in_a_template': 'why: ' ~ reason} | to_json }}"
        dest: "{{ playbook_dir }}/received.json"
        mode: "0600"
"""


def test_hostile_inputs_arrive_verbatim_and_are_never_evaluated(tmp_path):
    """Run the job's own first command, then a real ansible-playbook with the file it wrote."""
    (script,) = [step["run"] for step in github_steps() if "extra_vars.py" in step.get("run", "")]
    first_line = script.splitlines()[0]
    env = {**os.environ, **HOSTILE, "RUNNER_TEMP": str(tmp_path)}
    subprocess.run(["bash", "-ec", first_line], cwd=ROOT, env=env, check=True, timeout=60)
    vars_file = tmp_path / "rollback-vars.yml"
    assert vars_file.read_text().isascii()
    (tmp_path / "probe.yml").write_text(PROBE)
    (tmp_path / "ansible.cfg").write_text("[defaults]\n")
    proc = subprocess.run(
        [str(BIN / "ansible-playbook"), "probe.yml", "-i", "localhost,", "-c", "local", "-e", f"@{vars_file}"],
        cwd=tmp_path,
        env={**env, "ANSIBLE_CONFIG": str(tmp_path / "ansible.cfg"), "ANSIBLE_PYTHON_INTERPRETER": sys.executable},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    received = json.loads((tmp_path / "received.json").read_text())
    for variable, name in extra_vars_module.INPUTS.items():
        assert received[variable] == HOSTILE[name], variable
    assert received["in_a_template"] == "why: " + HOSTILE["ROLLBACK_INPUT_REASON"]
    assert not list(tmp_path.glob("PWNED*")) and not list(ROOT.glob("PWNED*")), "an input was executed"


def test_missing_inputs_become_empty_strings_the_playbook_refuses():
    text = extra_vars_module.extra_vars({})
    assert yaml.safe_load(text.replace("!unsafe ", "")) == dict.fromkeys(extra_vars_module.INPUTS, "")
