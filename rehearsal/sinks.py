"""Notification sinks of the rehearsal stack: a real SMTP server (TLS), a Slack-compatible webhook receiver and
a PagerDuty Events API v2 contract sink.

- SMTP (aiosmtpd): appends every message to `mail.jsonl`. With `--tls-dir`, it serves STARTTLS on
  `--smtp-port` and TLS from the first byte on `--smtps-port`, with a server certificate for
  127.0.0.1 signed by a test CA that it generates at start in that folder (`ca.pem` is what a client
  trusts; the keys stay there, 0600, never committed). AUTH (PLAIN/LOGIN) is offered only over TLS
  (aiosmtpd's auth_require_tls: "538 Encryption required" otherwise), as real submission servers do,
  and is optional; a client that logs in must give SINK_SMTP_USERNAME / SINK_SMTP_PASSWORD (else
  `535`). The password is never stored; the record says who logged in and whether TLS was used.
- Incoming webhook (Slack's contract, as documented at api.slack.com/messaging/webhooks and in Slack's
  changelog "Improving error conditions for Incoming Webhooks"): only the one secret path
  `/services/T.../B.../<token>` exists (any other is `404 no_service`); the body is JSON
  (`Content-Type: application/json`) or a form with a `payload` field holding JSON; it needs a
  non-empty `text`, or `blocks`, or `attachments`, else `400 no_text`; a body that is not a JSON
  object is `400 invalid_payload`; malformed `blocks` are `400 invalid_blocks`; more than 100
  attachments are `400 too_many_attachments`. Success is `200` with the body `ok`, as Slack answers.
  Every post, accepted or not, is appended to `webhook.jsonl` (without the secret path).
- PagerDuty Events API v2 (same HTTP port): `POST /v2/enqueue` (alert events) and
  `POST /v2/change/enqueue` (change events), validated as PagerDuty documents them (see
  `pagerduty_verdict`); `202` with `{"status": "success", "message": "Event processed", "dedup_key"}`,
  `400` with `{"status": "invalid event", "message": "Event object is invalid", "errors": [...]}`.
  Only the routing key in SINK_PAGERDUTY_ROUTING_KEY is accepted. Every event is appended to
  `pagerduty.jsonl` without its routing key; `pagerduty_incidents()` replays them as PagerDuty
  would (one alert per open dedup_key; a resolve closes it; a resolve without an open alert is dropped).
- Faults, for drills and tests: `POST /_sink/faults` with `{"route": "pagerduty"|"slack"|"smtp", "status": 503,
  "count": 2}` answers the next `count` requests of that route with `status` (for `smtp`, the reply to
  DATA, e.g. 451), recorded as faults where the route records anything.

Read back with `read_jsonl()`, or over HTTP: `GET /_sink/webhook`, `GET /_sink/mail`, `GET /_sink/pagerduty`.
Run:  SINK_WEBHOOK_PATH=/services/T1/B1/x SINK_PAGERDUTY_ROUTING_KEY=<32 chars> \
      python -m rehearsal.sinks --dir DIR --smtp-port P --webhook-port Q [--tls-dir T --smtps-port R]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import datetime as dt
import email
import email.policy
import json
import os
import secrets
import signal
import ssl
import sys
import threading
import uuid
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs

from rehearsal.pgtls import make_certificates

MAX_ATTACHMENTS = 100
MAX_BODY = 1024 * 1024


def now() -> str:
    return datetime.now(UTC).isoformat()


class JsonlStore:
    """Append-only JSONL file, safe across the SMTP and HTTP threads."""

    def __init__(self, path: Path):
        self.path = path
        self.lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(exist_ok=True)

    def append(self, record: dict) -> None:
        line = json.dumps(record, sort_keys=True) + "\n"
        with self.lock, self.path.open("a") as out:
            out.write(line)
            out.flush()


def read_jsonl(path: str | Path) -> list[dict]:
    """Every record of a sink file, oldest first (empty when nothing arrived yet)."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# -- Slack's incoming-webhook contract -------------------------------------------------------------
