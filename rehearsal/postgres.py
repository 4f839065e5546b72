"""PostgreSQL 16 for the rehearsal stack and the tests, from the binaries of the `pgserver` wheel.

`pgserver.get_server()` only listens on a unix socket with trust authentication. The rollback must
meet a database the way production does, over TCP with a password (so that a wrong or leaked
password is a real failure), so this module drives the same binaries itself: initdb with
scram-sha-256 for TCP and trust on the local socket (for the stack's own administration), then
`pg_ctl start` on 127.0.0.1. As root, postgres refuses to run, so the server runs as the system
user `pgserver` (created if missing), exactly as pgserver does.

TLS: pgserver's build has no OpenSSL, so `start()` also starts the TLS front of rehearsal.pgtls on
`tls_port`, with a test CA made at the first start (`tls/ca.pem`, the CA's key is never written)
and a certificate for 127.0.0.1: `tls_dsn()` connects with sslmode=verify-full, as production
does. The plain `port` stays for the stack's own services and the tests' administration.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import socket
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import psycopg2
from psycopg2 import sql as pgsql

from rehearsal import pgtls, procs

with warnings.catch_warnings():
    # pgserver's import asks platformdirs for XDG_RUNTIME_DIR, unset here; we do not use that dir.
    warnings.simplefilter("ignore")
    from pgserver._commands import POSTGRES_BIN_PATH
    from pgserver.utils import ensure_folder_permissions, ensure_prefix_permissions, ensure_user_exists

SYSTEM_USER = "pgserver"
SUPERUSER = "postgres"


class PostgresError(RuntimeError):
    """The cluster could not be initialised, started or stopped."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _run_as() -> str | None:
    return SYSTEM_USER if os.geteuid() == 0 else None


def _prepare_for_system_user(datadir: Path) -> None:
    """Let the unprivileged `pgserver` user own the data dir and reach the binaries (root only)."""
    entry = ensure_user_exists(SYSTEM_USER)
    ensure_prefix_permissions(datadir)
    ensure_prefix_permissions(POSTGRES_BIN_PATH)
    ensure_folder_permissions(POSTGRES_BIN_PATH, 0o555)
    ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", 0o444)
    for path in [datadir, *datadir.rglob("*")]:
        os.chown(path, entry.pw_uid, entry.pw_gid)


