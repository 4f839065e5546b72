"""Notification sinks of the rehearsal stack: a real SMTP server and a Slack-compatible webhook receiver.

- SMTP (aiosmtpd): appends every message to `mail.jsonl`. AUTH (PLAIN/LOGIN, no TLS on 127.0.0.1) is
  offered and optional; a client that logs in must give the credentials in SINK_SMTP_USERNAME /
  SINK_SMTP_PASSWORD (else `535`), so a wrong SMTP password is a real failure. The password is
  never stored; the record says who logged in.
- Incoming webhook (Slack's contract, as documented at api.slack.com/messaging/webhooks and in Slack's
  changelog "Improving error conditions for Incoming Webhooks"): only the one secret path
  `/services/T.../B.../<token>` exists (any other is `404 no_service`); the body is JSON
  (`Content-Type: application/json`) or a form with a `payload` field holding JSON; it needs a
  non-empty `text`, or `blocks`, or `attachments`, else `400 no_text`; a body that is not a JSON
  object is `400 invalid_payload`; malformed `blocks` are `400 invalid_blocks`; more than 100
  attachments are `400 too_many_attachments`. Success is `200` with the body `ok`, as Slack answers.
  Every post, accepted or not, is appended to `webhook.jsonl` (without the secret path).

Read back with `read_jsonl()`, or over HTTP: `GET /_sink/webhook`, `GET /_sink/mail`.
Run:  SINK_WEBHOOK_PATH=/services/T1/B1/x python -m rehearsal.sinks --dir DIR --smtp-port P --webhook-port Q
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import email
import email.policy
import json
import os
import secrets
import signal
import sys
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs

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


def make_webhook_handler(secret_path: str, store: JsonlStore, mail_store: JsonlStore):
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
            elif self.path in ("/_sink/webhook", "/_sink/mail"):
                records = read_jsonl((store if self.path.endswith("webhook") else mail_store).path)
                self._reply(200, json.dumps(records), "application/json")
            else:
                self._reply(404, "not_found", "text/plain")

        def do_POST(self):
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                self._reply(413, "request_too_large", "text/plain")
                self.close_connection = True
                return
            body = self.rfile.read(length)
            if self.path.split("?")[0] != secret_path:
                status, answer, message = 404, "no_service", None
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

    def __init__(self, store: JsonlStore, username: str = "", password: str = ""):
        self.store, self.username, self.password = store, username, password

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
    parser = argparse.ArgumentParser(prog="python -m rehearsal.sinks", description="SMTP and Slack webhook sinks.")
    parser.add_argument("--dir", required=True, type=Path, help="where mail.jsonl and webhook.jsonl go")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--smtp-port", type=int, required=True)
    parser.add_argument("--webhook-port", type=int, required=True)
    args = parser.parse_args(argv)
    secret_path = os.environ.get("SINK_WEBHOOK_PATH", "")
    if not secret_path.startswith("/services/"):
        print("rehearsal.sinks: set SINK_WEBHOOK_PATH=/services/T.../B.../<token> in the environment.", file=sys.stderr)
        return 2

    from aiosmtpd.smtp import SMTP  # noqa: PLC0415

    mail = JsonlStore(args.dir / "mail.jsonl")
    hooks = JsonlStore(args.dir / "webhook.jsonl")
    httpd = ThreadingHTTPServer((args.host, args.webhook_port), make_webhook_handler(secret_path, hooks, mail))
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, name="webhook", daemon=True).start()

    loop = asyncio.new_event_loop()
    handler = MailStore(mail, os.environ.get("SINK_SMTP_USERNAME", ""), os.environ.get("SINK_SMTP_PASSWORD", ""))

    def smtp() -> SMTP:
        return SMTP(
            handler,
            hostname="rehearsal-smtp-sink",
            auth_require_tls=False,  # 127.0.0.1 only; the rehearsal has no certificates
            auth_required=False,
            authenticator=handler.authenticate,
        )

    server = loop.run_until_complete(loop.create_server(smtp, args.host, args.smtp_port))
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, loop.stop)
    print(f"sinks: SMTP on {args.host}:{args.smtp_port}, webhook on {args.host}:{args.webhook_port}", flush=True)
    try:
        loop.run_forever()
    finally:
        server.close()
        httpd.shutdown()
        with contextlib.suppress(Exception):
            loop.run_until_complete(server.wait_closed())
        loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
