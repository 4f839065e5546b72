"""The rehearsal stack: one object that brings the whole local production picture up and down.

    stack = Stack(run_dir)          # default run folder: <repo>/.run/rehearsal (git-ignored)
    timings = stack.up(ports="auto", tenants=0, refresh_interval=1.0)
    stack.env()                     # the contract the playbook and the tests consume (see ENV_KEYS)
    stack.down()                    # stops every process it recorded, and checks nothing is left

What runs, all on 127.0.0.1: PostgreSQL 16 (application database `transformation` at the legacy
baseline with seed rows, optional tenants, Unleash's database), Unleash with the flag
DataTransformationFeature in project `default`, environment `production`, two instances of the
TransformationEngine stand-in (rehearsal.app), Prometheus scraping them every second, and the SMTP
and Slack-webhook sinks (rehearsal.sinks). Everything the stack writes lives in the run folder:
`state.json` (ports, options), `secrets.json` (0600), `logs/`, `pids/`, and one folder per service.

`up` is idempotent: what runs and answers is left alone, what does not is (re)started on the ports
recorded at the first `up`. Start order: PostgreSQL; then Unleash, Prometheus, the sinks and the
schema at the same time; then the two app instances (they need Unleash and the schema).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import signal
import socket
import ssl
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg2
import requests

from rehearsal import appdb, procs, prometheus
from rehearsal.load import LoadGenerator
from rehearsal.postgres import PostgresCluster, PostgresError, ensure_prefix_permissions, free_port
from rehearsal.sinks import read_jsonl
from rehearsal.unleash import UnleashError, UnleashServer

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_RUN_DIR = ROOT / ".run" / "rehearsal"
HOST = "127.0.0.1"
FLAG, PROJECT, ENVIRONMENT = "DataTransformationFeature", "default", "production"
APPS = ("app-1", "app-2")
# On demand (start_aspnetcore_app): one more instance exporting ASP.NET Core 8's metric names through
# OpenTelemetry's Prometheus exporter, scraped as its own job, for the `aspnetcore` metrics preset.
ASPNETCORE_APP, ASPNETCORE_JOB = "app-aspnetcore", "transformation-engine-aspnetcore"
# The documented default ports (`rehearsal up` without --ports auto); tests always use auto.
DEFAULT_PORTS = {
    "postgres": 55432,
    "postgres_tls": 55433,  # the TLS front (rehearsal.pgtls): what the playbook connects to
    "unleash": 54242,
    "app-1": 58081,
    "app-2": 58082,
    "prometheus": 59090,
    "smtp": 52525,
    "smtps": 52465,
    "webhook": 58025,
}
DEFAULT_REFRESH_INTERVAL = 1.0
SMTP_USER = "rehearsal"
# The values of these keys of env() are secrets: never print them.
SECRET_KEYS = (
    "FF_API_KEY",
    "PGPASSWORD",
    "ROLLBACK_DB_DSN",
    "SLACK_WEBHOOK_URL",
    "SMTP_PASSWORD",
    "PAGERDUTY_ROUTING_KEY",
)


class StackError(RuntimeError):
    """A service of the stack did not come up (or go away); the message names it and quotes its log."""

    def __init__(self, service: str, reason: str, log_tail: str = "", what: str = "did not come up"):
        self.service = service
        message = f"{service} {what}: {reason}"
        if log_tail:
            message += f"\n--- last lines of the {service} log ---\n{log_tail}"
        super().__init__(message)


def _wait(service: str, check, timeout: float, *, alive=None, log=lambda: "", interval: float = 0.1) -> None:
    """Poll `check()` until it is truthy; fail early if `alive()` says the process died."""
    deadline = time.monotonic() + timeout
    last_error = "no answer yet"
    while True:
        try:
            if check():
                return
        except Exception as exc:
            last_error = f"{type(exc).__name__}: {exc}"
        if alive is not None and not alive():
            raise StackError(service, "its process exited", log())
        if time.monotonic() > deadline:
            raise StackError(service, f"not healthy after {timeout:.0f} s ({last_error})", log())
        time.sleep(interval)


def _http_ok(url: str, timeout: float = 2) -> bool:
    return requests.get(url, timeout=timeout).status_code == 200


def _smtp_ok(port: int) -> bool:
    with socket.create_connection((HOST, port), timeout=2) as sock:
        banner = sock.recv(256)
        sock.sendall(b"QUIT\r\n")
        return banner.startswith(b"220")


def _smtps_ok(port: int, ca_file: Path) -> bool:
    """The SMTP sink's TLS port answers with a certificate that the test CA verifies."""
    context = ssl.create_default_context(cafile=str(ca_file))
    with (
        socket.create_connection((HOST, port), timeout=2) as raw,
        context.wrap_socket(raw, server_hostname=HOST) as sock,
    ):
        banner = sock.recv(256)
        sock.sendall(b"QUIT\r\n")
        return banner.startswith(b"220")


