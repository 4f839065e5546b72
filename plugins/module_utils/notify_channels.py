"""Delivery of one notification to Slack, e-mail (SMTP) and PagerDuty, each retried within a bound.

Every sender returns a `Delivery` and never raises for a delivery problem: an undeliverable
notification is reported (in words, per channel), never a reason to fail or hide the rollback's
own outcome. Secrets (the webhook URL, the SMTP password, the routing key) are never put in a
message: senders build their own sentences and pass every secret to the HTTP client's redaction.

Retries (each channel has its own `max_wait` budget; the channels are sent at the same time):
- Slack and PagerDuty: `http_client.HttpClient`'s policy - 429, 5xx, connection errors and timeouts
  are retried with backoff (honouring Retry-After), anything else is final. PagerDuty documents
  exactly this split: "202 Accepted ... 400 Bad Request - Check that the JSON is valid: No retry;
  429 ... Yes - retry after some time; 500 or other 5XX ... Yes; Network Error ... Yes"
  (developer.pagerduty.com, Events API v2 Overview, "Response Codes & Retry Logic").
- SMTP: connection errors, timeouts, a dropped connection and 4xx replies (RFC 5321 section 4.2.1:
  "transient negative completion") are retried; 5xx replies, a refused login and a certificate
  that cannot be verified are final.

SMTP and TLS: credentials travel only over TLS whose certificate is verified
(`ssl.create_default_context()`: CERT_REQUIRED and hostname checking, against the system's trust
store or the given CA file). `community.general.mail` is not used: it calls `smtplib.SMTP_SSL()` and
`starttls()` without a context, and Python then uses `ssl._create_stdlib_context()`, which verifies
neither the certificate nor the host name - anyone on the path could read the password. Security
`try` (STARTTLS if offered, else plaintext) and `never` are refused when a password is set.
"""

from __future__ import annotations

import smtplib
import ssl
import time
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any

from ansible.module_utils.http_client import HttpClient, HttpError, HttpGaveUp, HttpTlsError, redact, server_message

DELIVERED = "delivered"
NOT_CONFIGURED = "not configured"

SMTP_SECURITY = ("starttls", "always", "try", "never")
SMTP_DEFAULT_PORTS = {"starttls": 587, "always": 465, "try": 25, "never": 25}
SMTP_BACKOFF_FIRST, SMTP_BACKOFF_CAP = 0.5, 8.0


@dataclass
class Delivery:
    """What became of one channel's message, in words an operator reads as they are."""

    channel: str
    words: str
    attempts: int = 0
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def delivered(self) -> bool:
        return self.words == DELIVERED or self.words.startswith(DELIVERED + " ")

    @property
    def failed(self) -> bool:
        return self.words.startswith("not delivered") or self.words.startswith("not sent: refused")


def not_delivered(channel: str, why: str, attempts: int = 0) -> Delivery:
    return Delivery(channel, f"not delivered: {why}", attempts)


