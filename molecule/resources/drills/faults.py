"""The faults a drill puts in the rollback's way: a failing flag API, a long transaction holding a lock."""

from __future__ import annotations

import http.client
import json
import re
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import psycopg2

# The Unleash admin API's write of a flag's state in one environment (flag_providers.UnleashProvider.write).
SWITCH_PATH = re.compile(r"^/api/admin/projects/[^/]+/features/[^/]+/environments/[^/]+/(on|off)$")
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "host", "content-length"}
_BODIES = {
    500: {"name": "InternalError", "message": "drill: the flag API fails (injected 500)"},
    503: {"name": "ServiceUnavailable", "message": "drill: the flag API is unavailable (injected 503)"},
    401: {"name": "AuthenticationRequired", "message": "drill: the API token is not accepted (injected 401)"},
}


class FlagFaultProxy:
    """An HTTP proxy in front of the real Unleash: everything passes through, except that every write of a
    flag's state (POST .../environments/<env>/on|off) is answered with `status` and never reaches Unleash.

    So the rollback's preflight reads the real flag and plans, and its flag step meets the outage: a
    flag API that fails writes for longer than the retry budget (500), or refuses the key (401).
    `hits` lists every answered write (time, method, path) so a drill can count the attempts.
    """

    def __init__(self, upstream: str, status: int):
        if status not in _BODIES:
            raise ValueError(f"status must be one of {sorted(_BODIES)}")
        self.upstream = urlsplit(upstream.rstrip("/"))
        self.status = status
        self.hits: list[dict] = []
        self.passed = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_args):  # quiet: the drill reports what matters
                pass

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if SWITCH_PATH.match(self.path.split("?", 1)[0]):
                    proxy.hits.append({"t": time.time(), "method": self.command, "path": self.path})
                    payload = json.dumps(_BODIES[proxy.status]).encode()
                    self.send_response(proxy.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                proxy.passed += 1
                status, headers, data = proxy.forward(self.command, self.path, dict(self.headers), body)
                self.send_response(status)
                for key, value in headers:
                    if key.lower() not in _HOP_BY_HOP:
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="flag-fault-proxy", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def forward(self, method: str, path: str, headers: dict, body: bytes) -> tuple[int, list, bytes]:
        conn = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=30)
        try:
            headers = {k: v for k, v in headers.items() if k.lower() not in _HOP_BY_HOP}
            conn.request(method, path, body or None, headers)
            response = conn.getresponse()
            return response.status, response.getheaders(), response.read()
        finally:
            conn.close()

    def __enter__(self) -> FlagFaultProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


class LockBlocker:
    """A long transaction on a legacy table, as a report query or a forgotten session would hold it.

    It opens a transaction as the application role, reads `documents` (ACCESS SHARE: the app keeps
    writing, but the downgrade's ACCESS EXCLUSIVE lock on documents has to wait for it) and then sits
    idle in that transaction. With `release_after` it commits that many seconds after it first sees a
    rollback's session waiting for it (so the rollback's first attempt times out and a later one
    succeeds); with `release_when_queued`, once a second rollback waits for the runbook's advisory
    lock that the first one holds while it retries (at most MAX_HOLD seconds); otherwise it holds
    until `release()`. Its application_name lets the rollback's report name it.
    """

    APPLICATION_NAME = "drill-lock-blocker"
    MAX_HOLD = 60.0

    def __init__(self, dsn: str, release_after: float | None = None, release_when_queued: bool = False):
        self.dsn, self.release_after, self.release_when_queued = dsn, release_after, release_when_queued
        # Its query names a customer, as a real one can: a canary that the rollback's report of who
        # blocks it (output, audit, Slack, e-mail, PagerDuty) must never carry.
        self.canary = f"canary-customer-{secrets.token_hex(6)}@example.com"
        self.queued_at = None
        self.pid: int | None = None
        self.acquired_at = self.first_waiter_at = self.released_at = None
        self.waiters: list[dict] = []
        self._release = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="lock-blocker", daemon=True)

    def start(self) -> LockBlocker:
        self._thread.start()
        if not self._ready.wait(15):
            raise RuntimeError("the lock blocker did not get its lock within 15 s")
        if self._error:
            raise RuntimeError(f"the lock blocker failed: {self._error}") from self._error
        return self

    def __enter__(self) -> LockBlocker:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.release()

    def release(self) -> None:
        self._release.set()
        self._thread.join(15)

    def _run(self) -> None:
        try:
            conn = psycopg2.connect(self.dsn, application_name=self.APPLICATION_NAME, connect_timeout=10)
            watch = psycopg2.connect(self.dsn, application_name=self.APPLICATION_NAME + "-watch", connect_timeout=10)
            watch.autocommit = True
        except Exception as exc:
            self._error = exc
            self._ready.set()
            return
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT pg_backend_pid()")
                self.pid = cur.fetchone()[0]
                # The transaction now holds ACCESS SHARE on documents; its query text holds the canary.
                cur.execute("SELECT count(*) FROM documents WHERE external_ref <> %s", (self.canary,))
                cur.fetchone()
            self.acquired_at = time.time()
            self._ready.set()
            deadline = self.acquired_at + self.MAX_HOLD if self.release_when_queued else None
            while not self._release.is_set():
                if self.first_waiter_at is None:
                    waiters = [
                        w for w in self._waiters(watch) if w["application_name"].startswith("emergency-rollback")
                    ]
                    if waiters:
                        self.first_waiter_at = time.time()
                        self.waiters = waiters
                        if self.release_after is not None:
                            deadline = self.first_waiter_at + self.release_after
                if self.release_when_queued and self.queued_at is None and self._advisory_queued(watch):
                    self.queued_at = time.time()
                    deadline = self.queued_at + 0.5
                if deadline is not None and time.time() >= deadline:
                    break
                self._release.wait(0.05)
            conn.rollback()
            self.released_at = time.time()
        except Exception as exc:
            self._error = exc
            self._ready.set()
        finally:
            conn.close()
            watch.close()

    def _waiters(self, watch) -> list[dict]:
        with watch.cursor() as cur:
            cur.execute(
                """SELECT pid, application_name, wait_event_type FROM pg_stat_activity
                   WHERE %s = ANY(pg_blocking_pids(pid))""",
                (self.pid,),
            )
            return [{"pid": p, "application_name": a, "wait_event_type": w} for p, a, w in cur.fetchall()]

    @staticmethod
    def _advisory_queued(watch) -> bool:
        """Does a session wait for the runbook's advisory lock (pg_session.ADVISORY_LOCK_KEY)?"""
        with watch.cursor() as cur:
            cur.execute(
                """SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted
                   AND classid = 1650483701 AND objid = 3462870558"""
            )
            return cur.fetchone()[0] > 0

    def report(self) -> dict:
        return {
            "pid": self.pid,
            "application_name": self.APPLICATION_NAME,
            "query_canary": self.canary,
            "release_after": self.release_after,
            "release_when_queued": self.release_when_queued,
            "queued_at": self.queued_at,
            "acquired_at": self.acquired_at,
            "first_waiter_at": self.first_waiter_at,
            "first_waiters": self.waiters,
            "released_at": self.released_at,
            "error": str(self._error) if self._error else None,
        }
