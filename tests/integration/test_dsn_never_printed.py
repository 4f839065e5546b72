"""No task prints a DSN, at any verbosity: the playbooks run with -vvv and a canary in every DSN.

The canary is the name of the folder of the CA file the DSNs name (sslrootcert=.../<canary>/ca.pem):
part of each database's DSN and of nothing else. It must not appear in stdout, the event stream
(what AWX stores), the audit file, the e-mails or the Slack posts; nor may any `postgresql://` URI.
"""

from __future__ import annotations

import json
import secrets
import shutil

import pytest

pytestmark = pytest.mark.integration


@pytest.fixture
def canary_env(stack_baseline, tmp_path):
    canary = "DsnCanary" + secrets.token_hex(6)
    ca = tmp_path / canary / "ca.pem"
    ca.parent.mkdir()
    shutil.copy(stack_baseline.cluster.ca_file, ca)
    env = {**stack_baseline.env(), "ROLLBACK_DB_SSLROOTCERT": str(ca)}
    env["ROLLBACK_DB_DSN"] = env["ROLLBACK_DB_DSN"].split("?")[0] + f"?sslmode=verify-full&sslrootcert={ca}"
    return stack_baseline, env, canary


def assert_no_dsn(stack, run, canary: str, mails_before: int, posts_before: int) -> None:
    blob = (
        run.everything() + json.dumps(stack.mails()[mails_before:]) + json.dumps(stack.webhook_posts()[posts_before:])
    )
    assert canary not in blob, (
        "a DSN reached the output, the events, the audit or a notification:\n"
        + "\n".join(line for line in blob.splitlines() if canary in line)[:3000]
    )
    assert "postgresql://" not in blob and "postgresql%3A" not in blob


def test_no_dsn_at_vvv_in_deploy_rollback_check_status_and_a_failure(canary_env, playbook, status_fake):
    stack, env, canary = canary_env
    mails_before, posts_before = len(stack.mails()), len(stack.webhook_posts())
    extra = {"env": "local", "reason": "dsn canary"}
    runs = [playbook("playbooks/deploy.yml", extravars=extra, envvars=env, cmdline="-vvv")]
    assert runs[-1].rc == 0, runs[-1]
    traffic = stack.load(rate=10).start()
    try:
        runs.append(playbook("rollback.yml", extravars=extra, envvars=env, cmdline="-vvv --check"))
        assert runs[-1].rc == 0, runs[-1]
        runs.append(playbook("rollback.yml", extravars=extra, envvars=env, cmdline="-vvv"))
        assert runs[-1].rc == 0, runs[-1]
    finally:
        traffic.stop()
    runs.append(playbook("playbooks/status.yml", extravars={"env": "local"}, envvars=env, cmdline="-vvv"))
    assert runs[-1].rc == 0, runs[-1]
    # A failure path too (the alert reads every database's state): propagation times out on a stuck instance.
    stack.set_flag(True)
    stuck = status_fake.add("app-stuck", path="new")
    runs.append(
        playbook(
            "rollback.yml",
            extravars={**extra, "rollback_propagation_timeout": 1},
            envvars={**env, "APP_STATUS_URLS": stuck},
            cmdline="-vvv",
        )
    )
    assert runs[-1].rc != 0 and "app-stuck" in runs[-1].stdout, runs[-1]
    for run in runs:
        assert "task path:" in run.stdout, "not verbose output"
        assert_no_dsn(stack, run, canary, mails_before, posts_before)
