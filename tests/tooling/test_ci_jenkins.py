"""ci-examples/jenkins/Jenkinsfile, checked without a Jenkins server.

- Groovy's own compiler (Debian's groovy 2.4.21, the Groovy Jenkins runs Pipelines with) compiles
  it, and fails a broken copy; its syntax tree is what the other checks read (jenkinsfile_ast.groovy).
- Its shape follows the Declarative Pipeline syntax (sections and directives where the syntax
  reference allows them), and a copy with a misplaced directive fails that check.
- Its parameters are the rollback's inputs, as for the AWX survey and the other CI examples.
- It is protected: one build at a time, no restart from a stage, a lock per environment, an
  approval by the approvers group for every production-like environment, no self-approval, a person
  as the operator (never a replay, a restart, a timer or a trigger token).
- Secrets reach only environment variables, through withCredentials; Groovy interpolates nothing
  into the shell script, which shellcheck passes.
- The shell script Jenkins would run (the string as Groovy reads it, escapes processed), run with
  `sh -xe` as Jenkins runs it and a real ansible-playbook, hands hostile inputs to Ansible verbatim
  and unevaluated, and prints no secret.
Only a real Jenkins shows the plugins' validation of the file, the approval form, the lock, the
credentials and the agent.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tests.unit.test_awx_survey import CHOICES_NOT_IN_SURVEY, NOT_IN_SURVEY, spec_options

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
JENKINSFILE = ROOT / "ci-examples" / "jenkins" / "Jenkinsfile"
AST_SCRIPT = Path(__file__).with_name("jenkinsfile_ast.groovy")
EXTRA_VARS = ROOT / "ci-examples" / "extra_vars.py"
SECRETS = {
    "FF_API_KEY",
    "PGPASSWORD",
    "SLACK_WEBHOOK_URL",
    "ROLLBACK_AUDIT_PG_DSN",
    "SMTP_USERNAME",
    "SMTP_PASSWORD",
    "PAGERDUTY_ROUTING_KEY",
}
REQUIRED_SECRETS = {"FF_API_KEY", "PGPASSWORD"}


def tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is not installed: run `make setup` (it installs Debian's groovy and shellcheck)"
    return path


def parse(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [tool("groovy"), str(AST_SCRIPT), str(path)], capture_output=True, text=True, timeout=120, check=False
    )


@functools.cache
def tree() -> dict:
    proc = parse(JENKINSFILE)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def calls(nodes, name: str | None = None) -> list[dict]:
    """Every call in the tree (depth first), or those named `name`."""
    found = []

    def walk(node):
        if isinstance(node, list):
            for item in node:
                walk(item)
        elif isinstance(node, dict):
            if "call" in node and (name is None or node["call"] == name):
                found.append(node)
            for value in node.values():
                walk(value)

    walk(nodes)
    return found


def child(node: dict, name: str) -> dict:
    (found,) = [item for item in node.get("body", []) if isinstance(item, dict) and item.get("call") == name]
    return found


def children(node: dict) -> list[dict]:
    return [item for item in node.get("body", []) if isinstance(item, dict) and "call" in item]


def pipeline() -> dict:
    (found,) = [node for node in tree()["statements"] if isinstance(node, dict) and node.get("call") == "pipeline"]
    return found


def stages() -> dict[str, dict]:
    return {stage["args"][0]: stage for stage in children(child(pipeline(), "stages"))}


# --- compiles, and follows the declarative syntax ----------------------------------------------


def test_groovy_compiles_the_jenkinsfile_and_a_broken_copy_fails(tmp_path):
    assert pipeline()["call"] == "pipeline"
    broken = tmp_path / "Jenkinsfile"
    text = JENKINSFILE.read_text()
    broken.write_text(text[: text.rindex("}")])  # the pipeline's closing brace
    proc = parse(broken)
    assert proc.returncode == 1 and "expecting '}'" in proc.stderr, proc.stdout + proc.stderr


# Where each section and directive may appear, from the Pipeline Syntax reference
# (https://www.jenkins.io/doc/book/pipeline/syntax/): "Declarative Sections" and "Directives".
PIPELINE_ALLOWED = {"agent", "environment", "options", "parameters", "triggers", "tools", "stages", "post", "libraries"}
STAGE_ALLOWED = {
    "agent", "environment", "tools", "input", "when", "options", "post", "steps", "stages", "parallel", "matrix",
}  # fmt: skip
INPUT_ALLOWED = {"message", "id", "ok", "submitter", "submitterParameter", "parameters"}
WHEN_BUILT_IN = {
    "branch", "buildingTag", "changelog", "changeset", "changeRequest", "environment", "equals", "expression",
    "tag", "not", "allOf", "anyOf", "triggeredBy", "beforeAgent", "beforeInput", "beforeOptions",
}  # fmt: skip
# Pipeline options the reference lists, plus the plugins' the file documents (lock: Lockable Resources).
PIPELINE_OPTIONS = {
    "buildDiscarder", "checkoutToSubdirectory", "disableConcurrentBuilds", "disableResume", "disableRestartFromStage",
    "newContainerPerStage", "overrideIndexTriggers", "preserveStashes", "quietPeriod", "retry", "skipDefaultCheckout",
    "skipStagesAfterUnstable", "timeout", "timestamps", "parallelsAlwaysFailFast", "lock",
}  # fmt: skip
STAGE_OPTIONS = {"skipDefaultCheckout", "timeout", "retry", "timestamps", "lock"}
POST_CONDITIONS = {"always", "changed", "fixed", "regression", "aborted", "failure", "success", "unstable",
                   "unsuccessful", "cleanup"}  # fmt: skip


def declarative_problems(root: dict) -> list[str]:
    """What Jenkins' declarative validator would reject, for the parts of the syntax this file uses."""
    problems = []
    top = [node["call"] for node in children(root)]
    problems += [f"pipeline: {name} is not a section or directive" for name in set(top) - PIPELINE_ALLOWED]
    problems += [f"pipeline: {name} appears twice" for name in set(top) if top.count(name) > 1]
    if "agent" not in top or "stages" not in top:
        problems.append("pipeline: agent and stages are required")
    problems += [f"pipeline option {o['call']}" for o in children(child(root, "options"))
                 if o["call"] not in PIPELINE_OPTIONS]  # fmt: skip
    for stage in children(child(root, "stages")):
        name = stage["call"] == "stage" and stage["args"] and stage["args"][0]
        if not name:
            problems.append("stages: only stage('name') { ... } blocks")
            continue
        sections = [node["call"] for node in children(stage)]
        problems += [f"stage {name}: {s} is not allowed in a stage" for s in set(sections) - STAGE_ALLOWED]
        problems += [f"stage {name}: {s} appears twice" for s in set(sections) if sections.count(s) > 1]
        if sum(sections.count(s) for s in ("steps", "stages", "parallel", "matrix")) != 1:
            problems.append(f"stage {name}: exactly one of steps, stages, parallel, matrix")
        for section in children(stage):
            kind = section["call"]
            if kind == "input":
                problems += [f"stage {name}: input {i['call']}" for i in children(section)
                             if i["call"] not in INPUT_ALLOWED]  # fmt: skip
                if "message" not in [i["call"] for i in children(section)]:
                    problems.append(f"stage {name}: input needs a message")
            elif kind == "when":
                problems += [f"stage {name}: when {w['call']}" for w in children(section)
                             if w["call"] not in WHEN_BUILT_IN]  # fmt: skip
            elif kind == "options":
                problems += [f"stage {name}: option {o['call']}" for o in children(section)
                             if o["call"] not in STAGE_OPTIONS]  # fmt: skip
            elif kind == "post":
                problems += [f"stage {name}: post {p['call']}" for p in children(section)
                             if p["call"] not in POST_CONDITIONS]  # fmt: skip
            elif kind == "environment":
                problems += [f"stage {name}: environment takes NAME = value only" for item in section.get("body", [])
                             if not (isinstance(item, dict) and "assign" in item)]  # fmt: skip
    return problems