def slack_verdict(content_type: str, body: bytes) -> tuple[int, str, object]:  # noqa: PLR0911 - one per error
    """(HTTP status, Slack's response body, the parsed message or None) for one post."""
    media = content_type.split(";", maxsplit=1)[0].strip().lower()
    try:
        text = body.decode("utf-8")
        if media == "application/x-www-form-urlencoded":
            fields = parse_qs(text, strict_parsing=True)
            if "payload" not in fields:
                return 400, "invalid_payload", None
            text = fields["payload"][0]
        message = json.loads(text)
    except (UnicodeDecodeError, ValueError):
        return 400, "invalid_payload", None
    if not isinstance(message, dict):
        return 400, "invalid_payload", None
    blocks, attachments, text_field = message.get("blocks"), message.get("attachments"), message.get("text")
    if text_field is not None and not isinstance(text_field, str):
        return 400, "invalid_payload", message
    if blocks is not None and (
        not isinstance(blocks, list) or not all(isinstance(b, dict) and b.get("type") for b in blocks)
    ):
        return 400, "invalid_blocks", message
    if attachments is not None:
        if not isinstance(attachments, list) or not all(isinstance(a, dict) for a in attachments):
            return 400, "invalid_payload", message
        if len(attachments) > MAX_ATTACHMENTS:
            return 400, "too_many_attachments", message
    if not (text_field or "").strip() and not blocks and not attachments:
        return 400, "no_text", message
    return 200, "ok", message


# -- PagerDuty's Events API v2 contract --------------------------------------------------------------
# From PagerDuty's documentation (developer.pagerduty.com, "Events API v2": "Send an Alert Event",
# "Send a Change Event", "Overview" > "Response Codes & Retry Logic" and "Size Limits"; the OpenAPI
# description github.com/PagerDuty/api-schema reference/events-v2/openapiv3.json):
# - alert events: `routing_key` (required, "the 32 character Integration Key"), `event_action`
#   (required: trigger, acknowledge or resolve), `dedup_key` (at most 255 characters; "Required unless
#   the event_type is trigger"), and for a trigger `payload` with `summary` (required, at most 1024
#   characters), `source` (required), `severity` (required: critical, error, warning or info), optional
#   `timestamp` (ISO 8601), `component`, `group`, `class`, `custom_details` (an object); `links` (each
#   with `href`) and `images` (each with `src`) optional.
# - change events: `routing_key` (required), `payload.summary` (required, at most 1024 characters),
#   optional `payload.source`, `payload.timestamp`, `payload.custom_details`, `links`.
# - answers: 202 accepted ({"status": "success", "message": "Event processed", "dedup_key": ...}),
#   400 for an invalid event ({"status": "invalid event", "message": "Event object is invalid",
#   "errors": [...]}), "Events API payloads are limited to 512 KB".
# PagerDuty's exact wording of each error and its answer to a well-formed but unknown routing key
# are not documented; the sink answers 400 naming the problem, which is what a client must handle.
PD_KEY_LENGTH = 32
PD_SUMMARY_MAX = 1024
PD_DEDUP_MAX = 255
PD_MAX_BODY = 512 * 1024
PD_ACTIONS = ("trigger", "acknowledge", "resolve")
PD_SEVERITIES = ("critical", "error", "warning", "info")


def _iso8601(value: object) -> bool:
    if not isinstance(value, str) or not value:
        return False
    text = value.replace("Z", "+00:00")
    if len(text) > 5 and text[-5] in "+-" and text[-3] != ":":  # +0000 -> +00:00
        text = text[:-2] + ":" + text[-2:]
    try:
        datetime.fromisoformat(text)
    except ValueError:
        return False
    return True


def _links_errors(event: dict) -> list[str]:
    errors = []
    for key, required in (("links", "href"), ("images", "src")):
        if key in event:
            items = event[key]
            if not isinstance(items, list) or not all(
                isinstance(i, dict) and isinstance(i.get(required), str) and i[required] for i in items
            ):
                errors.append(f"'{key}' must be a list of objects, each with '{required}'")
    return errors


def _key_errors(event: dict, routing_key: str) -> list[str]:
    key = event.get("routing_key")
    if not isinstance(key, str) or not key.strip():
        return ["'routing_key' is missing or blank"]
    if len(key) != PD_KEY_LENGTH:
        return [f"Length of 'routing_key' is incorrect (should be {PD_KEY_LENGTH} characters)"]
    if not secrets.compare_digest(key.encode(), routing_key.encode()):
        return ["Invalid routing key"]
    return []


