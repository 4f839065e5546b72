"""run_notification(): one task sends one event of the rollback to every configured channel.

Events and what each sends (every channel at the same time, each retried within `max_wait`):

| event       | Slack, e-mail                | PagerDuty alert                           | PagerDuty change event |
| ----------- | ---------------------------- | ----------------------------------------- | ---------------------- |
| `start`     | -                            | -                                         | "started" (run start)  |
| `succeeded` | the summary, when `announce` | `resolve` of the environment's dedup key  | the outcome line       |
| `failed`    | the alert                    | `trigger` (critical, error)               | the outcome line       |

The words come from notify_report.compose() alone, so the job output (`summary`), Slack, e-mail
and PagerDuty say the same. Each channel's fate is returned in words (`deliveries`): delivered,
not configured, not sent (check mode / nothing changed), not delivered: <why>. A failed channel is
a warning (`warnings`), never a failure of the task: the rollback's outcome is decided elsewhere
and must not be hidden by a notification problem. `changed` is always false: a message changes no
managed state, so a re-run that finds everything done still reports no change.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from ansible.module_utils.http_client import HttpClient, HttpConfigError, is_loopback
from ansible.module_utils.notify_channels import (
    NOT_CONFIGURED,
    Delivery,
    SmtpConfig,
    change_event,
    mail_message,
    resolve_event,
    send_mail,
    send_pagerduty,
    send_slack,
    slack_body,
    trigger_event,
)
from ansible.module_utils.notify_options import ENV_FALLBACKS
from ansible.module_utils.notify_report import Message, compose, cut
from ansible.module_utils.runbook_plugin import NO_LOG_VALUES_KEY

MASK = "********"
LABELS = {
    "slack": "Slack notification",
    "mail": "e-mail notification",
    "pagerduty": "PagerDuty page",
    "pagerduty_change_start": "PagerDuty change event (start)",
    "pagerduty_change_end": "PagerDuty change event (end)",
}


def _secret(params: dict, name: str, environ) -> str:
    return str(params.get(name) or environ.get(ENV_FALLBACKS[name], "") or "")


def _scrub(value: Any, secrets: list[str]) -> Any:
    """`value` with every secret replaced, at any depth (a last guard: no message is built with one)."""
    if isinstance(value, str):
        for secret in secrets:
            value = value.replace(secret, MASK)
        return value
    if isinstance(value, dict):
        return {key: _scrub(item, secrets) for key, item in value.items()}
    if isinstance(value, list):
        return [_scrub(item, secrets) for item in value]
    return value


def _http_refusal(url: str, what: str, option: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"{what} is not an http(s) URL: set {option}."
    if parts.scheme == "http" and not is_loopback(url):
        return f"{what} is plain http to {parts.hostname}: its secret would travel unencrypted; use https."
    return ""


def run_notification(  # noqa: PLR0915 - one table of channels, read top-down
    params: dict,
    check_mode: bool = False,
    diff: bool = False,
    *,
    environ=None,
    sleep=time.sleep,
    clock=time.monotonic,
    now: float | None = None,
) -> dict:
    """Send `params['event']` to every configured channel; the result says what became of each."""
    environ = os.environ if environ is None else environ
    now = datetime.now(UTC).timestamp() if now is None else now
    event = params["event"]
    report = params.get("report") or {}
    message = compose(report, event, now)
    webhook = _secret(params, "slack_webhook_url", environ)
    password = _secret(params, "smtp_password", environ)
    routing_key = _secret(params, "pagerduty_routing_key", environ)
    max_wait = float(params["max_wait"]) if params.get("max_wait") is not None else 30.0
    timeout = float(params.get("timeout") or 10.0)
    token = webhook.rsplit("/", 1)[-1] if webhook else ""
    secrets = [s for s in (webhook, token, password, routing_key) if len(s) >= 4]

    def client() -> HttpClient:
        return HttpClient(
            timeout=timeout,
            max_wait=max_wait,
            ca_path=params.get("ca_path"),
            secrets=list(secrets),
            sleep=sleep,
            clock=clock,
        )

    jobs: dict[str, Any] = {}
    deliveries: dict[str, str] = {}

    def plan(channel: str, configured: bool, send, refusal: str = "", quiet: str = "") -> None:
        if not configured:
            deliveries[channel] = NOT_CONFIGURED
        elif refusal:
            deliveries[channel] = f"not sent: refused: {refusal}"
        elif quiet:
            deliveries[channel] = f"not sent: {quiet}"
        elif check_mode:
            deliveries[channel] = "not sent (check mode)"
        else:
            jobs[channel] = send

    quiet = "" if params.get("announce", True) else "the run changed nothing (a re-run announces nothing)"
    if event != "start":
        plan(
            "slack",
            bool(webhook),
            lambda: send_slack(webhook, slack_body(message.subject, message.text), client()),
            _http_refusal(webhook, "SLACK_WEBHOOK_URL", "SLACK_WEBHOOK_URL") if webhook else "",
            quiet,
        )
        recipients = [r for r in params.get("mail_to") or [] if r]
        smtp = SmtpConfig(
            host=params.get("smtp_host") or "localhost",
            port=params.get("smtp_port"),
            security=params.get("smtp_secure") or "starttls",
            username=_secret(params, "smtp_username", environ),
            password=password,
            ca_file=params.get("smtp_ca_file"),
            timeout=timeout,
        )
        plan(
            "mail",
            bool(recipients),
            lambda: send_mail(
                smtp,
                mail_message(
                    params.get("mail_from") or "emergency-rollback@localhost", recipients, message.subject, message.text
                ),
                recipients,
                max_wait=max_wait,
                sleep=sleep,
                clock=clock,
            ),
            smtp.refusal(),
            quiet,
        )

    base = str(params.get("pagerduty_url") or "")
    pd_refusal = _http_refusal(base, "pagerduty_url", "pagerduty_url") if routing_key else ""
    source = str(params.get("pagerduty_source") or f"emergency-rollback/{report.get('environment') or 'unknown'}")
    details = {**message.details, "summary": message.lines}
    if event == "start" or params.get("include_start"):
        start = message if event == "start" else compose(report, "start", now)
        start_details = {**start.details, "summary": start.lines}
        plan(
            "pagerduty_change_start",
            bool(routing_key),
            lambda: send_pagerduty(
                base,
                change_event(
                    routing_key,
                    summary=cut(start.first_line, 1024),
                    source=source,
                    timestamp=_float(report.get("started_at"), now),
                    custom_details=start_details,
                    job_url=str(report.get("job_url") or ""),
                ),
                client(),
                "pagerduty_change_start",
            ),
            pd_refusal,
        )
    if event != "start":
        if event == "failed":
            alert = trigger_event(
                routing_key,
                dedup_key=message.dedup_key,
                summary=message.pagerduty_summary(),
                source=source,
                severity=message.severity,
                component=f"step {message.failed_step}",
                group=str(report.get("environment") or "unknown"),
                event_class="rollback " + ("unverified" if message.outcome == "inconclusive" else "failed"),
                custom_details=details,
                timestamp=now,
                job_url=str(report.get("job_url") or ""),
                runbook_url=message.runbook_url,
            )
        else:
            alert = resolve_event(routing_key, message.dedup_key)
        plan("pagerduty", bool(routing_key), lambda: send_pagerduty(base, alert, client(), "pagerduty"), pd_refusal)
        plan(
            "pagerduty_change_end",
            bool(routing_key),
            lambda: send_pagerduty(
                base,
                change_event(
                    routing_key,
                    summary=message.pagerduty_summary(),
                    source=source,
                    timestamp=now,
                    custom_details=details,
                    job_url=str(report.get("job_url") or ""),
                ),
                client(),
                "pagerduty_change_end",
            ),
            pd_refusal,
        )

    results: dict[str, Delivery] = {}
    if jobs:
        with ThreadPoolExecutor(max_workers=len(jobs), thread_name_prefix="notify") as pool:
            futures = {channel: pool.submit(_guarded, channel, send) for channel, send in jobs.items()}
            results = {channel: future.result() for channel, future in futures.items()}
    for channel, delivery in results.items():
        deliveries[channel] = delivery.words
    result = _scrub(_result(event, message, deliveries, results, check_mode=check_mode, diff=diff), secrets)
    # Secrets read from the environment are masked by the caller too, wherever Ansible shows a value.
    result[NO_LOG_VALUES_KEY] = [s for s in (webhook, password, routing_key) if s]
    return result


def _float(value: Any, default: float) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def _guarded(channel: str, send) -> Delivery:
    """A sender's Delivery; an unexpected error becomes this channel's failure, never the task's."""
    try:
        return send()
    except HttpConfigError as exc:
        return Delivery(channel, f"not delivered: {exc}")
    except Exception as exc:  # a notification must never take the rollback's outcome down with it
        return Delivery(channel, f"not delivered: unexpected {type(exc).__name__}")


