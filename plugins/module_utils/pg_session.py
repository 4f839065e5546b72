# Copyright: contributors to the emergency-rollback runbook
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""PostgreSQL sessions of the runbook: DSNs and their secrets, connections, timeouts (who is in the way: pg_locks).

Plain Python over psycopg2 (and SQLAlchemy for alembic's sake), no Ansible. Secrets: `connect()`
refuses a DSN that carries a password (PGPASSWORD or ~/.pgpass hold it) and, for a production-like
environment, any connection that does not verify the server (sslmode=verify-full with a CA); every
message that could contain any part of a DSN still goes through `redact()`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from urllib.parse import quote, unquote

try:
    import psycopg2
    import psycopg2.extensions

    HAS_PSYCOPG2 = True
except ImportError:  # pragma: no cover - the module reports missing_required_lib
    HAS_PSYCOPG2 = False

from ansible.module_utils.schema_errors import ConnectError, RefusedError, SchemaError

DSN_ENV_VAR = "ROLLBACK_DB_DSN"
APPLICATION_NAME = "emergency-rollback"
MASK = "********"

# The runbook's advisory lock: one constant key for every schema revert (and every recording of a
# rollback point), so that any two runs against the same database contend, whatever their options.
# Advisory locks are per database: runs against different databases never wait for each other.
# The key is the first 8 bytes of sha256(ADVISORY_LOCK_NAME) as a signed bigint:
#   ADVISORY_LOCK_KEY == 7088773521838913054
# An operator can see who holds it with:
#   SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted
#     AND classid = 1650483701 AND objid = 3462870558 AND objsubid = 1;
ADVISORY_LOCK_NAME = "emergency-rollback:schema-revert"


def advisory_key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


ADVISORY_LOCK_KEY = advisory_key(ADVISORY_LOCK_NAME)

LOCK_NOT_AVAILABLE = "55P03"  # lock_timeout expired (or NOWAIT)
DEADLOCK_DETECTED = "40P01"
QUERY_CANCELED = "57014"  # statement_timeout expired
RETRYABLE_CODES = frozenset({LOCK_NOT_AVAILABLE, DEADLOCK_DETECTED})


# -- DSNs and their secrets ----------------------------------------------------------------------
def resolve_dsn(dsn: str | None) -> str:
    """The DSN given, else ROLLBACK_DB_DSN; RefusedError if neither."""
    value = dsn or os.environ.get(DSN_ENV_VAR)
    if not value:
        raise RefusedError(f"No database given: set the dsn option or the environment variable {DSN_ENV_VAR}.")
    return value


_URI_PASSWORD = re.compile(r"^(?:postgres|postgresql)://(?P<user>[^:@/?#]*):(?P<password>[^@/?#]*)@")
_KV_PASSWORD = re.compile(r"(?:^|\s)password\s*=\s*(?P<value>'(?:[^'\\]|\\.)*'|\S+)")
_URI_PASSWORD_ANYWHERE = re.compile(r"(postgres(?:ql)?:/*[^:@/\s]*:)[^@\s]*@")
_KV_PASSWORD_ANYWHERE = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)
_QUERY_PASSWORD_ANYWHERE = re.compile(r"([?&]password=)[^&\s]*", re.IGNORECASE)


def dsn_secrets(dsn: str | None) -> set[str]:
    """Every spelling of the password in `dsn` (raw, URL-decoded, URL-encoded), plus PGPASSWORD."""
    found: set[str] = set()
    if dsn:
        with contextlib.suppress(Exception):
            parsed = psycopg2.extensions.parse_dsn(dsn).get("password")
            if parsed:
                found.add(parsed)
        match = _URI_PASSWORD.match(dsn)
        if match and match.group("password"):
            found.add(match.group("password"))
        for kv in _KV_PASSWORD.finditer(dsn):
            value = kv.group("value")
            found.add(value)
            if value.startswith("'") and value.endswith("'") and len(value) >= 2:
                found.add(value[1:-1].replace("\\'", "'").replace("\\\\", "\\"))
        query = re.search(r"[?&]password=([^&#]*)", dsn)
        if query:
            found.add(query.group(1))
    env_password = os.environ.get("PGPASSWORD")
    if env_password:
        found.add(env_password)
    spellings = set()
    for secret in found:
        spellings.update({secret, unquote(secret), quote(secret, safe=""), quote(unquote(secret), safe="")})
    # Very short values would mask half the message; they are masked as part of the patterns below.
    return {s for s in spellings if len(s) >= 3}