def _summary_errors(payload: dict) -> list[str]:
    summary = payload.get("summary")
    if not isinstance(summary, str) or not summary.strip():
        return ["'payload.summary' is missing or blank"]
    if len(summary) > PD_SUMMARY_MAX:
        return [f"'payload.summary' is longer than {PD_SUMMARY_MAX} characters ({len(summary)})"]
    return []


def _alert_errors(event: dict) -> list[str]:
    errors = []
    action = event.get("event_action")
    if action not in PD_ACTIONS:
        errors.append(f"'event_action' is invalid (expected one of {', '.join(PD_ACTIONS)})")
    dedup = event.get("dedup_key")
    if dedup is not None and (not isinstance(dedup, str) or len(dedup) > PD_DEDUP_MAX):
        errors.append(f"'dedup_key' must be a string of at most {PD_DEDUP_MAX} characters")
    if action in ("acknowledge", "resolve") and not dedup:
        errors.append(f"'dedup_key' is required for event_action {action}")
    if action == "trigger":
        payload = event.get("payload")
        if not isinstance(payload, dict):
            return [*errors, "'payload' is missing or not an object"]
        errors += _summary_errors(payload)
        if not isinstance(payload.get("source"), str) or not payload["source"].strip():
            errors.append("'payload.source' is missing or blank")
        if payload.get("severity") not in PD_SEVERITIES:
            errors.append(f"'payload.severity' is invalid (expected one of {', '.join(PD_SEVERITIES)})")
        if "timestamp" in payload and not _iso8601(payload["timestamp"]):
            errors.append("'payload.timestamp' is not an ISO 8601 timestamp")
        for key in ("component", "group", "class"):
            if key in payload and not isinstance(payload[key], str):
                errors.append(f"'payload.{key}' must be a string")
        if "custom_details" in payload and not isinstance(payload["custom_details"], dict):
            errors.append("'payload.custom_details' must be an object")
    return errors + _links_errors(event)


def _change_errors(event: dict) -> list[str]:
    payload = event.get("payload")
    if not isinstance(payload, dict):
        return ["'payload' is missing or not an object"]
    errors = _summary_errors(payload)
    if "source" in payload and not isinstance(payload["source"], str):
        errors.append("'payload.source' must be a string")
    if "timestamp" in payload and not _iso8601(payload["timestamp"]):
        errors.append("'payload.timestamp' is not an ISO 8601 timestamp")
    if "custom_details" in payload and not isinstance(payload["custom_details"], dict):
        errors.append("'payload.custom_details' must be an object")
    return errors + _links_errors(event)


def pagerduty_verdict(path: str, body: bytes, routing_key: str) -> tuple[int, dict, dict | None]:
    """(HTTP status, PagerDuty's answer, the event or None) for one POST to /v2/enqueue or /v2/change/enqueue."""
    if len(body) > PD_MAX_BODY:
        return (
            400,
            {"status": "invalid event", "message": "Event object is invalid", "errors": ["larger than 512 KB"]},
            None,
        )
    try:
        event = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        event = None
    if not isinstance(event, dict):
        unrecognized = {"status": "Unrecognized object", "message": "Event object format is unrecognized"}
        return 400, {**unrecognized, "errors": ["JSON parse error"]}, None
    change = path == "/v2/change/enqueue"
    errors = _key_errors(event, routing_key) + (_change_errors(event) if change else _alert_errors(event))
    if errors:
        return 400, {"status": "invalid event", "message": "Event object is invalid", "errors": errors}, event
    if change:
        return 202, {"status": "success", "message": "Change event processed"}, event
    dedup = event.get("dedup_key") or uuid.uuid4().hex
    return 202, {"status": "success", "message": "Event processed", "dedup_key": dedup}, event