# -- Slack ---------------------------------------------------------------------------------------
def slack_escape(text: str) -> str:
    """Slack's three control characters, as its formatting reference requires ("Escaping text":
    replace & with &amp;, < with &lt; and > with &gt;), so no text of ours becomes a link or mention."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_body(subject: str, text: str) -> dict[str, Any]:
    """An incoming-webhook message: the subject in bold, then the text (plain lines)."""
    return {"text": f"*{slack_escape(subject)}*\n{slack_escape(text)}"}


def send_slack(url: str, body: dict, client: HttpClient) -> Delivery:
    """POST to an incoming webhook. Slack answers 200 `ok`; anything else is a failure, said in words.

    The URL is the credential (api.slack.com/messaging/webhooks: "Keep it secret, keep it safe"), so
    it is never named: messages say "the Slack webhook".
    """
    try:
        answer = client.request("POST", url, json_body=body, what="post to the Slack webhook")
    except HttpGaveUp as exc:
        return not_delivered(
            "slack", f"the Slack webhook {exc.failure} on each of {exc.attempts} attempt(s)", exc.attempts
        )
    except HttpTlsError:
        return not_delivered("slack", "the Slack webhook's TLS certificate could not be verified (give ca_path)")
    except HttpError as exc:
        return not_delivered("slack", str(exc))
    if answer.status == 200:
        return Delivery("slack", DELIVERED, answer.attempts)
    said = redact(server_message(answer.text, answer.body), client.secrets)
    hint = {
        404: "the webhook does not exist (revoked or mistyped): create a new one and update SLACK_WEBHOOK_URL",
        410: "the channel is archived: point SLACK_WEBHOOK_URL at a live channel's webhook",
        403: "Slack refused the post (action_prohibited): ask a Slack admin",
    }.get(answer.status, "Slack refused the message")
    return not_delivered("slack", f"HTTP {answer.status} {said!r}: {hint}", answer.attempts)


# -- e-mail ----------------------------------------------------------------------------------------
@dataclass
class SmtpConfig:
    host: str
    port: int | None
    security: str
    username: str = ""
    password: str = ""
    ca_file: str | None = None
    timeout: float = 10.0

    @property
    def effective_port(self) -> int:
        return int(self.port or SMTP_DEFAULT_PORTS.get(self.security, 25))

    def refusal(self) -> str:
        """Why these settings must not be used (one sentence naming the fix), or ""."""
        if self.security not in SMTP_SECURITY:
            return (
                f"smtp security {self.security!r} is not one of {', '.join(SMTP_SECURITY)}: set rollback_smtp_secure."
            )
        if self.password and self.security in ("try", "never"):
            return (
                f"the SMTP password would travel {'possibly ' if self.security == 'try' else ''}unencrypted "
                f"(rollback_smtp_secure: {self.security}): set rollback_smtp_secure to starttls (port 587) or "
                "always (TLS, port 465), or remove SMTP_PASSWORD."
            )
        if self.password and not self.username:
            return "SMTP_PASSWORD is set but SMTP_USERNAME is not: set both, or neither."
        if self.username and not self.password:
            return "SMTP_USERNAME is set but SMTP_PASSWORD is not: set both, or neither."
        return ""

    def tls_context(self) -> ssl.SSLContext:
        """Verified TLS: certificate chain and host name, against ca_file or the system's trust store."""
        context = ssl.create_default_context(cafile=self.ca_file or None)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context


def mail_message(sender: str, recipients: list[str], subject: str, text: str, domain: str = "") -> EmailMessage:
    message = EmailMessage()
    message["Subject"] = subject
    message["From"] = sender
    message["To"] = ", ".join(recipients)
    message["Date"] = formatdate(localtime=False, usegmt=True)
    message["Message-ID"] = make_msgid(domain=domain or (sender.rpartition("@")[2] or None))
    message["Auto-Submitted"] = "auto-generated"  # RFC 3834: no auto-replies to an alert
    message.set_content(text)
    return message


class _Final(Exception):
    """A failure that another attempt cannot fix."""


def _deliver_once(cfg: SmtpConfig, message: EmailMessage, recipients: list[str]) -> dict:
    context = cfg.tls_context() if cfg.security != "never" else None
    port = cfg.effective_port
    if cfg.security == "always":
        smtp: smtplib.SMTP = smtplib.SMTP_SSL(cfg.host, port, timeout=cfg.timeout, context=context)
    else:
        smtp = smtplib.SMTP(cfg.host, port, timeout=cfg.timeout)
    try:
        smtp.ehlo()
        if cfg.security in ("starttls", "try"):
            if smtp.has_extn("starttls"):
                code, reply = smtp.starttls(context=context)
                if code != 220:
                    raise _Final(f"the SMTP server refused STARTTLS ({code} {reply.decode(errors='replace')})")
                smtp.ehlo()
            elif cfg.security == "starttls":
                raise _Final(
                    f"the SMTP server {cfg.host}:{port} offers no STARTTLS: use rollback_smtp_secure: always "
                    "(TLS from the first byte, usually port 465) or a server that offers STARTTLS"
                )
        if cfg.username:
            smtp.login(cfg.username, cfg.password)
        return smtp.send_message(message, to_addrs=recipients)
    finally:
        try:
            smtp.quit()
        except (smtplib.SMTPException, OSError):
            smtp.close()