@dataclass
class PostgresCluster:
    """One PostgreSQL 16 server: data, socket and log under `datadir`, TCP on `host:port`."""

    datadir: Path
    port: int = 0
    host: str = "127.0.0.1"
    durable: bool = False
    tls_port: int = 0

    def __post_init__(self) -> None:
        self.datadir = Path(self.datadir).resolve()
        self.pgdata = self.datadir / "pgdata"
        self.socket_dir = self.datadir / "socket"
        self.logfile = self.datadir / "postgres.log"
        self._password_file = self.datadir / "superuser.password"
        self.passfile = self.datadir / "pgpass"  # libpq's password file: every role's password, 0600
        self.tls_dir = self.datadir / "tls"
        self._tls_port_file = self.tls_dir / "port"

    # -- connection details ------------------------------------------------------------------
    @property
    def password(self) -> str:
        return self._password_file.read_text().strip()

    def dsn(self, dbname: str = "postgres", user: str = SUPERUSER, password: str | None = None) -> str:
        """A libpq URI over TCP (plain port). Without `password` it carries none: libpq reads it from the
        cluster's password file (`passfile`, ~/.pgpass format), as the runbook requires of every DSN. With
        `password` (a test of a wrong or leaked one) it carries that one: a secret, never print it."""
        if password is not None:
            auth = quote(user, safe="") + ":" + quote(password, safe="")
            return f"postgresql://{auth}@{self.host}:{self.port}/{quote(dbname, safe='')}"
        query = f"passfile={quote(str(self.passfile), safe='/')}"  # no %: alembic.ini interpolation
        return f"postgresql://{quote(user, safe='')}@{self.host}:{self.port}/{quote(dbname, safe='')}?{query}"

    def store_url(self, dbname: str) -> str:
        """The superuser's URL WITH its password, for a service that reads no passfile (Unleash's
        node-postgres in the tests): that service's own secret, never a DSN the runbook is given."""
        return self.dsn(dbname, password=self.password)

    def _remember_password(self, user: str, password: str) -> None:
        """Add (or replace) `user`'s line in the password file: 127.0.0.1, any port, any database."""

        def escape(text: str) -> str:
            return text.replace("\\", "\\\\").replace(":", "\\:")

        prefix = f"{escape(self.host)}:*:*:{escape(user)}:"
        lines = self.passfile.read_text().splitlines() if self.passfile.exists() else []
        lines = [line for line in lines if not line.startswith(prefix)] + [prefix + escape(password)]
        fd = os.open(self.passfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write("\n".join(lines) + "\n")
        self.passfile.chmod(0o600)

    @property
    def ca_file(self) -> Path:
        """The test CA that signed the TLS front's certificate (a client's sslrootcert)."""
        return self.tls_dir / "ca.pem"

    def tls_dsn(self, dbname: str = "postgres", user: str = SUPERUSER, sslmode: str = "verify-full") -> str:
        """A libpq URI to the TLS front, without a password (libpq takes it from PGPASSWORD or a passfile)."""
        query = f"sslmode={sslmode}&sslrootcert={quote(str(self.ca_file), safe='/')}"
        return f"postgresql://{quote(user, safe='')}@{self.host}:{self.tls_port}/{quote(dbname, safe='')}?{query}"

    def admin_dsn(self, dbname: str = "postgres") -> str:
        """A libpq URI over the local socket (trust): for the stack's own administration."""
        socket_dir = quote(str(self.socket_dir), safe="")
        return f"postgresql://{SUPERUSER}@/{quote(dbname, safe='')}?host={socket_dir}&port={self.port}"

    # -- life cycle ----------------------------------------------------------------------------
    def _ctl(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return self._bin("pg_ctl", "-D", str(self.pgdata), *args, timeout=timeout)

    def _bin(self, name: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [str(POSTGRES_BIN_PATH / name), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            user=_run_as(),
            cwd="/",
            check=False,
        )
        if proc.returncode != 0:
            raise PostgresError(f"{name} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}\n{self.log_tail()}")
        return proc

    def log_tail(self, lines: int = 20) -> str:
        if not self.logfile.exists():
            return ""
        return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])

    def is_running(self) -> bool:
        if not (self.pgdata / "postmaster.pid").exists():
            return False
        return (
            subprocess.run(
                [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(self.pgdata), "status"],
                capture_output=True,
                user=_run_as(),
                cwd="/",
                check=False,
            ).returncode
            == 0
        )

    def init(self) -> None:
        """initdb once: scram-sha-256 over TCP, trust on the socket, a random superuser password."""
        if (self.pgdata / "PG_VERSION").exists():
            return
        self.datadir.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(exist_ok=True)
        if not self._password_file.exists():
            self._password_file.write_text(secrets.token_urlsafe(18) + "\n")
            self._password_file.chmod(0o600)
        self._remember_password(SUPERUSER, self.password)
        pwfile = self.datadir / ".initdb-pw"
        pwfile.write_text(self.password + "\n")
        if _run_as():
            _prepare_for_system_user(self.datadir)
        try:
            self._bin(
                "initdb",
                "-D",
                str(self.pgdata),
                "-U",
                SUPERUSER,
                "--encoding=UTF8",
                "--locale=C",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                f"--pwfile={pwfile}",
            )
        finally:
            pwfile.unlink(missing_ok=True)
        settings = {
            "listen_addresses": f"'{self.host}'",
            "unix_socket_directories": f"'{self.socket_dir}'",
            "max_connections": "300",
            "shared_buffers": "64MB",
            "log_line_prefix": "'%m [%p] %u@%d '",
            # The rehearsal stack is thrown away after each run; durability only costs time here.
            "fsync": "on" if self.durable else "off",
            "synchronous_commit": "on" if self.durable else "off",
            "full_page_writes": "on" if self.durable else "off",
        }
        with (self.pgdata / "postgresql.conf").open("a") as conf:
            conf.write("\n# rehearsal stack\n")
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())

    def start(self, timeout: float = 30) -> None:
        """Start the server (initialising it first if needed) and its TLS front; wait until both accept connections."""
        self.init()
        self._remember_password(SUPERUSER, self.password)
        if self.is_running():
            self.port = self.port or self._running_port()
            self.start_tls(timeout)
            return
        self.port = self.port or free_port(self.host)
        if _run_as():
            _prepare_for_system_user(self.datadir)
        self._ctl(
            "-w",
            "-t",
            str(int(timeout)),
            "-l",
            str(self.logfile),
            "-o",
            f"-p {self.port}",
            "start",
            timeout=timeout + 5,
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                psycopg2.connect(self.admin_dsn(), connect_timeout=2).close()
                break
            except psycopg2.OperationalError as exc:
                if time.monotonic() > deadline:
                    raise PostgresError(f"PostgreSQL did not accept connections: {exc}\n{self.log_tail()}") from exc
                time.sleep(0.1)
        self.start_tls(timeout)

    # -- the TLS front -------------------------------------------------------------------------
    def _tls_service(self) -> procs.Service:
        return procs.Service("postgres-tls", self.datadir)

    def start_tls(self, timeout: float = 30) -> None:
        """Start the TLS front (making the test CA and certificate at the first start) unless it runs."""
        if not self.tls_port and self._tls_port_file.exists():
            self.tls_port = int(self._tls_port_file.read_text())
        service = self._tls_service()
        if service.is_running() and self.tls_port and _accepts(self.host, self.tls_port):
            return
        service.stop()
        if not (self.ca_file.exists() and (self.tls_dir / "server.key").exists()):
            pgtls.make_certificates(self.tls_dir, self.host)
        self.tls_port = self.tls_port or free_port(self.host)
        self._tls_port_file.write_text(f"{self.tls_port}\n")
        service.start(
            [
                sys.executable,
                "-m",
                "rehearsal.pgtls",
                "--listen",
                f"{self.host}:{self.tls_port}",
                "--backend",
                f"{self.host}:{self.port}",
                "--cert",
                str(self.tls_dir / "server.pem"),
                "--key",
                str(self.tls_dir / "server.key"),
            ],
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
            cwd=self.datadir,
        )
        deadline = time.monotonic() + timeout
        while not _accepts(self.host, self.tls_port):
            if not service.is_running() or time.monotonic() > deadline:
                raise PostgresError(f"the TLS front did not come up on port {self.tls_port}:\n{service.log_tail()}")
            time.sleep(0.05)

    def stop_tls(self) -> None:
        self._tls_service().stop()

    def _running_port(self) -> int:
        # postmaster.pid, line 4: the port the running server listens on.
        return int((self.pgdata / "postmaster.pid").read_text().splitlines()[3])

    def pid(self) -> int | None:
        pidfile = self.pgdata / "postmaster.pid"
        return int(pidfile.read_text().splitlines()[0]) if pidfile.exists() else None

    def stop(self) -> None:
        self.stop_tls()
        if self.is_running():
            self._ctl("-w", "-m", "fast", "stop")

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.datadir, ignore_errors=True)

    # -- administration ------------------------------------------------------------------------
    def execute(self, statement: str | pgsql.Composable, dbname: str = "postgres", params: tuple | None = None) -> list:
        """Run one statement as superuser over the socket, autocommit; its rows if it returns any."""
        conn = psycopg2.connect(self.admin_dsn(dbname))
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute(statement, params)
                return cur.fetchall() if cur.description else []
        finally:
            conn.close()

    def create_role(self, name: str, password: str, superuser: bool = False) -> None:
        """Create (or reset the password of) a login role."""
        exists = self.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", params=(name,))
        self._remember_password(name, password)
        verb = "ALTER" if exists else "CREATE"
        options = " SUPERUSER" if superuser else ""
        self.execute(
            pgsql.SQL(verb + " ROLE {} WITH LOGIN PASSWORD {}" + options).format(
                pgsql.Identifier(name), pgsql.Literal(password)
            )
        )

    def create_database(self, name: str, owner: str = SUPERUSER, exist_ok: bool = True) -> None:
        if self.execute("SELECT 1 FROM pg_database WHERE datname = %s", params=(name,)):
            if exist_ok:
                return
            raise PostgresError(f"database {name} exists already")
        self.execute(pgsql.SQL("CREATE DATABASE {} OWNER {}").format(pgsql.Identifier(name), pgsql.Identifier(owner)))

    def drop_database(self, name: str) -> None:
        """Drop a database, terminating its connections."""
        self.execute(pgsql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(pgsql.Identifier(name)))


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def run_as_user() -> str:
    """The OS user the server runs as (for messages)."""
    return _run_as() or pwd.getpwuid(os.geteuid()).pw_name