def test_the_pipeline_follows_the_declarative_syntax_and_a_misplaced_directive_fails(tmp_path):
    assert declarative_problems(pipeline()) == []
    broken = tmp_path / "Jenkinsfile"
    misplaced = "            steps {\n}\n            inputs {"
    broken.write_text(JENKINSFILE.read_text().replace("            input {", misplaced, 1))
    proc = parse(broken)
    assert proc.returncode == 0, proc.stderr
    (root,) = [node for node in json.loads(proc.stdout)["statements"] if node.get("call") == "pipeline"]
    problems = declarative_problems(root)
    assert "stage Approval: inputs is not allowed in a stage" in problems, problems
    assert "stage Approval: exactly one of steps, stages, parallel, matrix" in problems, problems


# --- the rollback's inputs ----------------------------------------------------------------------


def test_parameters_are_the_rollback_inputs():
    parameters = {p["named"]["name"]: p for p in children(child(pipeline(), "parameters"))}
    expected = {name: option for name, option in spec_options().items() if name not in NOT_IN_SURVEY}
    assert set(parameters) == set(expected)
    for name, option in expected.items():
        parameter = parameters[name]
        if "choices" in option:
            choices = [c for c in option["choices"] if c not in CHOICES_NOT_IN_SURVEY.get(name, set())]
            assert (parameter["call"], parameter["named"]["choices"]) == ("choice", choices), name
        else:
            assert parameter["call"] in {"string", "text"}, name
            assert parameter["named"]["defaultValue"] == option.get("default", ""), name
            assert parameter["named"].get("trim", False) is False, f"{name} must arrive as typed"
    assert "BUILD_USER_ID" not in parameters and "BUILD_URL" not in parameters


