"""The notification plugin against the rehearsal's real sinks: aiosmtpd with STARTTLS/TLS from a test CA,
the Slack webhook contract and the PagerDuty Events API v2 contract sink.

Retries never wait for real: the tests inject `sleep` and `clock`, and count what was slept.
"""

from __future__ import annotations

import json
import smtplib
import ssl
from pathlib import Path

import pytest
from ansible.module_utils.notify_core import run_notification
from ansible.module_utils.notify_options import notification_spec
from ansible.module_utils.runbook_plugin import NO_LOG_VALUES_KEY

from rehearsal.sinks import pagerduty_incidents
from tests.fakes.tls import make_tls

pytestmark = pytest.mark.integration

FEATURE = "DataTransformationFeature"


class FakeTime:
    """An injected clock: sleeping moves it, nothing waits."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def report(**overrides) -> dict:
    base = {
        "feature": FEATURE,
        "environment": "staging",
        "run_id": "run-42",
        "operator": "alice",
        "ticket": "INC-7",
        "reason": "go/no-go failed",
        "started_at": 990.0,
        "flag_before": "enabled",
        "target_revision": "0001_legacy",
        "plan": {"databases": [{"name": "app-eu", "from_revision": "0002_data_transformation"}]},
        "flag": {"changed": True, "previous_state": "enabled", "state": "disabled", "provider": "unleash"},
        "propagation": {"elapsed_seconds": 1.2},
        "schema": {
            "failed": True,
            "databases": [{"name": "app-eu", "failed": True, "changed": False, "attempts": 3}],
        },
        "cause": "Cannot revert app-eu: every one of 3 attempt(s) timed out",
        "flag_left": {"previous_state": "disabled"},
        "state_left": {"databases": [{"name": "app-eu", "revision": "0002_data_transformation"}]},
    }
    return {**base, **overrides}


def params(sinks, **overrides) -> dict:
    values = {key: spec.get("default") for key, spec in notification_spec()["argument_spec"].items()}
    values.update(
        event="failed",
        report=report(),
        slack_webhook_url=sinks.webhook_url,
        mail_to=["oncall@example.test"],
        smtp_host="127.0.0.1",
        smtp_port=sinks.smtp_port,
        smtp_secure="starttls",
        smtp_username=sinks.smtp_username,
        smtp_password=sinks.smtp_password,
        smtp_ca_file=sinks.ca_file,
        pagerduty_routing_key=sinks.routing_key,
        pagerduty_url=sinks.http,
        max_wait=20.0,
        timeout=5.0,
    )
    values.update(overrides)
    return values


def send(sinks, **overrides) -> tuple[dict, FakeTime]:
    time = FakeTime()
    result = run_notification(params(sinks, **overrides), environ={}, sleep=time.sleep, clock=time.clock, now=1010.0)
    result.pop(NO_LOG_VALUES_KEY)  # the secrets it was given, for its caller (the action or module) to mask
    return result, time


def new(records: list, before: int) -> list:
    return records[before:]


# -- e-mail: verified TLS only ---------------------------------------------------------------------
@pytest.mark.parametrize(("secure", "port"), [("starttls", "smtp_port"), ("always", "smtps_port")])
def test_mail_with_the_right_ca_is_delivered_over_verified_tls(sinks, secure, port):
    before = len(sinks.mails())
    result, _ = send(sinks, smtp_secure=secure, smtp_port=getattr(sinks, port))
    assert result["deliveries"]["mail"] == "delivered", result["deliveries"]
    [mail] = new(sinks.mails(), before)
    assert mail["tls"] is True and mail["authenticated_as"] == sinks.smtp_username
    assert mail["subject"] == "ROLLBACK FAILED in staging: failed at schema"
    assert mail["text"].splitlines() == result["summary"], "the e-mail says exactly what the job output says"


def test_a_certificate_from_another_ca_is_refused_and_nothing_is_sent(sinks, tmp_path):
    other_ca = make_tls(tmp_path / "other").ca_cert
    before = len(sinks.mails())
    for secure, port in (("starttls", sinks.smtp_port), ("always", sinks.smtps_port)):
        result, time = send(sinks, smtp_secure=secure, smtp_port=port, smtp_ca_file=str(other_ca))
        words = result["deliveries"]["mail"]
        assert words.startswith("not delivered: the TLS certificate of the SMTP server"), words
        assert "unable to get local issuer certificate" in words and "rollback_smtp_ca_file" in words
        assert time.slept == [], "a certificate that cannot be verified is never retried"
        assert any("e-mail notification not delivered" in w for w in result["warnings"])
    assert new(sinks.mails(), before) == [], "no message may go to a server whose certificate failed"


def test_a_certificate_for_another_host_name_is_refused(sinks):
    before = len(sinks.mails())
    result, _ = send(sinks, smtp_host="localhost")  # the certificate is for 127.0.0.1 only
    assert "Hostname mismatch" in result["deliveries"]["mail"], result["deliveries"]["mail"]
    assert new(sinks.mails(), before) == []


def test_the_system_trust_store_does_not_trust_the_test_ca(sinks):
    result, _ = send(sinks, smtp_ca_file=None)
    assert "against the system's trust store" in result["deliveries"]["mail"]


@pytest.mark.parametrize("secure", ["try", "never"])
def test_a_password_over_opportunistic_or_no_tls_is_refused_naming_the_fix(sinks, secure):
    before = len(sinks.mails())
    result, _ = send(sinks, smtp_secure=secure)
    words = result["deliveries"]["mail"]
    assert words.startswith("not sent: refused: the SMTP password would travel"), words
    assert "set rollback_smtp_secure to starttls (port 587) or always (TLS, port 465)" in words
    assert new(sinks.mails(), before) == []
    assert result["undelivered"] == ["mail"] and result["deliveries"]["slack"] == "delivered"


def test_the_sink_itself_refuses_a_login_in_plaintext(sinks):
    """What community.general.mail with secure: never would do: the server refuses AUTH before TLS."""
    with smtplib.SMTP("127.0.0.1", sinks.smtp_port, timeout=5) as smtp:
        smtp.ehlo()
        assert smtp.has_extn("starttls")
        with pytest.raises(smtplib.SMTPException):
            smtp.login(sinks.smtp_username, sinks.smtp_password)
    with smtplib.SMTP("127.0.0.1", sinks.smtp_port, timeout=5) as smtp:
        smtp.starttls(context=ssl.create_default_context(cafile=sinks.ca_file))
        smtp.login(sinks.smtp_username, sinks.smtp_password)


def test_without_credentials_plaintext_is_allowed(sinks):
    before = len(sinks.mails())
    result, _ = send(sinks, smtp_secure="never", smtp_username=None, smtp_password=None)
    assert result["deliveries"]["mail"] == "delivered"
    [mail] = new(sinks.mails(), before)
    assert mail["tls"] is False and mail["authenticated_as"] is None


def test_a_transient_smtp_refusal_is_retried_then_delivered(sinks):
    sinks.fault("smtp", 451, count=2)
    before = len(sinks.mails())
    result, time = send(sinks)
    assert result["deliveries"]["mail"] == "delivered"
    assert result["attempts"]["mail"] == 3 and len(time.slept) == 2
    assert len(new(sinks.mails(), before)) == 1


def test_a_permanent_smtp_refusal_is_not_retried(sinks):
    sinks.fault("smtp", 554, count=1)
    result, time = send(sinks)
    assert result["deliveries"]["mail"].startswith("not delivered: the SMTP server 127.0.0.1:")
    assert "554" in result["deliveries"]["mail"] and result["attempts"]["mail"] == 1 and time.slept == []


def test_an_unreachable_smtp_server_is_retried_within_the_bound_then_reported(sinks):
    from rehearsal.postgres import free_port  # noqa: PLC0415

    result, time = send(sinks, smtp_port=free_port(), max_wait=10.0)
    words = result["deliveries"]["mail"]
    assert words.startswith("not delivered:") and "could not be reached" in words and "within 10 s" in words
    assert len(time.slept) >= 2 and sum(time.slept) <= 10.0
    assert result["deliveries"]["pagerduty"] == "delivered", "one channel's failure does not stop the others"


# -- Slack ------------------------------------------------------------------------------------------
def test_slack_gets_the_same_words_escaped_as_slack_requires(sinks):
    before = len(sinks.posts())
    result, _ = send(sinks)
    [post] = new(sinks.posts(), before)
    assert post["accepted"] and post["status"] == 200
    text = post["message"]["text"]
    assert text.startswith("*ROLLBACK FAILED in staging: failed at schema*\n")
    unescaped = text.split("\n", 1)[1].replace("&gt;", ">").replace("&lt;", "<").replace("&amp;", "&")
    assert unescaped.splitlines() == result["summary"]
    assert "->" not in text and "-&gt;" in text


def test_slack_rate_limits_and_outages_are_retried(sinks):
    sinks.fault("slack", 503, count=2)
    result, time = send(sinks)
    assert result["deliveries"]["slack"] == "delivered" and result["attempts"]["slack"] == 3
    assert len(time.slept) >= 2


def test_a_revoked_webhook_is_not_retried_and_says_what_to_do(sinks):
    result, time = send(sinks, slack_webhook_url=sinks.http + "/services/T0/B0/revoked")
    words = result["deliveries"]["slack"]
    assert words.startswith("not delivered: HTTP 404 'no_service'") and "SLACK_WEBHOOK_URL" in words
    assert result["attempts"]["slack"] == 1 and time.slept == []
    assert "revoked" not in json.dumps(result), "the webhook URL is a credential: never repeated"


# -- PagerDuty ----------------------------------------------------------------------------------------
def test_a_failure_pages_once_per_environment_and_a_later_success_resolves_it(sinks):
    before = len(sinks.events())
    first, _ = send(sinks, include_start=True)
    second, _ = send(sinks)  # a second failed attempt for the same environment
    success_report = report(
        schema={
            "databases": [{"name": "app-eu", "changed": True, "from_revision": "0002", "to_revision": "0001_legacy"}]
        },
        cause="",
    )
    resolved, _ = send(sinks, event="succeeded", report=success_report)
    for result in (first, second, resolved):
        assert result["deliveries"]["pagerduty"] == "delivered", result["deliveries"]
        assert result["deliveries"]["pagerduty_change_end"] == "delivered"
    events = new(sinks.events(), before)
    assert all(e["accepted"] for e in events), [e["errors"] for e in events]
    incidents = pagerduty_incidents(events)
    assert len(incidents) == 1, "one open incident per environment, not one per attempt"
    [incident] = incidents
    assert incident["dedup_key"] == f"emergency-rollback/staging/{FEATURE}"
    assert incident["triggers"] == 2 and incident["status"] == "resolved"
    trigger = incident["events"][0]["event"]
    payload = trigger["payload"]
    assert payload["severity"] == "critical", "the schema step failed"
    assert payload["summary"] == first["summary"][0]
    assert payload["summary"].startswith("ROLLBACK FAILED at step schema in staging.")
    details = payload["custom_details"]
    assert details["summary"] == first["summary"]
    assert (details["run_id"], details["flag_state"], details["failed_step"]) == ("run-42", "disabled", "schema")
    assert details["database_revisions"] == {"app-eu": "0002_data_transformation"}
    assert details["runbook"] == "RUNBOOK.md#paged-schema"
    changes = [e for e in events if e["endpoint"] == "change"]
    assert len(changes) == 4, "start (with the first alert), and one end per run"
    # The first run's start and end change events go out at the same time: told apart by their words.
    started = f"Emergency rollback of {FEATURE} in staging started"
    [start] = [c["event"]["payload"] for c in changes if c["event"]["payload"]["summary"].startswith(started)]
    assert start["timestamp"].startswith("1970-01-01T00:16:30")  # started_at 990, not the time it was sent


def test_the_page_links_the_job_and_the_runbook_section(sinks):
    before = len(sinks.events())
    send(
        sinks,
        report=report(
            job_url="https://awx.example.test/#/jobs/playbook/7",
            runbook_url="https://git.example.test/ops/rollback/-/blob/main/RUNBOOK.md",
        ),
    )
    trigger = next(e["event"] for e in new(sinks.events(), before) if e["endpoint"] == "alert")
    assert trigger["links"] == [
        {"href": "https://awx.example.test/#/jobs/playbook/7", "text": "The rollback job"},
        {
            "href": "https://git.example.test/ops/rollback/-/blob/main/RUNBOOK.md#paged-schema",
            "text": "RUNBOOK.md: what to do",
        },
    ]
    assert trigger["client_url"] == "https://awx.example.test/#/jobs/playbook/7"


def test_severity_is_error_when_nothing_is_mixed_and_the_schema_did_not_fail(sinks):
    before = len(sinks.events())
    send(sinks, report=report(schema={}, failed_step="propagation", cause="app-3 still on the new path"))
    trigger = next(e["event"] for e in new(sinks.events(), before) if e["endpoint"] == "alert")
    assert trigger["payload"]["severity"] == "error"


def test_an_undeliverable_page_is_retried_then_reported_loudly(sinks):
    sinks.fault("pagerduty", 503, count=100)
    try:
        result, time = send(sinks, max_wait=5.0)
    finally:
        sinks.fault("pagerduty", 202, count=0)
    words = result["deliveries"]["pagerduty"]
    assert words.startswith("not delivered: PagerDuty answered 503 on each of") and "(trigger)" in words
    assert result["attempts"]["pagerduty"] >= 2 and sum(time.slept) <= 5.0
    assert any("PagerDuty page not delivered" in w and "NOBODY WAS PAGED" in w for w in result["warnings"])
    assert result["problems"] == result["warnings"]
    assert result["outcome"] == "failed" and result["changed"] is False


def test_a_wrong_routing_key_is_refused_by_the_sink_and_not_retried(sinks):
    result, time = send(sinks, pagerduty_routing_key="0" * 32)
    words = result["deliveries"]["pagerduty"]
    assert words.startswith("not delivered: HTTP 400 'Invalid routing key'") and "PAGERDUTY_ROUTING_KEY" in words
    assert result["attempts"]["pagerduty"] == 1 and time.slept == []


def test_a_page_summary_longer_than_pagerduty_allows_is_cut_not_refused(sinks):
    before = len(sinks.events())
    many = [{"name": f"tenant_{n:03d}", "revision": None, "failed": True, "msg": "x" * 40} for n in range(300)]
    result, _ = send(
        sinks, report=report(state_left={"databases": many}, plan={}, environment="e" * 2000, cause="y" * 5000)
    )
    assert result["deliveries"]["pagerduty"] == "delivered", result["deliveries"]["pagerduty"]
    trigger = next(e["event"] for e in new(sinks.events(), before) if e["endpoint"] == "alert")
    assert len(trigger["payload"]["summary"]) == 1024 and len(trigger["dedup_key"]) <= 255


# -- secrets -------------------------------------------------------------------------------------------
def test_no_secret_reaches_the_result_or_what_the_sinks_stored(sinks, tmp_path):
    sinks.fault("pagerduty", 400, count=1)  # an error answer too
    result, _ = send(sinks)
    stored = "".join(Path(f).read_text() for f in sinks.directory.glob("*.jsonl"))
    everything = json.dumps(result) + stored
    for secret in sinks.secrets():
        assert secret not in everything
