"""A small threaded HTTP server for contract fakes: request log, injected faults, optional TLS.

A fake subclasses `FakeApi` and implements `handle(request) -> (status, headers, body)`. Before
`handle` runs, queued faults answer the first N calls (e.g. 429 with Retry-After, 500, or a hang
longer than the client's timeout), exactly as a struggling real service would.
"""

from __future__ import annotations

import json
import ssl
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-cased names
    raw_body: bytes
    at: float = field(default_factory=time.monotonic)

    def json(self) -> Any:
        return json.loads(self.raw_body) if self.raw_body else None


@dataclass
class Fault:
    status: int = 500
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None
    hang: float = 0.0  # seconds to sleep before answering (longer than the client's timeout = a timeout)


Answer = tuple[int, dict[str, str], Any]


class FakeApi:
    """Base: start()/stop(), `requests` (everything received, in order), `fail_next()`."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self._faults: deque[Fault] = deque()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self.url = ""

    # -- faults -----------------------------------------------------------------------------------
    def fail_next(self, count: int, status: int = 500, headers: dict[str, str] | None = None, **kwargs) -> None:
        """Answer the next `count` calls (any route) with `status` (and headers) instead of handling them."""
        with self._lock:
            self._faults.extend(Fault(status, dict(headers or {}), **kwargs) for _ in range(count))

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()
            self.requests.clear()

    # -- to implement ------------------------------------------------------------------------------
    def handle(self, request: Request) -> Answer:
        raise NotImplementedError

    # -- server ------------------------------------------------------------------------------------
    def _dispatch(self, handler: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(handler.path)
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        request = Request(
            handler.command,
            parts.path,
            parse_qs(parts.query),
            {key.lower(): value for key, value in handler.headers.items()},
            raw,
        )
        with self._lock:
            self.requests.append(request)
            fault = self._faults.popleft() if self._faults else None
        if fault is not None:
            if fault.hang:
                time.sleep(fault.hang)
            status, headers, body = fault.status, fault.headers, fault.body or {"message": "injected fault"}
        else:
            status, headers, body = self.handle(request)
        payload = b"" if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        try:
            handler.send_response(status)
            if payload:
                handler.send_header("Content-Type", headers.pop("Content-Type", "application/json"))
            for key, value in headers.items():
                handler.send_header(key, value)
            handler.send_header("Content-Length", str(len(payload)))
            handler.end_headers()
            handler.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (its timeout) before we answered

    def start(self, host: str = "127.0.0.1", certfile: str | None = None, keyfile: str | None = None) -> str:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output clean
                pass

            def _any(self):
                fake._dispatch(self)

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _any

        server = ThreadingHTTPServer((host, 0), Handler)
        server.daemon_threads = True
        scheme = "http"
        if certfile:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(certfile, keyfile)
            server.socket = context.wrap_socket(server.socket, server_side=True)
            scheme = "https"
        self._server = server
        threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name=type(self).__name__, daemon=True
        ).start()
        self.url = f"{scheme}://{host}:{server.server_address[1]}"
        return self.url

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self):
        if not self.url:
            self.start()
        return self

    def __exit__(self, *exc):
        self.stop()


def error(status: int, code: str, message: str) -> Answer:
    return status, {}, {"code": code, "message": message}