def pagerduty_incidents(records: list[dict]) -> list[dict]:
    """Replay the accepted alert events of `pagerduty.jsonl` as PagerDuty would, oldest first.

    "Submitting subsequent events for the same dedup_key will result in those events being applied
    to an open alert matching that dedup_key. Once the alert is resolved, any further events with the
    same dedup_key will create a new alert (for trigger events) or be dropped (for acknowledge and
    resolve events)." Each incident: dedup_key, status (triggered | acknowledged | resolved), the
    number of triggers, and the events applied to it; `dropped` lists events that found no alert.
    """
    incidents: list[dict] = []
    open_by_key: dict[str, dict] = {}
    for record in records:
        if record.get("endpoint") != "alert" or not record.get("accepted"):
            continue
        event, key = record["event"], record["dedup_key"]
        action = event.get("event_action")
        incident = open_by_key.get(key)
        if action == "trigger":
            if incident is None:
                incident = {"dedup_key": key, "status": "triggered", "triggers": 0, "events": [], "dropped": []}
                incidents.append(incident)
                open_by_key[key] = incident
            incident["triggers"] += 1
            incident["events"].append(record)
        elif incident is None:
            incidents.append({"dedup_key": key, "status": "dropped", "triggers": 0, "events": [], "dropped": [record]})
        else:
            incident["events"].append(record)
            incident["status"] = "resolved" if action == "resolve" else "acknowledged"
            if action == "resolve":
                del open_by_key[key]
    return incidents


# -- TLS of the SMTP sink: a test CA made at start ----------------------------------------------------
def ensure_test_tls(directory: Path, host: str = "127.0.0.1") -> dict[str, Path]:
    """A test CA and a server certificate for `host` in `directory` (made now unless valid ones exist).

    `ca.pem` is what clients trust; `server.pem`/`server.key` (0600) are the sink's. Nothing here is
    committed: the run folder is git-ignored, and every new run folder gets a new CA.
    """
    from cryptography import x509  # noqa: PLC0415 - only the SMTP sink with TLS needs it

    files = {"ca": directory / "ca.pem", "cert": directory / "server.pem", "key": directory / "server.key"}
    if all(f.exists() for f in files.values()):
        current = x509.load_pem_x509_certificate(files["cert"].read_bytes())
        if current.not_valid_after_utc - datetime.now(UTC) > dt.timedelta(days=1):
            return files
    made = make_certificates(directory, host, f"rehearsal SMTP test CA {secrets.token_hex(4)}")
    directory.chmod(0o700)
    return {"ca": made.ca_cert, "cert": made.server_cert, "key": made.server_key}


def server_tls_context(files: dict[str, Path]) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(files["cert"], files["key"])
    return context


class Faults:
    """Queued answers per route (`pagerduty`, `slack`): the next N requests get this status instead."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.queued: dict[str, collections.deque] = collections.defaultdict(collections.deque)

    def add(self, route: str, status: int, count: int) -> None:
        """Queue `count` answers of `status`; a count of 0 clears the route's queue."""
        with self.lock:
            if count <= 0:
                self.queued[route].clear()
            self.queued[route].extend([status] * count)

    def take(self, route: str) -> int | None:
        with self.lock:
            queue = self.queued.get(route)
            return queue.popleft() if queue else None


