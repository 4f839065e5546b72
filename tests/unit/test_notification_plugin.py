"""The notification plugin without a network: which channels it plans, check mode, refusals, secrets,
its documentation against its spec, and its PagerDuty events against the rehearsal's contract sink."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import yaml
from ansible.module_utils.notify_channels import (
    SmtpConfig,
    change_event,
    iso_utc,
    resolve_event,
    slack_body,
    trigger_event,
)
from ansible.module_utils.notify_core import run_notification
from ansible.module_utils.notify_options import notification_spec
from ansible.module_utils.runbook_plugin import NO_LOG_VALUES_KEY

from rehearsal.sinks import pagerduty_incidents, pagerduty_verdict, slack_verdict

ROOT = Path(__file__).resolve().parents[2]
KEY = "k" * 32


def run(*args, **kwargs) -> dict:
    """run_notification's result as its caller returns it: the secrets it read are the caller's to mask."""
    result = run_notification(*args, **kwargs)
    result.pop(NO_LOG_VALUES_KEY)
    return result


def params(**overrides) -> dict:
    values = {key: spec.get("default") for key, spec in notification_spec()["argument_spec"].items()}
    values.update(event="failed", report={"environment": "prod", "feature": "F", "cause": "boom"})
    values.update(overrides)
    return values


def test_nothing_configured_sends_nothing_and_says_so():
    result = run(params(), environ={})
    assert result["deliveries"] == {
        "slack": "not configured",
        "mail": "not configured",
        "pagerduty": "not configured",
        "pagerduty_change_end": "not configured",
    }
    assert result["warnings"] == [] and result["changed"] is False
    assert result["summary"][0].startswith("ROLLBACK FAILED at step preflight in prod.")


def test_check_mode_composes_but_sends_nothing():
    environ = {"SLACK_WEBHOOK_URL": "http://127.0.0.1:9/services/T/B/x", "PAGERDUTY_ROUTING_KEY": KEY}
    result = run(params(mail_to=["a@b.c"], smtp_secure="never"), check_mode=True, environ=environ)
    assert set(result["deliveries"].values()) == {"not sent (check mode)"}
    assert result["attempts"] == {}


def test_start_sends_only_the_change_event_and_a_quiet_success_only_pagerduty():
    environ = {"SLACK_WEBHOOK_URL": "http://127.0.0.1:9/services/T/B/x", "PAGERDUTY_ROUTING_KEY": KEY}
    start = run(params(event="start"), check_mode=True, environ=environ)
    assert list(start["deliveries"]) == ["pagerduty_change_start"]
    quiet = run_notification(
        params(event="succeeded", announce=False, mail_to=["a@b.c"]), check_mode=True, environ=environ
    )
    assert quiet["deliveries"]["slack"].startswith("not sent: the run changed nothing")
    assert quiet["deliveries"]["mail"].startswith("not sent: the run changed nothing")
    assert quiet["deliveries"]["pagerduty"] == "not sent (check mode)", "a successful run always resolves"


def test_secrets_over_plain_http_to_another_host_are_refused():
    environ = {"SLACK_WEBHOOK_URL": "http://hooks.example.test/services/T/B/secret", "PAGERDUTY_ROUTING_KEY": KEY}
    result = run(params(pagerduty_url="http://events.example.test"), environ=environ)
    assert result["deliveries"]["slack"].startswith("not sent: refused: SLACK_WEBHOOK_URL is plain http")
    assert result["deliveries"]["pagerduty"].startswith("not sent: refused: pagerduty_url is plain http")
    assert len(result["warnings"]) == 3 and "NOBODY WAS PAGED" in result["warnings"][1]
    assert result["msg"].startswith("Notifications: Slack notification NOT SENT, refused: SLACK_WEBHOOK_URL is plain")
    assert "; e-mail notification not configured; PagerDuty page NOT SENT, refused:" in result["msg"]
    assert "secret" not in json.dumps(result) and KEY not in json.dumps(result)


@pytest.mark.parametrize(
    ("settings", "refusal"),
    [
        ({"security": "try", "username": "u", "password": "p"}, "set rollback_smtp_secure to starttls"),
        ({"security": "never", "username": "u", "password": "p"}, "would travel unencrypted"),
        ({"security": "starttls", "password": "p"}, "SMTP_PASSWORD is set but SMTP_USERNAME is not"),
        ({"security": "always", "username": "u"}, "SMTP_USERNAME is set but SMTP_PASSWORD is not"),
        ({"security": "try"}, ""),
        ({"security": "starttls", "username": "u", "password": "p"}, ""),
    ],
)
def test_smtp_settings_that_would_leak_the_password_are_refused(settings, refusal):
    found = SmtpConfig(host="smtp.example.test", port=None, **settings).refusal()
    assert (refusal in found) if refusal else found == ""


def test_smtp_tls_verifies_the_certificate_and_the_host_name():
    import ssl  # noqa: PLC0415

    context = SmtpConfig(host="h", port=None, security="starttls").tls_context()
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname is True


def test_the_default_ports_follow_the_security():
    assert [SmtpConfig("h", None, s).effective_port for s in ("starttls", "always", "try", "never")] == [
        587,
        465,
        25,
        25,
    ]


def test_secrets_given_as_options_are_masked_wherever_they_would_appear():
    report = {"environment": "prod", "cause": f"the key {KEY} leaked into a message"}
    environ = {"SLACK_WEBHOOK_URL": "https://hooks.example.test/services/T/B/tok3n", "SMTP_PASSWORD": "pw-from-env"}
    full = run_notification(params(report=report, pagerduty_routing_key=KEY), check_mode=True, environ=environ)
    assert sorted(full[NO_LOG_VALUES_KEY]) == sorted([KEY, *environ.values()]), "the caller masks them too"
    result = run(params(report=report, pagerduty_routing_key=KEY), check_mode=True, environ={})
    assert KEY not in json.dumps(result) and "********" in result["summary"][1]


# -- the PagerDuty events, against the contract sink -------------------------------------------------
def trigger(**overrides) -> dict:
    values = {
        "dedup_key": "emergency-rollback/prod/F",
        "summary": "ROLLBACK FAILED at step schema in prod.",
        "source": "emergency-rollback/prod",
        "severity": "critical",
        "component": "step schema",
        "group": "prod",
        "event_class": "rollback failed",
        "custom_details": {"run_id": "r"},
        "timestamp": 1_700_000_000.25,
        "job_url": "https://awx.example.test/#/jobs/playbook/1",
        "runbook_url": "https://git.example.test/RUNBOOK.md#paged-schema",
    }
    values.update(overrides)
    return trigger_event(KEY, **values)


def verdict(event: dict, path: str = "/v2/enqueue") -> tuple[int, dict]:
    status, answer, _ = pagerduty_verdict(path, json.dumps(event).encode(), KEY)
    return status, answer


def test_our_events_are_what_pagerduty_accepts():
    assert verdict(trigger()) == (
        202,
        {"status": "success", "message": "Event processed", "dedup_key": "emergency-rollback/prod/F"},
    )
    assert verdict(resolve_event(KEY, "emergency-rollback/prod/F"))[0] == 202
    change = change_event(
        KEY, summary="started", source="s", timestamp=1.0, custom_details={}, job_url="https://x.test"
    )
    assert verdict(change, "/v2/change/enqueue")[0] == 202
    assert iso_utc(1_700_000_000.25) == "2023-11-14T22:13:20.250+0000"


@pytest.mark.parametrize(
    ("mutate", "error"),
    [
        (lambda e: e.pop("routing_key"), "'routing_key' is missing or blank"),
        (lambda e: e.update(routing_key="short"), "Length of 'routing_key' is incorrect"),
        (lambda e: e.update(routing_key="x" * 32), "Invalid routing key"),
        (lambda e: e.update(event_action="page"), "'event_action' is invalid"),
        (lambda e: e["payload"].update(summary="s" * 1025), "longer than 1024"),
        (lambda e: e["payload"].update(summary=" "), "'payload.summary' is missing or blank"),
        (lambda e: e["payload"].update(severity="fatal"), "'payload.severity' is invalid"),
        (lambda e: e["payload"].pop("source"), "'payload.source' is missing or blank"),
        (lambda e: e["payload"].update(timestamp="yesterday"), "not an ISO 8601 timestamp"),
        (lambda e: e["payload"].update(custom_details="text"), "'payload.custom_details' must be an object"),
        (lambda e: e.update(dedup_key="d" * 256), "'dedup_key' must be a string of at most 255"),
        (lambda e: e.update(links=[{"text": "no href"}]), "'links' must be a list of objects, each with 'href'"),
        (lambda e: e.pop("payload"), "'payload' is missing or not an object"),
    ],
)
def test_the_sink_rejects_what_pagerduty_rejects(mutate, error):
    event = trigger()
    mutate(event)
    status, answer = verdict(event)
    assert status == 400 and answer["status"] == "invalid event" and answer["message"] == "Event object is invalid"
    assert any(error in e for e in answer["errors"]), answer["errors"]


def test_a_resolve_needs_a_dedup_key_and_a_body_must_be_json():
    assert verdict({"routing_key": KEY, "event_action": "resolve"})[0] == 400
    status, answer, _ = pagerduty_verdict("/v2/enqueue", b"not json", KEY)
    assert status == 400 and answer["errors"] == ["JSON parse error"]
    assert verdict({"routing_key": KEY, "payload": {"summary": ""}}, "/v2/change/enqueue")[0] == 400


def test_incidents_replay_as_pagerduty_groups_them():
    def record(event):
        status, answer, _ = pagerduty_verdict("/v2/enqueue", json.dumps(event).encode(), KEY)
        return {"endpoint": "alert", "accepted": status == 202, "event": event, "dedup_key": answer.get("dedup_key")}

    key = "emergency-rollback/prod/F"
    records = [
        record(resolve_event(KEY, key)),  # nothing open: dropped
        record(trigger()),
        record(trigger()),  # the same open incident
        record(resolve_event(KEY, key)),
        record(trigger()),  # after the resolve: a new incident
    ]
    incidents = pagerduty_incidents(records)
    assert [(i["status"], i["triggers"]) for i in incidents] == [("dropped", 0), ("resolved", 2), ("triggered", 1)]


def test_slack_gets_a_message_its_webhook_accepts():
    status, answer, message = slack_verdict("application/json", json.dumps(slack_body("S <x>", "a -> b & c")).encode())
    assert (status, answer) == (200, "ok") and message["text"] == "*S &lt;x&gt;*\na -&gt; b &amp; c"


# -- the module file documents exactly its spec -----------------------------------------------------
def test_the_module_documents_every_option_of_its_spec_with_the_same_type_default_and_choices():
    tree = ast.parse((ROOT / "plugins" / "modules" / "notification.py").read_text())
    docs = {
        node.targets[0].id: ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign)
        and isinstance(node.targets[0], ast.Name)
        and node.targets[0].id in ("DOCUMENTATION", "EXAMPLES", "RETURN")
    }
    documented = yaml.safe_load(docs["DOCUMENTATION"])["options"]
    spec = notification_spec()["argument_spec"]
    assert set(documented) == set(spec)
    for name, option in spec.items():
        doc = documented[name]
        assert doc["type"] == option["type"], name
        assert doc.get("default") == option.get("default") or (doc.get("default"), option.get("default")) in (
            (10, 10.0),
            (30, 30.0),
        ), name
        assert doc.get("choices") == option.get("choices"), name
        assert bool(doc.get("required")) == bool(option.get("required")), name
    yaml.safe_load(docs["EXAMPLES"])
    assert set(yaml.safe_load(docs["RETURN"])) >= {"summary", "deliveries", "problems", "severity", "dedup_key"}