def redact(text: str, dsn: str | None = None) -> str:
    """`text` without any password: the DSN's, PGPASSWORD's, and anything shaped like one."""
    if not text:
        return text
    for secret in sorted(dsn_secrets(dsn), key=len, reverse=True):
        text = text.replace(secret, MASK)
    text = _URI_PASSWORD_ANYWHERE.sub(lambda m: m.group(1) + MASK + "@", text)
    text = _KV_PASSWORD_ANYWHERE.sub(lambda m: m.group(1) + MASK, text)
    return _QUERY_PASSWORD_ANYWHERE.sub(lambda m: m.group(1) + MASK, text)


def describe_dsn(dsn: str) -> str:
    """`user@host:port/dbname` for messages: enough to know which database, never the password."""
    try:
        parts = psycopg2.extensions.parse_dsn(dsn)
    except Exception:
        return "the database (its DSN could not be parsed)"
    user = parts.get("user") or os.environ.get("PGUSER") or ""
    host = parts.get("host") or os.environ.get("PGHOST") or "localhost"
    port = parts.get("port") or os.environ.get("PGPORT") or "5432"
    dbname = parts.get("dbname") or os.environ.get("PGDATABASE") or user
    return redact(f"{user + '@' if user else ''}{host}:{port}/{dbname}", dsn)


def first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0].strip() if text else type(exc).__name__


# -- what a DSN may be ---------------------------------------------------------------------------
_INVALID_DSN = (
    "Cannot connect: the DSN is not a valid libpq connection string or URI; write it as "
    "postgresql://user@host:port/dbname?sslmode=verify-full&sslrootcert=<CA file> (the password from "
    "PGPASSWORD or ~/.pgpass) and try again."
)
_TLS_FIX = (
    "set sslmode=verify-full and sslrootcert=<the CA's PEM file> in its DSN (rollback_db_sslmode and "
    "rollback_db_sslrootcert in the inventory)"
)


def check_dsn(dsn: str, require_verified_tls: bool = False) -> dict:
    """The DSN's parameters, before anything is contacted; RefusedError (one sentence, naming the fix) if:

    - it carries a password (in any spelling libpq reads: user:password@, password=, ?password=): the
      password belongs in PGPASSWORD or ~/.pgpass, where no task, log or audit record can show it;
    - `require_verified_tls` (a production-like environment) and the connection would not verify the
      server: anything but sslmode=verify-full (DSN first, then PGSSLMODE, as libpq decides), no CA
      file to verify with (sslrootcert, PGSSLROOTCERT or ~/.postgresql/root.crt; `system` is the
      system's trust store), or a Unix socket (no TLS at all). libpq's documentation, "SSL Support":
      only verify-full protects against both eavesdropping and a man in the middle.
    """
    try:
        parts = psycopg2.extensions.parse_dsn(dsn)
    except psycopg2.ProgrammingError:
        raise ConnectError(_INVALID_DSN) from None  # libpq's message quotes the DSN: not repeated
    if parts.get("password"):
        raise RefusedError(
            f"The DSN of {describe_dsn(dsn)} carries a password: remove it from the DSN and give it in "
            "PGPASSWORD or ~/.pgpass (libpq reads both); nothing was contacted."
        )
    if require_verified_tls:
        _require_verified_tls(parts, dsn)
    return parts


def _require_verified_tls(parts: dict, dsn: str) -> None:
    where = describe_dsn(dsn)
    hosts = [h for h in (parts.get("host") or os.environ.get("PGHOST") or "").split(",") if h]
    if (not hosts and not parts.get("hostaddr")) or any(h.startswith(("/", "@")) for h in hosts):
        raise RefusedError(
            f"{where} belongs to a production-like environment and is reached over a Unix socket, which has no "
            f"TLS: give its TCP host name and {_TLS_FIX}; nothing was contacted."
        )
    sslmode = (
        parts.get("sslmode") or os.environ.get("PGSSLMODE") or ("require" if parts.get("requiressl") == "1" else "")
    )
    if sslmode != "verify-full":
        raise RefusedError(
            f"{where} belongs to a production-like environment: its connection must verify the server's "
            f"certificate and host name, but sslmode is {sslmode or 'not set (prefer)'}: {_TLS_FIX}; "
            "nothing was contacted."
        )
    root = parts.get("sslrootcert") or os.environ.get("PGSSLROOTCERT") or "~/.postgresql/root.crt"
    if root != "system" and not os.path.isfile(os.path.expanduser(root)):
        raise RefusedError(
            f"{where}: sslmode=verify-full needs the CA that signed the server's certificate, and {root} is not a "
            "file: give the CA's PEM file in sslrootcert (rollback_db_sslrootcert), or sslrootcert=system for the "
            "system's trust store; nothing was contacted."
        )