def make_webhook_handler(
    secret_path: str,
    store: JsonlStore,
    mail_store: JsonlStore,
    *,
    pagerduty_store: JsonlStore | None = None,
    routing_key: str = "",
    faults: Faults | None = None,
):
    stores = {"/_sink/webhook": store, "/_sink/mail": mail_store}
    if pagerduty_store is not None:
        stores["/_sink/pagerduty"] = pagerduty_store
    faults = faults or Faults()

    class Handler(BaseHTTPRequestHandler):
        server_version = "rehearsal-webhook-sink"
        protocol_version = "HTTP/1.1"

        def log_message(self, *_args):  # quiet: the JSONL file is the record
            pass

        def _reply(self, status: int, body: str, content_type: str = "text/html") -> None:
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path == "/healthz":
                self._reply(200, "ok", "text/plain")
            elif self.path in stores:
                self._reply(200, json.dumps(read_jsonl(stores[self.path].path)), "application/json")
            else:
                self._reply(404, "not_found", "text/plain")

        def _pagerduty(self, path: str, body: bytes) -> None:
            fault = faults.take("pagerduty")
            if fault is not None:
                status, answer, event = fault, {"status": "error", "message": "injected fault"}, None
            else:
                status, answer, event = pagerduty_verdict(path, body, routing_key)
            if event is not None and "routing_key" in event:  # never stored: the key is the credential
                event = {**event, "routing_key": "<accepted>" if status == 202 else "<refused>"}
            pagerduty_store.append(
                {
                    "received_at": now(),
                    "endpoint": "change" if path == "/v2/change/enqueue" else "alert",
                    "accepted": status == 202,
                    "status": status,
                    "fault": fault is not None,
                    "errors": answer.get("errors", []),
                    "dedup_key": answer.get("dedup_key"),
                    "event": event,
                }
            )
            self._reply(status, json.dumps(answer), "application/json")

        def do_POST(self):
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                self._reply(413, "request_too_large", "text/plain")
                self.close_connection = True
                return
            body = self.rfile.read(length)
            path = self.path.split("?")[0]
            if path == "/_sink/faults":
                try:
                    asked = json.loads(body)
                    faults.add(str(asked["route"]), int(asked["status"]), int(asked.get("count", 1)))
                except (ValueError, KeyError, TypeError):
                    self._reply(400, "give {route, status, count}", "text/plain")
                    return
                self._reply(200, "ok", "text/plain")
                return
            if path in ("/v2/enqueue", "/v2/change/enqueue") and pagerduty_store is not None:
                self._pagerduty(path, body)
                return
            fault = faults.take("slack") if path == secret_path else None
            if path != secret_path:
                status, answer, message = 404, "no_service", None
            elif fault is not None:
                status, answer, message = fault, "injected_fault", None
            else:
                status, answer, message = slack_verdict(self.headers.get("Content-Type", ""), body)
            store.append(
                {
                    "received_at": now(),
                    "accepted": status == 200,
                    "status": status,
                    "response": answer,
                    "content_type": self.headers.get("Content-Type"),
                    "message": message,
                    "body": body.decode("utf-8", errors="replace") if message is None else None,
                }
            )
            self._reply(status, answer)

    return Handler