# --- protection --------------------------------------------------------------------------------


def test_one_rollback_at_a_time_and_no_restart_from_a_stage():
    options = {o["call"]: o for o in children(child(pipeline(), "options"))}
    assert options["disableConcurrentBuilds"]["named"] == {"abortPrevious": False}, "never abort a running rollback"
    assert "disableRestartFromStage" in options, "a restart from 'Roll back' would skip the approval"
    assert child(pipeline(), "agent")["args"] == [{"expr": "VariableExpression", "text": "none"}], (
        "no executor is held while the approval waits"
    )


def test_the_change_runs_under_a_lock_per_environment_with_a_time_limit():
    options = {o["call"]: o for o in children(child(stages()["Roll back"], "options"))}
    assert options["lock"]["named"]["resource"] == {"gstring": "rollback-$params.env"}
    assert options["timeout"]["named"] == {"time": 75, "unit": "MINUTES"}
    assert "docker" in [node["call"] for node in children(child(stages()["Roll back"], "agent"))]


def not_production_like() -> set[str]:
    group_vars = ROOT / "inventories" / "group_vars"
    default = yaml.safe_load((group_vars / "all.yml").read_text())["rollback_prod_like"]
    envs = {c for c in spec_options()["env"]["choices"] if c not in CHOICES_NOT_IN_SURVEY["env"]}
    result = set()
    for env in envs:
        path = group_vars / f"{env}.yml"
        values = yaml.safe_load(path.read_text()) if path.exists() else {}
        if not values.get("rollback_prod_like", default):
            result.add(env)
    return result


def test_every_production_like_environment_waits_for_the_approvers():
    approval = stages()["Approval"]
    assert list(stages()) == ["Request", "Approval", "Roll back"], "the approval comes before the change"
    when = child(approval, "when")
    assert child(when, "beforeInput")["args"] == [True], "without it the input is asked before the condition"
    (condition,) = child(when, "expression")["body"]
    (exempt,) = not_production_like()
    assert condition == {"expr": "BinaryExpression", "text": f"(params.env != {exempt})"}, (
        "only the environments whose group_vars say rollback_prod_like: false skip the approval"
    )
    entries = {i["call"]: i["args"][0] for i in children(child(approval, "input"))}
    assert entries["submitter"] == "rollback-approvers"
    assert entries["submitterParameter"] == "ROLLBACK_APPROVER"
    assert child(child(approval, "options"), "timeout")["named"] == {"time": 30, "unit": "MINUTES"}
    assert "agent" not in [node["call"] for node in children(approval)]


def test_nobody_approves_their_own_rollback():
    (check,) = [n for n in child(child(stages()["Approval"], "steps"), "script")["body"] if "if" in n]
    assert check["if"] == {"expr": "BinaryExpression", "text": "(env.ROLLBACK_APPROVER == this.startedBy())"}
    assert [n["call"] for n in check["then"]] == ["error"]


def test_the_operator_is_the_person_the_build_cause_names():
    started_by = tree()["methods"]["startedBy"]
    causes = [c["args"][0] for c in calls(started_by, "getBuildCauses")]
    assert causes == [
        "org.jenkinsci.plugins.workflow.cps.replay.ReplayCause",
        "org.jenkinsci.plugins.pipeline.modeldefinition.causes.RestartDeclarativePipelineCause",
        "hudson.model.Cause$UserIdCause",
    ]
    refusals = [n for n in started_by if "if" in n]
    assert len(refusals) == 3 and all([c["call"] for c in r["then"]] == ["error"] for r in refusals)
    assert started_by[-1] == {"return": {"expr": "PropertyExpression", "text": "users[0].userId"}}
    # Checked again in the stage that changes things, and handed to the playbook there.
    steps = child(stages()["Roll back"], "steps")
    assert child(steps, "script")["body"] == [
        {"assign": "env.BUILD_USER_ID", "value": {"call": "startedBy", "args": [], "named": {}}}
    ]
    assert [n["call"] for n in children(steps)] == ["script", "withCredentials"]


def test_the_playbook_reads_the_operator_and_the_job_link_jenkins_provides():
    preflight = (ROOT / "roles" / "rollback_preflight" / "tasks" / "main.yml").read_text()
    assert "{source: jenkins, operator: \"{{ lookup('ansible.builtin.env', 'BUILD_USER_ID') }}\"}" in preflight
    assert "lookup('ansible.builtin.env', 'BUILD_URL')" in preflight


