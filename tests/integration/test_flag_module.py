"""The feature_flag module as AWX runs it (ansible-runner): real Unleash, the LaunchDarkly fake, secret canaries."""

import json

import pytest
import yaml

from tests.fakes.fixtures import CANARY, ld_fake, opt_fake  # noqa: F401 - fixture
from tests.fixtures.runner import run_playbook

pytestmark = pytest.mark.integration
FLAG = "DataTransformationFeature"
COMMENT = "Emergency rollback INC-123 by alice: go/no-go failed"


def write_playbook(path, tasks):
    play = {
        "name": "feature_flag module test",
        "hosts": "localhost",
        "gather_facts": False,
        "vars": {"ansible_python_interpreter": "{{ ansible_playbook_python }}"},
        "tasks": tasks,
    }
    path.write_text(yaml.safe_dump([play], sort_keys=False))
    return path


def results(run):
    """{task name: result} of every finished task; `failed` is set from the event (runner strips it)."""
    done = {}
    for event in run.events:
        if event["event"] in ("runner_on_ok", "runner_on_failed"):
            done[event["event_data"]["task"]] = {
                **event["event_data"]["res"],
                "failed": event["event"] == "runner_on_failed",
            }
    return done


def test_unleash_through_the_module(unleash_server, tmp_path):
    unleash_server.set_flag(True)
    flag = {
        "provider": "unleash",
        "api_url": unleash_server.url,
        "flag": FLAG,
        "project": "default",
        "environment": "production",
        "comment": COMMENT,
    }
    playbook = write_playbook(
        tmp_path / "unleash.yml",
        [
            {"name": "check", "feature_flag": flag, "check_mode": True, "diff": True},
            {"name": "disable", "feature_flag": flag, "diff": True},
            {"name": "again", "feature_flag": flag},
            {
                "name": "wrong token",
                "feature_flag": {**flag, "api_key": "{{ lookup('ansible.builtin.env', 'WRONG_KEY') }}"},
                "ignore_errors": True,
            },
            {"name": "missing environment", "feature_flag": {**flag, "environment": "prod"}, "ignore_errors": True},
        ],
    )
    # The admin token comes from FF_API_KEY, as AWX injects it; the wrong one carries the canary.
    run = run_playbook(
        str(playbook),
        tmp_path / "run",
        envvars={"FF_API_KEY": unleash_server.admin_token, "WRONG_KEY": f"*:*.{CANARY}"},
    )
    done = results(run)
    assert done["check"]["changed"] is True and done["check"]["attempts"] == 0, run
    assert done["check"]["diff"]["before"] == {"state": "enabled"}
    assert done["disable"]["changed"] is True
    assert (done["disable"]["previous_state"], done["disable"]["state"]) == ("enabled", "disabled")
    assert isinstance(done["disable"]["change_reference"], int)
    assert done["again"]["changed"] is False
    assert done["wrong token"]["failed"] is True
    assert "Unleash rejected the API key (401)" in done["wrong token"]["msg"]
    assert done["wrong token"]["error_type"] == "FlagAuthError"
    assert done["missing environment"]["error_type"] == "FlagEnvironmentNotFound"
    assert unleash_server.flag_enabled() is False
    everything = run.everything()
    assert CANARY not in everything
    assert unleash_server.admin_token.split(".", 1)[1] not in everything  # the real token either


def test_launchdarkly_through_the_module(ld_fake, tmp_path):  # noqa: F811
    flag = {
        "provider": "launchdarkly",
        "api_url": ld_fake.url,
        "flag": FLAG,
        "environment": "production",
        "comment": COMMENT,
        "max_wait": 20,
    }
    playbook = write_playbook(
        tmp_path / "ld.yml",
        [
            {"name": "disable", "feature_flag": flag},
            {"name": "missing flag", "feature_flag": {**flag, "flag": "nope"}, "ignore_errors": True},
            {"name": "empty key", "feature_flag": {**flag, "api_key": ""}, "ignore_errors": True},
            {
                "name": "validate_certs off is warned",
                "feature_flag": {**flag, "validate_certs": False, "api_url": ld_fake.url.replace("http:", "https:")},
                "ignore_errors": True,
            },
        ],
    )
    ld_fake.fail_next(1, status=429, headers={"Retry-After": "1"}, body={"code": "rate_limited", "message": CANARY})
    ld_fake.fail_next(1, status=500, body={"message": f"upstream said {CANARY}"})
    run = run_playbook(str(playbook), tmp_path / "run", envvars={"FF_API_KEY": CANARY})
    done = results(run)
    assert done["disable"]["changed"] is True, run
    assert done["disable"]["change_reference"] == 2
    assert done["disable"]["change_reference_kind"] == "launchdarkly_flag_version"
    assert not ld_fake.is_on(FLAG)
    assert ld_fake.audit[-1]["comment"] == COMMENT
    assert done["missing flag"]["error_type"] == "FlagNotFound"
    assert "TLS certificate verification is OFF" in json.dumps(done["validate_certs off is warned"].get("warnings"))
    assert "set api_key or the environment variable FF_API_KEY" in done["empty key"]["msg"]
    assert CANARY not in run.everything()


def test_optimizely_through_the_module(opt_fake, tmp_path):  # noqa: F811
    flag = {
        "provider": "optimizely",
        "api_url": opt_fake.url,
        "flag": "data_transformation_feature",
        "project": "4678434014625792",
        "environment": "production",
        "comment": COMMENT,
        "max_wait": 20,
    }
    playbook = write_playbook(
        tmp_path / "optimizely.yml",
        [
            {"name": "disable", "feature_flag": flag, "diff": True},
            {"name": "again", "feature_flag": flag},
            {"name": "project key", "feature_flag": {**flag, "project": "default"}, "ignore_errors": True},
            {"name": "missing environment", "feature_flag": {**flag, "environment": "qa"}, "ignore_errors": True},
        ],
    )
    opt_fake.fail_next(1, status=503, body={"code": "UNAVAILABLE", "message": f"upstream said {CANARY}"})
    run = run_playbook(str(playbook), tmp_path / "run", envvars={"FF_API_KEY": CANARY})
    done = results(run)
    assert done["disable"]["changed"] is True, run
    assert (done["disable"]["change_reference"], done["disable"]["change_reference_kind"]) == (
        2,
        "optimizely_ruleset_revision",
    )
    assert done["disable"]["confirmed_at"].endswith("+00:00")
    assert done["disable"]["diff"]["after"] == {"state": "disabled"}
    assert done["again"]["changed"] is False
    assert "numeric project id" in done["project key"]["msg"]
    assert done["missing environment"]["error_type"] == "FlagEnvironmentNotFound"
    assert not opt_fake.is_on("data_transformation_feature")
    # Each task paces its own requests; tasks back to back may still meet the 2/s limit: retried, not failed.
    assert len(opt_fake.requests) >= 6 + opt_fake.throttled
    assert CANARY not in run.everything()
