"""A recorder of contact: an HTTP server and a TCP listener that note every request or connection.

Point every endpoint of an environment at it (flag API, application instances, Prometheus, the
databases' host and port) to prove that a refused run contacted nothing: the recorder must have
seen nothing, while an accepted run (the control) makes it see something. It answers every HTTP
request with 503 and closes every TCP connection at once, so an accepted run fails, harmlessly.
"""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Handler(BaseHTTPRequestHandler):
    def _answer(self):
        self.server.recorder.requests.append(f"{self.command} {self.path}")
        self.send_response(503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _answer

    def log_message(self, format, *args):
        return


class Recorder:
    def __init__(self):
        self.requests: list[str] = []
        self.connections = 0
        self.http = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.http.recorder = self
        self.tcp = socket.socket()
        self.tcp.bind(("127.0.0.1", 0))
        self.tcp.listen(16)
        self._threads = [
            threading.Thread(target=self.http.serve_forever, daemon=True),
            threading.Thread(target=self._accept, daemon=True),
        ]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http.server_address[1]}"

    @property
    def tcp_port(self) -> int:
        return self.tcp.getsockname()[1]

    def contacted(self) -> bool:
        return bool(self.requests or self.connections)

    def _accept(self):
        while True:
            try:
                conn, _ = self.tcp.accept()
            except OSError:
                return
            self.connections += 1
            conn.close()

    def __enter__(self) -> Recorder:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.http.shutdown()
        self.http.server_close()
        self.tcp.close()