def _classify(exc: BaseException, cfg: SmtpConfig, where: str) -> tuple[bool, str]:  # noqa: PLR0911 - one per kind
    """(final, what happened) for one failed attempt; final means another attempt cannot help."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        reason = getattr(exc, "verify_message", "") or "certificate verify failed"
        trusted = f"the CA file {cfg.ca_file}" if cfg.ca_file else "the system's trust store"
        return True, (
            f"the TLS certificate of the SMTP server {where} could not be verified against {trusted} ({reason}): "
            "nothing was sent; give the CA that signed it in rollback_smtp_ca_file"
        )
    if isinstance(exc, ssl.SSLError):
        return True, f"TLS with the SMTP server {where} failed ({exc.reason or exc}): nothing was sent"
    if isinstance(exc, smtplib.SMTPAuthenticationError):
        return True, (
            f"the SMTP server {where} refused the login of {cfg.username!r} ({exc.smtp_code}): check SMTP_USERNAME "
            "and SMTP_PASSWORD"
        )
    if isinstance(exc, smtplib.SMTPNotSupportedError):
        return True, f"the SMTP server {where} does not support what we need ({exc})"
    if isinstance(exc, _Final):
        return True, str(exc)
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        codes = {code for code, _ in exc.recipients.values()}
        said = ", ".join(f"{rcpt}: {code}" for rcpt, (code, _) in sorted(exc.recipients.items()))
        return not all(400 <= code < 500 for code in codes), f"the SMTP server {where} refused every recipient ({said})"
    if isinstance(exc, smtplib.SMTPResponseException):
        said = exc.smtp_error.decode(errors="replace") if isinstance(exc.smtp_error, bytes) else str(exc.smtp_error)
        # RFC 5321 section 4.2.1: 4yz is a "transient negative completion", 5yz a permanent one.
        return (
            not 400 <= exc.smtp_code < 500,
            f"the SMTP server {where} answered {exc.smtp_code} {' '.join(said.split())[:120]!r}",
        )
    if isinstance(exc, (smtplib.SMTPServerDisconnected, TimeoutError)):
        return False, f"the SMTP server {where} dropped the connection or timed out ({type(exc).__name__})"
    if isinstance(exc, OSError):  # refused, unreachable, DNS
        return False, f"the SMTP server {where} could not be reached ({type(exc).__name__}: {exc.strerror or exc})"
    return True, f"sending to the SMTP server {where} failed unexpectedly ({type(exc).__name__})"


def send_mail(
    cfg: SmtpConfig,
    message: EmailMessage,
    recipients: list[str],
    *,
    max_wait: float,
    sleep=time.sleep,
    clock=time.monotonic,
) -> Delivery:
    """Send `message` to `recipients`, retrying transient failures within `max_wait` seconds."""
    refusal = cfg.refusal()
    if refusal:
        return Delivery("mail", f"not sent: refused: {refusal}")
    where = f"{cfg.host}:{cfg.effective_port}"
    deadline = clock() + max_wait
    attempt = 0
    while True:
        attempt += 1
        try:
            refused = _deliver_once(cfg, message, recipients)
        except Exception as exc:
            final, failure = _classify(exc, cfg, where)
        else:
            if refused:
                partial = ", ".join(f"{rcpt}: {code}" for rcpt, (code, _) in sorted(refused.items()))
                words = f"{DELIVERED} to {len(recipients) - len(refused)} of {len(recipients)} recipient(s); refused: "
                return Delivery("mail", words + partial, attempt)
            return Delivery("mail", DELIVERED, attempt)
        wait = min(SMTP_BACKOFF_CAP, SMTP_BACKOFF_FIRST * 2 ** (attempt - 1))
        if final:
            return not_delivered("mail", failure, attempt)
        if clock() + wait > deadline:
            return not_delivered("mail", f"{failure}, on each of {attempt} attempt(s) within {max_wait:g} s", attempt)
        sleep(wait)


# -- PagerDuty Events API v2 -------------------------------------------------------------------------
# Why not community.general.pagerduty_alert / pagerduty_change (11.4.2, read for this): pagerduty_alert
# posts to the hard-coded https://events.pagerduty.com/v2/enqueue (no endpoint for the rehearsal's
# contract sink, nor for a proxy), sends a naive local-time timestamp, one link only, and neither
# module retries a 429/5xx, which PagerDuty asks clients to retry. pagerduty_change does take a `url`,
# but its custom_details are fixed to user/repo/revision/environment: no run id, job link, flag state
# or database revisions. Both would also mean one more controller task (and module process) per
# event. So the events are built here, from PagerDuty's own documentation:
#   alert events  POST {base}/v2/enqueue         developer.pagerduty.com/docs/events-api-v2/trigger-events
#   change events POST {base}/v2/change/enqueue  developer.pagerduty.com/docs/events-api-v2/send-change-events
ALERT_PATH = "/v2/enqueue"
CHANGE_PATH = "/v2/change/enqueue"
SEVERITIES = ("critical", "error", "warning", "info")
CLIENT = "emergency-rollback"


def iso_utc(epoch: float) -> str:
    """PagerDuty's timestamp: ISO 8601 (e.g. 2015-07-17T08:42:58.315+0000); we send UTC with an offset."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch)) + f".{int(epoch % 1 * 1000):03d}+0000"