class Stack:
    """The rehearsal stack whose state lives in `run_dir`."""

    def __init__(self, run_dir: str | Path = DEFAULT_RUN_DIR):
        self.run_dir = Path(run_dir).resolve()
        self.state_file = self.run_dir / "state.json"
        self.secrets_file = self.run_dir / "secrets.json"
        ports = self.ports if self.exists() else {}
        self.cluster = PostgresCluster(
            self.run_dir / "postgres", port=ports.get("postgres", 0), tls_port=ports.get("postgres_tls", 0)
        )
        self.unleash = UnleashServer(self.run_dir / "unleash", port=ports.get("unleash", 0))

    # -- recorded state ------------------------------------------------------------------------
    def exists(self) -> bool:
        return self.state_file.exists()

    @property
    def state(self) -> dict:
        if not self.state_file.exists():
            raise StackError(
                "stack",
                f"nothing was brought up in {self.run_dir}: run `python -m rehearsal up` first",
                what="is unknown",
            )
        return json.loads(self.state_file.read_text())

    def _save_state(self, state: dict) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.state_file.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")

    @property
    def ports(self) -> dict[str, int]:
        return self.state["ports"]

    @property
    def secrets(self) -> dict[str, str]:
        return json.loads(self.secrets_file.read_text())

    def _ensure_secrets(self) -> dict[str, str]:
        """Random passwords (and the webhook's secret path), made once per run folder, kept 0600."""
        values = self.secrets if self.secrets_file.exists() else {}
        wanted = {role: lambda: secrets.token_urlsafe(24) for role in (appdb.MIGRATOR, appdb.APP_RW, appdb.UNLEASH)}
        wanted["smtp"] = lambda: secrets.token_urlsafe(18)
        wanted["pagerduty_routing_key"] = lambda: secrets.token_hex(16)  # 32 characters, as PagerDuty's keys
        wanted["webhook_path"] = lambda: (
            f"/services/T{secrets.token_hex(4).upper()}/B{secrets.token_hex(4).upper()}/{secrets.token_urlsafe(18)}"
        )
        missing = {key: make() for key, make in wanted.items() if key not in values}
        if missing:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.secrets_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as out:
                json.dump({**values, **missing}, out)
            self.secrets_file.chmod(0o600)
        return self.secrets

    @contextlib.contextmanager
    def _exclusive(self):
        """One `up` or `down` at a time per run folder (two molecule scenarios, a test and a shell...)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with (self.run_dir / ".lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def service(self, name: str) -> procs.Service:
        return procs.Service(name, self.run_dir)

    def url(self, name: str) -> str:
        return f"http://{HOST}:{self.ports[name]}"

    # -- up ------------------------------------------------------------------------------------
    def up(
        self,
        ports: str | dict[str, int] = "default",
        tenants: int | None = None,
        refresh_interval: float | None = None,
        timeout: float = 90,
    ) -> dict[str, float]:
        """Bring every service up and wait until each is healthy; seconds each took (0.0: was running).

        `ports`: "default" (DEFAULT_PORTS), "auto" (free ports) or a dict; ignored when the run folder
        already has ports. `tenants`: make exactly N tenant databases (None: keep what exists).
        Raises StackError naming the first service that did not come up, with the tail of its log.
        """
        if tenants is not None and tenants < 0:
            raise ValueError("tenants must be 0 or more")
        if refresh_interval is not None and refresh_interval <= 0:
            raise ValueError("refresh_interval must be a positive number of seconds")
        if ports not in ("default", "auto") and not (isinstance(ports, dict) and set(ports) == set(DEFAULT_PORTS)):
            raise ValueError(f"ports must be 'default', 'auto' or a dict with the keys {sorted(DEFAULT_PORTS)}")
        try:
            prometheus.binary()  # fail in one sentence before anything starts
        except prometheus.PrometheusError as exc:
            raise StackError("prometheus", str(exc)) from exc
        with self._exclusive():
            return self._up(ports, tenants, refresh_interval, timeout)

    def _up(self, ports, tenants, refresh_interval, timeout) -> dict[str, float]:
        started = time.monotonic()
        state = self._initial_state(ports, refresh_interval)
        self._ensure_secrets()
        timings: dict[str, float] = {}

        timings["postgres"] = self._up_postgres()
        prepared = time.monotonic()
        passwords = self.secrets
        try:
            appdb.ensure_roles(self.cluster, passwords)
            appdb.ensure_unleash_database(self.cluster)
        except psycopg2.Error as exc:
            raise StackError(
                "postgres", f"cannot create the roles: {type(exc).__name__}", self.cluster.log_tail()
            ) from exc

        restart_apps = state.get("running_refresh_interval") not in (None, state["refresh_interval"])
        with ThreadPoolExecutor(max_workers=3, thread_name_prefix="up") as pool:
            futures = {
                "unleash": pool.submit(self._up_unleash, timeout),
                "prometheus": pool.submit(self._up_prometheus, timeout),
                "sinks": pool.submit(self._up_sinks, timeout),
            }
            try:  # alembic in this thread: its proxies are process-wide, one migration at a time
                appdb.prepare_database(self.cluster, appdb.APP_DB, passwords[appdb.MIGRATOR])
                if tenants is not None:
                    state["tenants"] = appdb.ensure_tenants(self.cluster, tenants, passwords[appdb.MIGRATOR])
                    self._save_state(state)
                timings["schema"] = round(time.monotonic() - prepared, 2)
            except (appdb.SchemaError, PostgresError) as exc:
                raise StackError("schema", str(exc), self.cluster.log_tail()) from exc
            finally:
                for name, future in futures.items():  # the first failure wins, in a fixed order
                    timings[name] = future.result()

        with ThreadPoolExecutor(max_workers=len(APPS), thread_name_prefix="up-app") as pool:
            for name, seconds in zip(
                APPS, pool.map(lambda n: self._up_app(n, timeout, restart_apps), APPS), strict=True
            ):
                timings[name] = seconds
        if ASPNETCORE_APP in state["ports"]:
            timings[ASPNETCORE_APP] = self._up_app(ASPNETCORE_APP, timeout, restart_apps, metrics_style="aspnetcore")
        state["running_refresh_interval"] = state["refresh_interval"]
        self._save_state(state)

        targets_started = time.monotonic()
        _wait(
            "prometheus",
            lambda: list(prometheus.targets_up(self.url("prometheus")).values()) == ["up"] * len(APPS),
            timeout,
            alive=self.service("prometheus").is_running,
            log=self.service("prometheus").log_tail,
            interval=0.2,
        )
        timings["prometheus_targets_up"] = round(time.monotonic() - targets_started, 2)
        timings["total"] = round(time.monotonic() - started, 2)
        (self.run_dir / "timings.json").write_text(json.dumps(timings, indent=2) + "\n")
        return timings

    def _initial_state(self, ports: str | dict[str, int], refresh_interval: float | None) -> dict:
        if self.exists():
            state = self.state
            for name, port in DEFAULT_PORTS.items():  # a service added since this run folder was made
                if name not in state["ports"]:
                    state["ports"][name] = free_port(HOST) if ports == "auto" else port
        else:
            if ports == "default":
                chosen = dict(DEFAULT_PORTS)
            elif ports == "auto":
                chosen = {name: free_port(HOST) for name in DEFAULT_PORTS}
            else:
                chosen = {name: int(port) for name, port in ports.items()}
            state = {"ports": chosen, "tenants": [], "refresh_interval": DEFAULT_REFRESH_INTERVAL}
        if refresh_interval is not None:
            state["refresh_interval"] = float(refresh_interval)
        if "postgres_tls" not in state["ports"]:  # a run folder from before the TLS front
            state["ports"]["postgres_tls"] = free_port(HOST)
        self._save_state(state)
        self.cluster.port = state["ports"]["postgres"]
        self.cluster.tls_port = state["ports"]["postgres_tls"]
        self.unleash.port = state["ports"]["unleash"]
        return state

    def _postgres_reachable(self) -> None:
        """Let the server's OS user traverse every parent of the run folder again.

        As root, PostgreSQL runs as the user `pgserver`, which must traverse each parent folder.
        Something may take that away after `up`: pytest, for one, resets /tmp/pytest-of-root to
        0700 at the start of every session, and `pg_ctl status|stop` then fail with "Permission
        denied" (so that `up` would start a second postmaster and `down` could not stop it).
        """
        if os.geteuid() == 0 and self.cluster.datadir.exists():
            ensure_prefix_permissions(self.cluster.datadir)

    def _up_postgres(self) -> float:
        began = time.monotonic()
        self._postgres_reachable()
        try:
            if self.cluster.is_running():
                self.cluster.start_tls()
                return 0.0
            self.cluster.start()
        except PostgresError as exc:
            raise StackError("postgres", str(exc).splitlines()[0], self.cluster.log_tail()) from exc
        return round(time.monotonic() - began, 2)

    def _up_unleash(self, timeout: float) -> float:
        began = time.monotonic()
        was_running = self.unleash.is_running()
        self.unleash.database_url = self.cluster.dsn(
            appdb.UNLEASH_DB, user=appdb.UNLEASH, password=self.secrets["unleash"]
        )
        try:
            self.unleash.start(timeout=timeout)
            self.unleash.ensure_flag(FLAG, PROJECT, ENVIRONMENT, enabled=self._flag_state_or_off())
        except (UnleashError, requests.RequestException) as exc:
            raise StackError("unleash", str(exc).splitlines()[0], self.unleash.log_tail()) from exc
        return 0.0 if was_running else round(time.monotonic() - began, 2)

    def _flag_state_or_off(self) -> bool:
        """Keep the flag as it is on a stack brought up again; a new flag starts off."""
        try:
            return self.unleash.flag_enabled(FLAG, PROJECT, ENVIRONMENT)
        except UnleashError:
            return False

    def _start(self, name: str, argv: list[str], check, timeout: float, env: dict | None = None) -> float:
        service = self.service(name)
        began = time.monotonic()
        with contextlib.suppress(Exception):
            if service.is_running() and check():
                return 0.0
        service.stop()
        base_env = {k: v for k, v in os.environ.items() if not k.startswith(("TE_", "SINK_", "FF_", "ROLLBACK_"))}
        base_env["PYTHONPATH"] = str(ROOT)
        service.start(argv, env={**base_env, **(env or {})}, cwd=ROOT)
        _wait(name, check, timeout, alive=service.is_running, log=service.log_tail)
        return round(time.monotonic() - began, 2)

    def _up_prometheus(self, timeout: float) -> float:
        config = self.run_dir / "prometheus" / "prometheus.yml"
        prometheus.write_config(
            config, {name: f"{HOST}:{self.ports[name]}" for name in APPS}, self._prometheus_extra_jobs()
        )
        argv = prometheus.argv(config, self.run_dir / "prometheus" / "data", HOST, self.ports["prometheus"])
        return self._start("prometheus", argv, lambda: _http_ok(self.url("prometheus") + "/-/ready"), timeout)

    def _prometheus_extra_jobs(self) -> dict[str, dict[str, str]]:
        if ASPNETCORE_APP not in self.ports:
            return {}
        return {ASPNETCORE_JOB: {ASPNETCORE_APP: f"{HOST}:{self.ports[ASPNETCORE_APP]}"}}

    def start_aspnetcore_app(self, timeout: float = 60) -> str:
        """Start (once) the instance with ASP.NET Core's metric names, have Prometheus scrape it; its URL."""
        with self._exclusive():
            state = self.state
            if ASPNETCORE_APP not in state["ports"]:
                state["ports"][ASPNETCORE_APP] = free_port(HOST)
                self._save_state(state)
            self._up_app(ASPNETCORE_APP, timeout, False, metrics_style="aspnetcore")
            config = self.run_dir / "prometheus" / "prometheus.yml"
            prometheus.write_config(
                config, {name: f"{HOST}:{self.ports[name]}" for name in APPS}, self._prometheus_extra_jobs()
            )
            process = self.service("prometheus").process()
            if process is not None:
                process.send_signal(signal.SIGHUP)  # Prometheus reloads its configuration
            _wait(
                "prometheus",
                lambda: prometheus.query(self.url("prometheus"), f'up{{job="{ASPNETCORE_JOB}"}} == 1'),
                timeout,
                interval=0.2,
            )
        return self.url(ASPNETCORE_APP)

    def _up_sinks(self, timeout: float) -> float:
        argv = [
            sys.executable,
            "-m",
            "rehearsal.sinks",
            "--dir",
            str(self.run_dir / "sinks"),
            "--smtp-port",
            str(self.ports["smtp"]),
            "--smtps-port",
            str(self.ports["smtps"]),
            "--tls-dir",
            str(self.run_dir / "sinks" / "tls"),
            "--webhook-port",
            str(self.ports["webhook"]),
        ]
        return self._start(
            "sinks",
            argv,
            self._sinks_ok,
            timeout,
            env={
                "SINK_WEBHOOK_PATH": self.secrets["webhook_path"],
                "SINK_SMTP_USERNAME": SMTP_USER,
                "SINK_SMTP_PASSWORD": self.secrets["smtp"],
                "SINK_PAGERDUTY_ROUTING_KEY": self.secrets["pagerduty_routing_key"],
            },
        )

    def _sinks_ok(self) -> bool:
        """Both SMTP ports, the webhook and the PagerDuty API answer, and the test CA exists (a sink of an
        older run folder, without TLS or PagerDuty, counts as not healthy and is started again)."""
        return (
            _http_ok(self.url("webhook") + "/_sink/pagerduty")
            and _smtp_ok(self.ports["smtp"])
            and _smtps_ok(self.ports["smtps"], self.smtp_ca_file)
        )

    @property
    def smtp_ca_file(self) -> Path:
        """The test CA the SMTP sink's certificate is signed with (made by the sink at start)."""
        return self.run_dir / "sinks" / "tls" / "ca.pem"

    def _up_app(self, name: str, timeout: float, restart: bool, metrics_style: str = "rehearsal") -> float:
        if restart:
            self.service(name).stop()
        argv = [
            sys.executable,
            "-m",
            "rehearsal.app",
            "--instance",
            name,
            "--port",
            str(self.ports[name]),
            "--unleash-url",
            self.unleash.url,
            "--refresh-interval",
            str(self.state["refresh_interval"]),
            "--cache-dir",
            str(self.run_dir / name / "unleash-cache"),
            "--metrics-style",
            metrics_style,
        ]
        env = {
            "TE_DB_DSN": self.cluster.dsn(appdb.APP_DB, user=appdb.APP_RW, password=self.secrets[appdb.APP_RW]),
            "TE_UNLEASH_TOKEN": self.unleash.client_token,
        }
        return self._start(name, argv, lambda: _http_ok(self.url(name) + "/healthz"), timeout, env=env)

    # -- down ----------------------------------------------------------------------------------
    def down(self, timeout: float = 20) -> list[str]:
        """Stop everything this run folder recorded; raise StackError if any process is left."""
        if not self.run_dir.exists():
            return []
        with self._exclusive():
            return self._down(timeout)

    def _down(self, timeout: float) -> list[str]:
        stopped = []
        for name in (*APPS, ASPNETCORE_APP, "prometheus", "sinks"):
            service = self.service(name)
            if service.is_running():
                stopped.append(name)
            service.stop(timeout=timeout)
        if self.unleash.is_running():
            stopped.append("unleash")
        self.unleash.stop(timeout=timeout)
        self._postgres_reachable()
        if self.cluster.is_running():
            stopped.append("postgres")
        self.cluster.stop()  # also its TLS front
        leftovers = self.leftover_processes()
        if leftovers:
            # Services of this run folder that no pid file knew of (a crashed `up`): stop them, then insist.
            for proc in leftovers:
                with contextlib.suppress(Exception):
                    proc.kill()
            time.sleep(0.5)
            leftovers = self.leftover_processes()
            if leftovers:
                pids = ", ".join(f"{p.pid} ({' '.join(p.cmdline()[:3])})" for p in leftovers)
                raise StackError("down", f"processes still running: {pids}", what="failed")
        if self.exists():
            state = self.state
            state.pop("running_refresh_interval", None)
            self._save_state(state)
        return stopped

    def leftover_processes(self) -> list:
        """Live service processes of this run folder (see procs.stack_processes); empty after `down`."""
        return procs.stack_processes(str(self.run_dir))

    # -- status and env ------------------------------------------------------------------------
    def status(self) -> dict[str, dict]:
        """Per service: running (pid), healthy (its health probe answers), and where it listens."""
        ports = self.ports
        self._postgres_reachable()

        def probe(check) -> bool:
            try:
                return bool(check())
            except Exception:
                return False

        report = {
            "postgres": {
                "pid": self.cluster.pid() if self.cluster.is_running() else None,
                "healthy": probe(lambda: self.cluster.execute("SELECT 1")),
                "address": f"{HOST}:{ports['postgres']} (TLS {HOST}:{ports.get('postgres_tls')})",
            },
            "unleash": {
                "pid": self.unleash.pid() if self.unleash.is_running() else None,
                "healthy": probe(lambda: _http_ok(self.url("unleash") + "/health")),
                "address": self.url("unleash"),
            },
            "prometheus": {
                "pid": self.service("prometheus").pid(),
                "healthy": probe(lambda: _http_ok(self.url("prometheus") + "/-/ready")),
                "address": self.url("prometheus"),
            },
            "sinks": {
                "pid": self.service("sinks").pid(),
                "healthy": probe(self._sinks_ok),
                "address": f"smtp {HOST}:{ports['smtp']} (STARTTLS), smtps {HOST}:{ports['smtps']}, "
                f"webhook and PagerDuty {self.url('webhook')}",
            },
        }
        for name in APPS:
            report[name] = {
                "pid": self.service(name).pid(),
                "healthy": probe(lambda n=name: _http_ok(self.url(n) + "/healthz")),
                "address": self.url(name),
            }
        return report

    def env(self) -> dict[str, str]:
        """The connection details: the single contract the playbook (env=local) and the tests read."""
        ports, passwords = self.ports, self.secrets
        # The runbook reaches the database as production does: TLS verified against the stack's test CA
        # (sslmode=verify-full), and no password in any DSN (libpq takes it from PGPASSWORD).
        migrator_dsn = self.cluster.tls_dsn(appdb.APP_DB, user=appdb.MIGRATOR)
        return {
            "FF_PROVIDER": "unleash",
            "FF_API_URL": self.url("unleash"),
            "FF_API_KEY": self.unleash.admin_token,
            "FF_PROJECT": PROJECT,
            "FF_ENVIRONMENT": ENVIRONMENT,
            "FF_FLAG": FLAG,
            "ROLLBACK_DB_HOST": HOST,
            "ROLLBACK_DB_PORT": str(ports["postgres_tls"]),
            "ROLLBACK_DB_SSLMODE": "verify-full",
            "ROLLBACK_DB_SSLROOTCERT": str(self.cluster.ca_file),
            "ROLLBACK_DB_NAME": appdb.APP_DB,
            "ROLLBACK_DB_USER": appdb.MIGRATOR,
            "PGPASSWORD": passwords[appdb.MIGRATOR],
            "ROLLBACK_DB_DSN": migrator_dsn,
            "ROLLBACK_TENANT_DBS": ",".join(self.state.get("tenants", [])),
            "APP_URLS": ",".join(self.url(name) for name in APPS),
            "APP_STATUS_URLS": ",".join(self.url(name) + "/status" for name in APPS),
            "APP_REFRESH_INTERVAL": str(self.state["refresh_interval"]),
            "PROMETHEUS_URL": self.url("prometheus"),
            "SMTP_HOST": HOST,
            "SMTP_PORT": str(ports["smtp"]),
            "SMTP_SECURE": "starttls",
            "SMTPS_PORT": str(ports["smtps"]),
            "SMTP_CA_FILE": str(self.smtp_ca_file),
            "SMTP_USERNAME": SMTP_USER,
            "SMTP_PASSWORD": passwords["smtp"],
            "SLACK_WEBHOOK_URL": self.url("webhook") + passwords["webhook_path"],
            "PAGERDUTY_EVENTS_URL": self.url("webhook"),
            "PAGERDUTY_ROUTING_KEY": passwords["pagerduty_routing_key"],
            "SINK_MAIL_FILE": str(self.run_dir / "sinks" / "mail.jsonl"),
            "SINK_WEBHOOK_FILE": str(self.run_dir / "sinks" / "webhook.jsonl"),
            "SINK_PAGERDUTY_FILE": str(self.run_dir / "sinks" / "pagerduty.jsonl"),
            "SINK_READBACK_URL": self.url("webhook") + "/_sink",
            "REHEARSAL_RUN_DIR": str(self.run_dir),
        }

    # -- helpers for tests, molecule and benchmarks ---------------------------------------------
    def dsn(self, dbname: str = appdb.APP_DB, role: str = appdb.MIGRATOR) -> str:
        """A libpq URI as `migrator` or `app_rw` on the plain port, without a password (the cluster's passfile)."""
        return self.cluster.dsn(dbname, user=role)

    def set_flag(self, enabled: bool) -> None:
        self.unleash.set_flag(enabled, FLAG, PROJECT, ENVIRONMENT)

    def reset(self, timeout: float = 30) -> None:
        """Back to the state `up` leaves: flag off, every instance on the legacy path, databases at the baseline
        with no rollback archive.

        For tests that share one stack: the flag goes off first and the instances must report the
        legacy path before the feature's schema is downgraded (the safe order).
        """
        self.set_flag(False)
        self.wait_for_path("legacy", timeout)
        for dbname in (appdb.APP_DB, *self.state.get("tenants", [])):
            dsn = self.dsn(dbname)
            current = appdb.current_revision(dsn)
            if current is None:  # below the baseline (someone downgraded to base): build it again
                appdb.migrate(dsn, appdb.BASELINE)
                appdb.seed(dsn)
            elif current != appdb.BASELINE:
                appdb.migrate(dsn, appdb.BASELINE, direction="downgrade")
            appdb.drop_rollback_archives(dsn)

    def app_statuses(self) -> list[dict]:
        return [requests.get(self.url(name) + "/status", timeout=5).json() for name in APPS]

    def wait_for_path(self, path: str, timeout: float = 30) -> float:
        """Seconds until every instance reports `path` ("new"/"legacy") on /status; StackError on timeout."""
        began = time.monotonic()
        _wait("apps", lambda: all(s["path"] == path for s in self.app_statuses()), timeout, interval=0.05)
        return time.monotonic() - began

    def transform(self, instance: str = "app-1", external_ref: str | None = None, payload: dict | None = None):
        body = {"external_ref": external_ref, "payload": payload or {}} if external_ref else {"payload": payload or {}}
        return requests.post(self.url(instance) + "/transform", json=body, timeout=15)

    def prometheus_query(self, expr: str) -> list[dict]:
        return prometheus.query(self.url("prometheus"), expr)

    def error_rate(self, window: str = "30s") -> float | None:
        return prometheus.error_rate(self.url("prometheus"), window)

    def mails(self) -> list[dict]:
        return read_jsonl(self.run_dir / "sinks" / "mail.jsonl")

    def pagerduty_events(self, accepted_only: bool = False) -> list[dict]:
        """What the PagerDuty sink received, oldest first (routing keys never stored)."""
        events = read_jsonl(self.run_dir / "sinks" / "pagerduty.jsonl")
        return [e for e in events if e["accepted"]] if accepted_only else events

    def sink_fault(self, route: str, status: int, count: int = 1) -> None:
        """Make the next `count` requests to the PagerDuty (`pagerduty`) or Slack (`slack`) sink answer `status`."""
        requests.post(
            self.url("webhook") + "/_sink/faults", json={"route": route, "status": status, "count": count}, timeout=5
        ).raise_for_status()

    def webhook_posts(self, accepted_only: bool = False) -> list[dict]:
        posts = read_jsonl(self.run_dir / "sinks" / "webhook.jsonl")
        return [p for p in posts if p["accepted"]] if accepted_only else posts

    def load(
        self, rate: float, duration: float | None = None, out: str | Path | None = None, **kwargs
    ) -> LoadGenerator:
        """A load generator against both instances (not started: call .start() or .run())."""
        return LoadGenerator([self.url(name) for name in APPS], rate, duration, out=out, **kwargs)


def format_env(env: dict[str, str], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(env, indent=2, sort_keys=True)
    if fmt == "shell":
        import shlex  # noqa: PLC0415

        return "\n".join(f"export {key}={shlex.quote(value)}" for key, value in sorted(env.items()))
    raise ValueError(f"unknown format {fmt!r}: use shell or json")


__all__ = ["DEFAULT_PORTS", "DEFAULT_RUN_DIR", "SECRET_KEYS", "Stack", "StackError", "format_env"]