def _result(event: str, message: Message, deliveries: dict, results: dict, *, check_mode: bool, diff: bool) -> dict:
    order = [c for c in LABELS if c in deliveries]
    deliveries = {c: deliveries[c] for c in order}
    failed = [c for c, words in deliveries.items() if words.startswith(("not delivered", "not sent: refused"))]
    warnings = []
    labels = {**LABELS, "pagerduty": "PagerDuty resolve" if event == "succeeded" else LABELS["pagerduty"]}
    for channel in failed:
        loud = (
            " NOBODY WAS PAGED by this run: call the on-call engineer yourself."
            if channel == "pagerduty" and event == "failed"
            else ""
        )
        warnings.append(f"{labels[channel]} {deliveries[channel]}.{loud}")
    delivered = [c for c, words in deliveries.items() if words.startswith("delivered")]
    # One line for the job output: every channel's fate, the undelivered ones in capitals.
    said = []
    for channel, words in deliveries.items():
        loud = words.rstrip(".").replace("not delivered", "NOT DELIVERED", 1)
        said.append(f"{labels[channel]} {loud.replace('not sent: refused', 'NOT SENT, refused', 1)}")
    summary = "Notifications: " + ("; ".join(said) if said else "no channel") + "."
    result: dict[str, Any] = {
        "changed": False,
        "msg": cut(summary, 2000),
        "event": event,
        "outcome": message.outcome,
        "subject": message.subject,
        "summary": message.lines,
        "severity": message.severity,
        "dedup_key": message.dedup_key,
        "runbook": message.runbook_url or message.runbook_ref,
        "deliveries": deliveries,
        "delivered": delivered,
        "undelivered": failed,
        "attempts": {c: d.attempts for c, d in results.items()},
        "warnings": warnings,
        "problems": list(warnings),  # the same sentences, kept in the result for the audit record
        "check_mode": check_mode,
    }
    if diff:
        result["diff"] = {"before": "", "after": message.text + "\n", "after_header": message.subject}
    return result