def _links(job_url: str, runbook_url: str) -> list[dict[str, str]]:
    links = []
    if job_url.startswith(("http://", "https://")):
        links.append({"href": job_url, "text": "The rollback job"})
    if runbook_url.startswith(("http://", "https://", "file://")):
        links.append({"href": runbook_url, "text": "RUNBOOK.md: what to do"})
    return links


def trigger_event(
    routing_key: str,
    *,
    dedup_key: str,
    summary: str,
    source: str,
    severity: str,
    component: str,
    group: str,
    event_class: str,
    custom_details: dict,
    timestamp: float,
    job_url: str = "",
    runbook_url: str = "",
) -> dict[str, Any]:
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {SEVERITIES}")
    event: dict[str, Any] = {
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": dedup_key,
        "payload": {
            "summary": summary,
            "source": source,
            "severity": severity,
            "timestamp": iso_utc(timestamp),
            "component": component,
            "group": group,
            "class": event_class,
            "custom_details": custom_details,
        },
        "client": CLIENT,
    }
    if job_url.startswith(("http://", "https://")):
        event["client_url"] = job_url
    links = _links(job_url, runbook_url)
    if links:
        event["links"] = links
    return event


def resolve_event(routing_key: str, dedup_key: str) -> dict[str, Any]:
    """Resolve the open alert of `dedup_key`; PagerDuty drops it when none is open (nothing to undo)."""
    return {"routing_key": routing_key, "event_action": "resolve", "dedup_key": dedup_key}


def change_event(
    routing_key: str, *, summary: str, source: str, timestamp: float, custom_details: dict, job_url: str = ""
) -> dict[str, Any]:
    event: dict[str, Any] = {
        "routing_key": routing_key,
        "payload": {
            "summary": summary,
            "source": source,
            "timestamp": iso_utc(timestamp),
            "custom_details": custom_details,
        },
    }
    links = _links(job_url, "")
    if links:
        event["links"] = links
    return event


def send_pagerduty(base_url: str, event: dict, client: HttpClient, channel: str) -> Delivery:
    """POST one event; 202 is delivered. The routing key is never named (the client redacts it too)."""
    path = CHANGE_PATH if "event_action" not in event else ALERT_PATH
    url = base_url.rstrip("/") + path
    action = event.get("event_action", "change")
    what = f"send the PagerDuty {action} event"
    try:
        answer = client.request("POST", url, json_body=event, what=what)
    except HttpGaveUp as exc:
        return not_delivered(
            channel, f"PagerDuty {exc.failure} on each of {exc.attempts} attempt(s) ({action})", exc.attempts
        )
    except HttpTlsError:
        return not_delivered(channel, f"PagerDuty's TLS certificate at {client.safe_url(url)} could not be verified")
    except HttpError as exc:
        return not_delivered(channel, str(exc))
    if answer.status == 202:
        detail = {"event_action": action}
        if isinstance(answer.body, dict) and answer.body.get("dedup_key"):
            detail["dedup_key"] = answer.body["dedup_key"]
        return Delivery(channel, DELIVERED, answer.attempts, detail)
    errors = ""
    if isinstance(answer.body, dict) and isinstance(answer.body.get("errors"), list):
        errors = "; ".join(str(e) for e in answer.body["errors"])[:300]
    said = redact(errors or server_message(answer.text, answer.body), client.secrets)
    hint = (
        "check PAGERDUTY_ROUTING_KEY (the Events API v2 integration key of the service)"
        if answer.status in (400, 401, 403, 404)
        else "PagerDuty refused it"
    )
    return not_delivered(channel, f"HTTP {answer.status} {said!r} ({action}): {hint}", answer.attempts)