# -- connections ---------------------------------------------------------------------------------
def connect(
    dsn: str, application_name: str = APPLICATION_NAME, connect_timeout: int = 10, require_verified_tls: bool = False
):
    """A psycopg2 connection (not autocommit); RefusedError for a DSN check_dsn() refuses, ConnectError
    with a redacted, one-line cause when the server cannot be reached, authenticated or verified."""
    check_dsn(dsn, require_verified_tls)
    try:
        conn = psycopg2.connect(dsn, application_name=application_name, connect_timeout=connect_timeout)
    except psycopg2.ProgrammingError:
        raise ConnectError(_INVALID_DSN) from None
    except Exception as exc:
        cause = " ".join(str(exc).split())
        cause = re.sub(r"^connection to server at \S+ \([^)]*\), port \d+ failed: ", "", cause)
        if "certificate verify failed" in cause or "does not match host name" in cause:
            cause += (
                " (the server's certificate is not signed by the CA in sslrootcert, or not issued for this host "
                "name: give the right CA and the host name in the certificate, never a weaker sslmode)"
            )
        raise ConnectError(redact(f"Cannot connect to {describe_dsn(dsn)}: {cause}", dsn)) from None
    if require_verified_tls and not (conn.info.ssl_in_use and conn.info.dsn_parameters.get("sslmode") == "verify-full"):
        conn.close()  # e.g. a service file or another layer chose otherwise: never use an unverified session
        raise RefusedError(
            f"{describe_dsn(dsn)} belongs to a production-like environment, and its connection is not TLS verified "
            f"with sslmode=verify-full: {_TLS_FIX}."
        )
    return conn


def sqlalchemy_connection(
    dsn: str, application_name: str = APPLICATION_NAME, connect_timeout: int = 10, require_verified_tls: bool = False
):
    """A SQLAlchemy Connection over one psycopg2 connection (NullPool), for alembic to run on.

    Returns (engine, connection); the caller closes the connection and disposes of the engine.
    libpq gets the DSN unchanged (SQLAlchemy does not re-parse it), so PGPASSWORD, ~/.pgpass,
    sslmode and the like work as they do for psql.
    """
    from sqlalchemy import create_engine, pool  # noqa: PLC0415 - only the schema revert needs SQLAlchemy

    engine = create_engine(
        "postgresql+psycopg2://",
        creator=lambda: connect(dsn, application_name, connect_timeout, require_verified_tls),
        poolclass=pool.NullPool,
    )
    try:
        return engine, engine.connect()
    except SchemaError:  # ConnectError, or RefusedError for a DSN that must not be used
        engine.dispose()
        raise
    except Exception as exc:
        engine.dispose()
        # The creator raised ConnectError, which SQLAlchemy may have wrapped.
        inner = exc.__cause__ or exc.__context__ or getattr(exc, "orig", None)
        if isinstance(inner, SchemaError):
            raise inner from None
        raise ConnectError(redact(f"Cannot connect to {describe_dsn(dsn)}: {first_line(exc)}", dsn)) from None


def pgcode_of(exc: BaseException | None) -> str | None:
    """The SQLSTATE of the first psycopg2 error in `exc`'s chain (SQLAlchemy wraps them)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        code = getattr(exc, "pgcode", None)
        if code:
            return code
        orig = getattr(exc, "orig", None)
        if orig is not None and getattr(orig, "pgcode", None):
            return orig.pgcode
        exc = exc.__cause__ or exc.__context__
    return None


def set_local_timeouts(cursor, lock_timeout: float, statement_timeout: float) -> None:
    """SET LOCAL lock_timeout and statement_timeout (seconds) for the current transaction."""
    cursor.execute(
        "SELECT set_config('lock_timeout', %s, true), set_config('statement_timeout', %s, true)",
        (f"{max(1, round(lock_timeout * 1000))}ms", f"{max(1, round(statement_timeout * 1000))}ms"),
    )
