"""The notification plugin gives the same result as the action (in Ansible's worker) and as the module
(through AnsiballZ, a task delegated to another host), and keeps its secrets out of both: the routing
key, the webhook URL and the SMTP password reach it through the task's `environment:` only."""

from __future__ import annotations

import pytest

from tests.integration.test_plugin_paths import assert_same, core, run  # noqa: F401 - core is a fixture

pytestmark = pytest.mark.integration


def test_notification_gives_the_same_result_on_both_paths(tmp_path, core, sinks):  # noqa: F811
    report = {"feature": "F", "environment": "paths", "run_id": "r-1", "cause": "boom", "flag_before": "enabled"}
    options = {
        "report": report,
        "mail_to": ["oncall@example.test"],
        "smtp_host": "127.0.0.1",
        "smtp_port": sinks.smtp_port,
        "smtp_secure": "starttls",
        "smtp_ca_file": sinks.ca_file,
        "pagerduty_url": sinks.http,
        "max_wait": 5,
    }
    environment = {
        "SLACK_WEBHOOK_URL": sinks.webhook_url,
        "SMTP_USERNAME": sinks.smtp_username,
        "SMTP_PASSWORD": sinks.smtp_password,
        "PAGERDUTY_ROUTING_KEY": sinks.routing_key,
    }
    pages_before, mails_before = len(sinks.events()), len(sinks.mails())
    tasks = [
        {"name": "alert", "notification": {"event": "failed", **options}, "environment": environment},
        {
            "name": "plan",
            "notification": {"event": "failed", **options},
            "environment": environment,
            "check_mode": True,
            "diff": True,
        },
        {"name": "no secret", "notification": {"event": "failed", **options}},
        {"name": "bad event", "notification": {"event": "finished", **options}},
    ]
    outcome, done = run(tmp_path, tasks, core)
    alert = assert_same(done, "alert")
    assert not alert["failed"] and alert["changed"] is False
    assert set(alert["deliveries"].values()) == {"delivered"}, alert["deliveries"]
    assert alert["summary"][0].startswith("ROLLBACK FAILED at step preflight in paths.")
    plan = assert_same(done, "plan")
    assert set(plan["deliveries"].values()) == {"not sent (check mode)"}
    assert plan["diff"]["after"].splitlines() == plan["summary"]
    bare = assert_same(done, "no secret")
    assert bare["deliveries"] == dict.fromkeys(("slack", "pagerduty", "pagerduty_change_end"), "not configured") | {
        "mail": "delivered"
    }
    bad = assert_same(done, "bad event")
    assert bad["failed"] and "event" in bad["msg"]
    # Each path really sent once: a trigger, an end change event and an e-mail per path.
    assert [e["endpoint"] for e in sinks.events()[pages_before:]].count("alert") == 2
    assert len(sinks.mails()[mails_before:]) == 4  # alert (both paths) and no secret (both paths)
    everything = outcome.everything()
    for secret in sinks.secrets():
        assert secret not in everything