# -- SMTP -------------------------------------------------------------------------------------------
class MailStore:
    """aiosmtpd handler: every message is accepted and stored, parsed; optional AUTH against one account."""

    def __init__(
        self,
        store: JsonlStore,
        username: str = "",
        password: str = "",
        implicit_tls: bool = False,
        faults: Faults | None = None,
    ):
        self.store, self.username, self.password = store, username, password
        self.implicit_tls = implicit_tls  # the server speaks TLS from the first byte (no STARTTLS)
        self.faults = faults or Faults()

    def authenticate(self, _server, _session, _envelope, mechanism, auth_data):
        from aiosmtpd.smtp import AuthResult, LoginPassword  # noqa: PLC0415

        ok = (
            bool(self.username)
            and mechanism in ("PLAIN", "LOGIN")
            and isinstance(auth_data, LoginPassword)
            and auth_data.login.decode(errors="replace") == self.username
            and secrets.compare_digest(auth_data.password, self.password.encode())
        )
        # Only the login name is kept for the session (and the record), never the password.
        return AuthResult(success=ok, handled=False, auth_data=self.username if ok else None)

    async def handle_DATA(self, _server, session, envelope):
        fault = self.faults.take("smtp")
        if fault is not None:  # e.g. 451: "Requested action aborted: local error in processing" (RFC 5321)
            return f"{fault} injected fault: message not accepted"
        raw = envelope.original_content or envelope.content
        parsed = email.message_from_bytes(raw, policy=email.policy.default)
        part = parsed.get_body(preferencelist=("plain", "html")) if parsed.is_multipart() else parsed
        try:
            text = part.get_content() if part is not None else ""
        except (LookupError, ValueError):
            text = raw.decode("utf-8", errors="replace")
        self.store.append(
            {
                "received_at": now(),
                "peer": list(session.peer) if session.peer else None,
                "authenticated_as": session.auth_data if session.authenticated else None,
                "tls": self.implicit_tls or session.ssl is not None,
                "mail_from": envelope.mail_from,
                "rcpt_tos": list(envelope.rcpt_tos),
                "subject": str(parsed.get("Subject", "")),
                "from": str(parsed.get("From", "")),
                "to": str(parsed.get("To", "")),
                "text": text,
                "raw": raw.decode("utf-8", errors="replace"),
            }
        )
        return "250 Message accepted for delivery"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rehearsal.sinks", description="SMTP, Slack webhook and PagerDuty Events API v2 sinks."
    )
    parser.add_argument("--dir", required=True, type=Path, help="where mail.jsonl, webhook.jsonl, pagerduty.jsonl go")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--smtp-port", type=int, required=True, help="SMTP (STARTTLS offered with --tls-dir)")
    parser.add_argument("--smtps-port", type=int, help="SMTP over TLS from the first byte (needs --tls-dir)")
    parser.add_argument("--tls-dir", type=Path, help="the test CA and server certificate (made here at start)")
    parser.add_argument("--webhook-port", type=int, required=True, help="the Slack webhook and PagerDuty API")
    args = parser.parse_args(argv)
    secret_path = os.environ.get("SINK_WEBHOOK_PATH", "")
    if not secret_path.startswith("/services/"):
        print("rehearsal.sinks: set SINK_WEBHOOK_PATH=/services/T.../B.../<token> in the environment.", file=sys.stderr)
        return 2
    routing_key = os.environ.get("SINK_PAGERDUTY_ROUTING_KEY", "")
    if routing_key and len(routing_key) != PD_KEY_LENGTH:
        print(f"rehearsal.sinks: SINK_PAGERDUTY_ROUTING_KEY must be {PD_KEY_LENGTH} characters.", file=sys.stderr)
        return 2
    if args.smtps_port and not args.tls_dir:
        print("rehearsal.sinks: --smtps-port needs --tls-dir.", file=sys.stderr)
        return 2

    from aiosmtpd.smtp import SMTP  # noqa: PLC0415

    tls = server_tls_context(ensure_test_tls(args.tls_dir, args.host)) if args.tls_dir else None
    mail = JsonlStore(args.dir / "mail.jsonl")
    hooks = JsonlStore(args.dir / "webhook.jsonl")
    pages = JsonlStore(args.dir / "pagerduty.jsonl")
    faults = Faults()
    handler_class = make_webhook_handler(
        secret_path, hooks, mail, pagerduty_store=pages, routing_key=routing_key, faults=faults
    )
    httpd = ThreadingHTTPServer((args.host, args.webhook_port), handler_class)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, name="webhook", daemon=True).start()

    loop = asyncio.new_event_loop()
    username, password = os.environ.get("SINK_SMTP_USERNAME", ""), os.environ.get("SINK_SMTP_PASSWORD", "")

    def smtp(implicit_tls: bool) -> SMTP:
        handler = MailStore(mail, username, password, implicit_tls=implicit_tls, faults=faults)
        return SMTP(
            handler,
            hostname="rehearsal-smtp-sink",
            tls_context=None if implicit_tls else tls,  # STARTTLS offered on the plain port
            # AUTH only once the connection is encrypted (STARTTLS done, or TLS from the first byte);
            # without certificates (no --tls-dir), the old plaintext behaviour on 127.0.0.1.
            auth_require_tls=tls is not None and not implicit_tls,
            auth_required=False,
            authenticator=handler.authenticate,
        )

    servers = [loop.run_until_complete(loop.create_server(lambda: smtp(False), args.host, args.smtp_port))]
    if args.smtps_port:
        servers.append(
            loop.run_until_complete(loop.create_server(lambda: smtp(True), args.host, args.smtps_port, ssl=tls))
        )
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, loop.stop)
    tls_note = f" (STARTTLS; TLS on {args.smtps_port})" if tls else " (no TLS)"
    print(
        f"sinks: SMTP on {args.host}:{args.smtp_port}{tls_note}, "
        f"webhook and PagerDuty on {args.host}:{args.webhook_port}",
        flush=True,
    )
    try:
        loop.run_forever()
    finally:
        for server in servers:
            server.close()
        httpd.shutdown()
        with contextlib.suppress(Exception):
            for server in servers:
                loop.run_until_complete(server.wait_closed())
        loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
