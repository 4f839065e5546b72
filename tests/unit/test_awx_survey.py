"""The AWX survey asks exactly what the rollback accepts, so the two cannot drift.

The survey the job template receives (rendered from awx/vars/ as awx_configure.yml renders it) is
compared with roles/rollback_preflight/meta/argument_specs.yml: names, required, choices, types and
defaults. The differences are deliberate, listed here, and themselves checked:
- operator: AWX identifies who launched the job (awx_user_name); a typed name could be anyone's.
- rollback_revision: the job reverts to the rollback point deploy.yml recorded; another target is
  set by an AWX admin in the template's extra vars under a ticket, never typed at 3 a.m.
- env's choice "local": the rehearsal stack on a laptop, never an AWX target.
The survey also follows AWX's own rules for a survey spec (awx/api/views: _validate_spec_data).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.unit.test_awx_configuration import invocations_of

ROOT = Path(__file__).resolve().parents[2]
ARGUMENT_SPECS = ROOT / "roles" / "rollback_preflight" / "meta" / "argument_specs.yml"

NOT_IN_SURVEY = {"operator", "rollback_revision"}
CHOICES_NOT_IN_SURVEY = {"env": {"local"}}

# AWX survey question types, and the argument spec types each may feed.
SURVEY_TYPES = {
    "text": "str",
    "textarea": "str",
    "password": "str",
    "integer": "int",
    "float": "float",
    "multiplechoice": "str",
    "multiselect": "list",
}
# Variables AWX injects itself: a survey asking for one would let the launcher forge it.
AWX_INJECTED_PREFIXES = ("awx_", "tower_")


def spec_options() -> dict[str, dict]:
    return yaml.safe_load(ARGUMENT_SPECS.read_text())["argument_specs"]["main"]["options"]


def job_template_survey() -> dict:
    (template,) = invocations_of("job_template")
    return template["survey_spec"]


def workflow_survey() -> tuple[dict, dict]:
    (workflow,) = invocations_of("workflow_job_template")
    return workflow["survey_spec"], workflow["extra_vars"]


def questions(survey: dict) -> dict[str, dict]:
    return {question["variable"]: question for question in survey["spec"]}


def test_the_deliberate_omissions_are_still_optional_inputs_of_the_rollback():
    options = spec_options()
    for name in NOT_IN_SURVEY:
        assert name in options, f"{name} is no longer an input: remove it from NOT_IN_SURVEY"
        assert not options[name].get("required"), f"{name} became required: the survey must ask for it"
    for name, excluded in CHOICES_NOT_IN_SURVEY.items():
        assert excluded <= set(options[name]["choices"]), f"{excluded} are no longer choices of {name}"


def test_survey_asks_exactly_the_inputs_of_the_argument_specs():
    options = spec_options()
    survey = questions(job_template_survey())
    assert set(survey) == set(options) - NOT_IN_SURVEY, (
        f"survey asks {sorted(set(survey) - set(options))} that the rollback does not accept, "
        f"misses {sorted(set(options) - NOT_IN_SURVEY - set(survey))}"
    )


@pytest.mark.parametrize("name", sorted(set(spec_options()) - NOT_IN_SURVEY))
def test_each_question_matches_its_input(name):
    option = spec_options()[name]
    question = questions(job_template_survey())[name]
    assert question["required"] is bool(option.get("required")), f"{name}: required differs"
    assert SURVEY_TYPES[question["type"]] == option.get("type", "str"), f"{name}: {question['type']} for {option}"
    if "choices" in option:
        assert question["type"] == "multiplechoice", f"{name} has choices: the survey must offer exactly those"
        expected = [choice for choice in option["choices"] if choice not in CHOICES_NOT_IN_SURVEY.get(name, set())]
        assert question["choices"] == expected, f"{name}: survey offers {question['choices']}, spec {expected}"
    else:
        assert question["type"] not in {"multiplechoice", "multiselect"}, f"{name} has no choices in the spec"
    if not option.get("required"):
        assert question.get("default", "") == option.get("default", ""), f"{name}: default differs"


def test_survey_never_asks_who_the_operator_is():
    for variable in questions(job_template_survey()):
        assert variable != "operator" and not variable.startswith(AWX_INJECTED_PREFIXES), variable


@pytest.mark.parametrize("which", ["job_template", "workflow"])
def test_survey_follows_awx_rules(which):
    survey = job_template_survey() if which == "job_template" else workflow_survey()[0]
    assert isinstance(survey["name"], str) and isinstance(survey["description"], str)
    assert isinstance(survey["spec"], list) and survey["spec"], "AWX refuses a survey without questions"
    variables = [question["variable"] for question in survey["spec"]]
    assert len(variables) == len(set(variables)), "AWX refuses duplicate variables"
    for question in survey["spec"]:
        for field in ("type", "question_name", "variable", "required"):
            assert field in question, f"AWX requires {field} in every question: {question}"
        assert question["type"] in SURVEY_TYPES, question
        assert isinstance(question["required"], bool)
        if question["type"] in {"multiplechoice", "multiselect"}:
            choices = question["choices"]
            assert isinstance(choices, list) and choices and all(isinstance(c, str) and c for c in choices)
            assert question.get("default", "") in ["", *choices], "a default must be one of the choices"
        if question["type"] in {"text", "textarea", "password"}:
            low, high = question.get("min", 0), question.get("max", 1024)
            assert isinstance(low, int) and isinstance(high, int) and 0 <= low <= high
            default = question.get("default", "")
            assert isinstance(default, str)
            assert not default or low <= len(default) <= high, "AWX refuses a default outside min/max"
            if question["required"]:
                assert low >= 1, "a required text answer must not be empty"


def test_workflow_survey_is_the_job_template_survey_with_env_fixed_to_prod():
    survey, extra_vars = workflow_survey()
    expected = [question for question in job_template_survey()["spec"] if question["variable"] != "env"]
    assert survey["spec"] == expected
    assert extra_vars == {"env": "prod"}
    assert extra_vars["env"] in questions(job_template_survey())["env"]["choices"]