# --- secrets and the shell script --------------------------------------------------------------


def the_shell_step() -> dict:
    (step,) = calls(pipeline(), "sh")
    return step


def test_secrets_reach_only_environment_variables_through_with_credentials():
    (binding_block,) = calls(pipeline(), "withCredentials")
    (bindings,) = binding_block["args"]
    variables = set()
    for binding in bindings:
        assert binding["named"]["credentialsId"]["gstring"].startswith("rollback-$params.env-"), binding
        variables |= {value for key, value in binding["named"].items() if key.endswith(("variable", "Variable"))}
    assert REQUIRED_SECRETS <= variables <= SECRETS, variables
    assert the_shell_step() in calls(binding_block, "sh"), "the script runs inside withCredentials"
    assert "credentials(" not in JENKINSFILE.read_text(), "no secret through the environment directive"


def test_groovy_interpolates_nothing_into_a_shell_script():
    """A GString would paste a parameter or a secret into the script (Jenkins warns of both)."""
    for step in calls(pipeline(), "sh"):
        script = step["named"].get("script", step["args"][0] if step["args"] else None)
        assert isinstance(script, str), f"sh with an interpolated string: {script}"
    gstrings = json.dumps(tree())
    for secret in SECRETS:
        assert f"${secret}" not in gstrings and f"env.{secret}" not in gstrings, secret


def shell_script() -> str:
    return the_shell_step()["named"]["script"]


def shellcheck(text: str, tmp_path: Path) -> subprocess.CompletedProcess:
    path = tmp_path / "step.sh"
    path.write_text(text)
    return subprocess.run(
        [tool("shellcheck"), "--shell=sh", "--severity=style", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_shell_step_passes_shellcheck_and_a_careless_copy_does_not(tmp_path):
    proc = shellcheck(shell_script(), tmp_path)
    assert proc.returncode == 0, proc.stdout
    careless = shell_script().replace('-e @"$vars_file"', "-e @$vars_file")
    assert careless != shell_script()
    assert "SC2086" in shellcheck(careless, tmp_path).stdout


HOSTILE = {
    "env": "prod",
    "reason": (
        "5xx at 40% after cutover; \"quoted\" 'single' {{ lookup('ansible.builtin.pipe', 'touch PWNED') }}"
        " {% raw %}x{% endraw %} key=value $(touch PWNED2) `id` ${FF_API_KEY} \\ back\\slash\r\nsecond line"
        " \u00e9\u2028 \U0001f525"
    ),
    "ticket": "INC-123 $(touch PWNED3)",
    "confirm": "prod",
}
CANARY = "canary-ff-key-7d1f0c"

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
    """Jenkins' shell step, run as Jenkins runs it, in a workspace whose rollback.yml is a probe."""
    workspace = tmp_path / "workspace"
    (workspace / "ci-examples").mkdir(parents=True)
    shutil.copy(EXTRA_VARS, workspace / "ci-examples" / "extra_vars.py")
    (workspace / "rollback.yml").write_text(PROBE)
    (workspace / "ansible.cfg").write_text("[defaults]\n")
    script = tmp_path / "script.sh"
    script.write_text(shell_script())
    # Jenkins exports each parameter under its name and, for old jobs' sake, upper-cased
    # (hudson.model.StringParameterValue.buildEnvironment); withCredentials adds the secrets.
    parameters = {**HOSTILE, **{name.upper(): value for name, value in HOSTILE.items()}}
    env = {
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "HOME": str(tmp_path),
        "WORKSPACE": str(workspace),
        "WORKSPACE_TMP": f"{workspace}@tmp",
        "BUILD_URL": "https://jenkins.example.com/job/rollback/7/",
        "FF_API_KEY": CANARY,
        "ANSIBLE_CONFIG": str(workspace / "ansible.cfg"),
        "ANSIBLE_PYTHON_INTERPRETER": sys.executable,
        "ANSIBLE_LOCALHOST_WARNING": "false",
        **parameters,
    }
    proc = subprocess.run(
        ["sh", "-xe", str(script)], cwd=workspace, env=env, capture_output=True, text=True, timeout=180, check=False
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log
    received = json.loads((workspace / "received.json").read_text())
    assert received == {**{name: HOSTILE[name] for name in ("env", "reason", "ticket", "confirm")},
                        "in_a_template": "why: " + HOSTILE["reason"]}  # fmt: skip
    assert not list(tmp_path.rglob("PWNED*")) and not list(ROOT.glob("PWNED*")), "an input was executed"
    assert CANARY not in log and CANARY not in json.dumps(received), "a secret reached the log"
    vars_file = Path(f"{workspace}@tmp") / "rollback-vars.yml"
    assert vars_file.read_text().isascii() and vars_file.stat().st_mode & 0o077 == 0
