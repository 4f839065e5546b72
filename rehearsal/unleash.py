"""A real Unleash server (npm `unleash-server`, pinned in rehearsal/package.json) for the stack and the tests.

`UnleashServer(workdir, database_url).start()` runs `node .../unleash-server/dist/server.js` as a
DETACHED process (its own session, so it outlives the CLI or test that started it), with its log in
`workdir/unleash.log`, its pid in `workdir/unleash.pid` and its URL in `workdir/unleash.url`. An admin
token and a backend ("client") token are created at start-up through Unleash's documented start-up
variables (https://docs.getunleash.io/using-unleash/deploy/configuring-unleash, "INIT_ADMIN_API_TOKENS",
"INIT_BACKEND_API_TOKENS"), with random secrets kept 0600 in the workdir, so a new object on the same
workdir (another process, `rehearsal down`) reads them back and can `stop()` the server by its pid.
Unleash inserts these tokens only into a database that has no API token yet, so one database belongs
to one workdir: `start()` checks that the admin token is accepted and fails clearly if it is not.

Token formats (Unleash v5+, https://docs.getunleash.io/concepts/api-tokens-and-client-keys):
- admin: `*:*.<secret>` (all projects, all environments; Unleash refuses an admin token scoped otherwise);
- backend/client: `<project>:<environment>.<secret>`, here `default:production.<secret>`, which the
  Python SDK (UnleashClient) sends as its `Authorization` header.

Unleash configuration we set, and why (all by environment variable, see `_environment`):
- `CHECK_VERSION=false` and `SEND_TELEMETRY=false`: both call out to the internet (version.unleash.run
  and Unleash's telemetry) which this machine must not, and must not wait for.
- `DATABASE_SSL=false`: the local PostgreSQL listens on 127.0.0.1 without TLS.
- `HTTP_HOST`/`HTTP_PORT`: bind only where we say (127.0.0.1 and a free port by default).
- `LOG_LEVEL=warn`, `TZ=UTC` (as the package's own `start` script), `NODE_NO_WARNINGS=1` (the pg
  driver prints a deprecation warning on every start).
- `UNLEASH_URL`: the URL it is reached at (used in links it renders).
Client-feature caching stays at Unleash's default: the cache is invalidated on every flag change
(checked: `/api/client/features` reflects a toggle at once), so SDK polls see the change immediately.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import quote, urlsplit

import requests

from rehearsal.postgres import free_port

REHEARSAL_DIR = Path(__file__).resolve().parent
SERVER_JS = REHEARSAL_DIR / "node_modules" / "unleash-server" / "dist" / "server.js"
USER_AGENT = "emergency-rollback-rehearsal/1.0"


class UnleashError(RuntimeError):
    """Unleash could not be started, reached, configured or stopped."""


class UnleashServer:
    """One Unleash server whose state (pid, url, tokens, log) lives in `workdir`."""

    def __init__(self, workdir: Path, database_url: str = "", port: int = 0, host: str = "127.0.0.1"):
        self.workdir = Path(workdir).resolve()
        self.database_url = database_url  # a secret (password): never printed
        self.port = port
        self.host = host
        self.logfile = self.workdir / "unleash.log"
        self.pidfile = self.workdir / "unleash.pid"
        self._urlfile = self.workdir / "unleash.url"
        self._admin_file = self.workdir / "admin.token"
        self._client_file = self.workdir / "client.token"
        self.start_seconds: float | None = None  # how long the last start() took

    # -- state kept in the workdir ---------------------------------------------------------------
    @property
    def url(self) -> str:
        if not self._urlfile.exists():
            raise UnleashError(f"Unleash in {self.workdir} was never started: call start() first.")
        return self._urlfile.read_text().strip()

    @property
    def admin_token(self) -> str:
        return self._read_secret(self._admin_file)

    @property
    def client_token(self) -> str:
        return self._read_secret(self._client_file)

    def _read_secret(self, path: Path) -> str:
        if not path.exists():
            raise UnleashError(f"no {path.name} in {self.workdir}: call start() first.")
        return path.read_text().strip()

    @staticmethod
    def _write_secret(path: Path, value: str) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(value + "\n")
        path.chmod(0o600)

    def pid(self) -> int | None:
        try:
            return int(self.pidfile.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    # -- life cycle ------------------------------------------------------------------------------
    def is_running(self) -> bool:
        """True if the recorded pid is alive and is our node running unleash-server (not a reused pid)."""
        pid = self.pid()
        if pid is None:
            return False
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        if stat.rsplit(")", 1)[-1].split()[0] == "Z":  # a zombie is gone for every purpose
            return False
        return str(SERVER_JS).encode() in cmdline

    def _environment(self) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if not key.startswith(("DATABASE_", "INIT_"))}
        env.update(
            DATABASE_URL=self.database_url,
            DATABASE_SSL="false",
            HTTP_HOST=self.host,
            HTTP_PORT=str(self.port),
            UNLEASH_URL=f"http://{self.host}:{self.port}",
            INIT_ADMIN_API_TOKENS=self.admin_token,
            INIT_BACKEND_API_TOKENS=self.client_token,
            CHECK_VERSION="false",
            SEND_TELEMETRY="false",
            LOG_LEVEL="warn",
            TZ="UTC",
            NODE_NO_WARNINGS="1",
        )
        return env

    def start(self, timeout: float = 90) -> None:
        """Start Unleash detached and wait until /health answers; idempotent if it is running already."""
        if self.is_running():
            return
        if not self.database_url:
            raise UnleashError("UnleashServer needs database_url (a postgres URI) to start.")
        node = shutil.which("node")
        if node is None:
            raise UnleashError("node is not on PATH: install Node.js 20+ and rerun.")
        if not SERVER_JS.exists():
            raise UnleashError(f"{SERVER_JS} is missing: run `make setup` (npm ci in rehearsal/).")
        self.workdir.mkdir(parents=True, exist_ok=True)
        # Same tokens across restarts on one workdir: a stack restarted keeps its clients working.
        if not self._admin_file.exists():
            self._write_secret(self._admin_file, "*:*." + secrets.token_hex(24))
        if not self._client_file.exists():
            self._write_secret(self._client_file, "default:production." + secrets.token_hex(24))
        self.port = self.port or self._previous_port() or free_port(self.host)
        self._urlfile.write_text(f"http://{self.host}:{self.port}\n")
        started = time.monotonic()
        with self.logfile.open("ab") as log:
            proc = subprocess.Popen(
                [node, str(SERVER_JS)],
                env=self._environment(),
                cwd=str(self.workdir),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # detached: survives the process that started it
            )
        self.pidfile.write_text(f"{proc.pid}\n")
        deadline = started + timeout
        while True:
            if proc.poll() is not None:
                raise UnleashError(f"Unleash exited with code {proc.returncode} during start-up:\n{self.log_tail()}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(self.url + "/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                self.stop()
                raise UnleashError(f"Unleash did not answer /health within {timeout:.0f}s:\n{self.log_tail()}")
            time.sleep(0.1)
        self.start_seconds = time.monotonic() - started
        self._check_admin_token()

    def _check_admin_token(self) -> None:
        # Unleash creates the INIT_* tokens only in a database that holds no API token yet
        # (ApiTokenService.initApiTokens): a database first used with another workdir keeps its own
        # tokens, and ours would be refused with 401. Say so now rather than at the first flag call.
        status = requests.get(
            self.url + "/api/admin/projects", headers={"Authorization": self.admin_token}, timeout=10
        ).status_code
        if status == 401:
            self.stop()
            raise UnleashError(
                "Unleash refused this workdir's admin token: its database already holds API tokens from "
                "another set-up; give it a fresh database, or reuse the workdir that first used it."
            )

    def _previous_port(self) -> int | None:
        """The port of the last start on this workdir, if it is free again (a restart keeps its URL)."""
        try:
            port = urlsplit(self._urlfile.read_text().strip()).port
        except (FileNotFoundError, ValueError):
            return None
        if not port:
            return None
        with socket.socket() as sock:
            try:
                sock.bind((self.host, port))
            except OSError:
                return None
        return port

    def stop(self, timeout: float = 20) -> None:
        """Stop the server by its recorded pid (SIGTERM, then SIGKILL) and wait until it is gone."""
        pid = self.pid()
        if pid is not None and self.is_running():
            self._signal(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while self.is_running() and time.monotonic() < deadline:
                self._reap(pid)
                time.sleep(0.1)
            if self.is_running():
                self._signal(pid, signal.SIGKILL)
                while self.is_running():
                    self._reap(pid)
                    time.sleep(0.05)
            self._reap(pid)
        self.pidfile.unlink(missing_ok=True)

    @staticmethod
    def _signal(pid: int, sig: int) -> None:
        # The server leads its own process group (start_new_session): signal the group, so nothing
        # it may have spawned stays behind.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)

    @staticmethod
    def _reap(pid: int) -> None:
        # If this process started the server, collect it so that it does not linger as a zombie.
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)

    def log_tail(self, lines: int = 30) -> str:
        if not self.logfile.exists():
            return ""
        text = self.logfile.read_text(errors="replace")
        for secret_file in (self._admin_file, self._client_file):
            if secret_file.exists():
                text = text.replace(secret_file.read_text().strip(), "<token>")
        return "\n".join(text.splitlines()[-lines:])

    # -- the admin API (https://docs.getunleash.io/reference/api/unleash) ----------------------
    def _request(self, method: str, path: str, expect: tuple[int, ...] = (200,), **kwargs) -> requests.Response:
        headers = {"Authorization": self.admin_token, "User-Agent": USER_AGENT, "Accept": "application/json"}
        response = requests.request(method, self.url + path, headers=headers, timeout=10, **kwargs)
        if response.status_code not in expect:
            raise UnleashError(f"{method} {path} answered {response.status_code}: {response.text[:300]}")
        return response

    def _feature_path(self, name: str, project: str) -> str:
        return f"/api/admin/projects/{quote(project, safe='')}/features/{quote(name, safe='')}"

    def ensure_flag(
        self,
        name: str = "DataTransformationFeature",
        project: str = "default",
        environment: str = "production",
        enabled: bool = False,
    ) -> None:
        """Create the flag if it does not exist (type release), then set it in `environment`."""
        feature = self._request("GET", self._feature_path(name, project), expect=(200, 404))
        if feature.status_code == 404:
            self._request(
                "POST",
                f"/api/admin/projects/{quote(project, safe='')}/features",
                expect=(200, 201),
                json={"name": name, "type": "release", "description": "created by the rehearsal stack"},
            )
        self.set_flag(enabled, name=name, project=project, environment=environment)

    def set_flag(
        self,
        enabled: bool,
        name: str = "DataTransformationFeature",
        project: str = "default",
        environment: str = "production",
    ) -> None:
        """Turn the flag on or off in one environment (POST .../environments/{env}/on|off)."""
        action = "on" if enabled else "off"
        path = f"{self._feature_path(name, project)}/environments/{quote(environment, safe='')}/{action}"
        self._request("POST", path, expect=(200, 202, 204))

    def flag_enabled(
        self, name: str = "DataTransformationFeature", project: str = "default", environment: str = "production"
    ) -> bool:
        """The flag's state in one environment, as the admin API reports it."""
        feature = self._request("GET", self._feature_path(name, project)).json()
        for env in feature.get("environments", []):
            if env.get("name") == environment:
                return bool(env.get("enabled"))
        raise UnleashError(f"flag {name} has no environment {environment} in project {project}")
