# Copyright: contributors to the emergency-rollback runbook
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Who is in the way: the runbook's advisory lock, and the sessions that block a revert or upgrade.

Plain Python over psycopg2, no Ansible; connections and DSNs are pg_session's.
"""

from __future__ import annotations

import threading
import time

try:
    import psycopg2
    import psycopg2.errors
except ImportError:  # pragma: no cover - the module reports missing_required_lib
    pass

from ansible.module_utils.pg_session import (
    ADVISORY_LOCK_KEY,
    LOCK_NOT_AVAILABLE,
    connect,
    pgcode_of,
)
from ansible.module_utils.schema_errors import AdvisoryLockTimeout

# -- who is in the way ---------------------------------------------------------------------------
# The report of a session that is in the way carries who and how long, never what it runs: a
# query's text can hold customers' data (literals of an INSERT, a WHERE on an e-mail address), and
# this report reaches the job output, the audit, Slack, e-mail and PagerDuty. So the text is not
# even read from PostgreSQL unless the caller opts in (schema_migration's report_query_text).
SESSION_FIELDS = ("pid", "role", "application_name", "state", "age_seconds")
QUERY_CHARS = 200  # of a query's text, with the opt-in

# `age_seconds`: for how long the session has been in its current transaction (what holds locks),
# else in its current state, else connected. NULL when the role may not see it (no pg_read_all_stats).
_SESSION_COLUMNS = """
    a.pid, a.usename AS role, a.application_name, a.state,
    round(extract(epoch FROM now() - coalesce(a.xact_start, a.state_change, a.backend_start))::numeric, 1)::float
        AS age_seconds
"""
_QUERY_COLUMN = f", left(a.query, {QUERY_CHARS}) AS query"
_BLOCKING_SESSIONS = """
    SELECT {columns}
    FROM pg_stat_activity a WHERE a.pid = ANY(pg_blocking_pids(%s)) ORDER BY a.pid
"""
_ADVISORY_HOLDERS = """
    SELECT {columns}
    FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
    WHERE l.locktype = 'advisory' AND l.granted
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND l.classid = %s AND l.objid = %s AND l.objsubid = 1
    ORDER BY a.pid
"""


def _columns(include_query: bool) -> str:
    return _SESSION_COLUMNS + (_QUERY_COLUMN if include_query else "")


def _session_rows(cursor) -> list[dict]:
    names = [col.name for col in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def session_report(session: dict, include_query: bool = False) -> dict:
    """The reportable fields of one session (SESSION_FIELDS, plus `query` only with the opt-in)."""
    report = {key: session.get(key) for key in SESSION_FIELDS}
    if include_query and "query" in session:
        report["query"] = session["query"]
    return report


def blocking_sessions(cursor, pid: int, include_query: bool = False) -> list[dict]:
    """The sessions `pid` is waiting for (pg_blocking_pids): SESSION_FIELDS, and `query` only if asked.

    A role that is neither superuser nor member of pg_read_all_stats sees other roles' sessions
    without state and timestamps (so without age): grant pg_read_all_stats to the migration role
    for a complete report.
    """
    cursor.execute(_BLOCKING_SESSIONS.format(columns=_columns(include_query)), (pid,))
    return _session_rows(cursor)


def advisory_lock_holders(cursor, key: int = ADVISORY_LOCK_KEY, include_query: bool = False) -> list[dict]:
    """Sessions holding the advisory lock `key` in the current database (fields as blocking_sessions)."""
    cursor.execute(
        _ADVISORY_HOLDERS.format(columns=_columns(include_query)), ((key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF)
    )
    return _session_rows(cursor)


def _age(seconds) -> str:
    if seconds is None:
        return "age unknown"
    seconds = float(seconds)
    if seconds < 120:
        return f"for {seconds:.1f} s"
    if seconds < 7200:
        return f"for {seconds / 60:.1f} min"
    return f"for {seconds / 3600:.1f} h"


def describe_sessions(sessions: list[dict]) -> str:
    """One clause per session, joined with '; ': pid, state and age, role, application_name.

    The query's text appears only when the session carries one, i.e. when the caller opted in
    (blocking_sessions(include_query=True)); it is never part of the report otherwise.
    """
    parts = []
    for s in sessions:
        text = (
            f"pid {s['pid']} ({s.get('state') or 'state unknown'} {_age(s.get('age_seconds'))}, "
            f"role {s.get('role') or 'unknown'}, application_name '{s.get('application_name') or ''}'"
        )
        if s.get("query") is not None:
            text += f", query {' '.join(s['query'].split())!r}"
        parts.append(text + ")")
    return "; ".join(parts) if parts else "no blocking session was seen"


def acquire_advisory_lock(conn, wait_seconds: float, key: int = ADVISORY_LOCK_KEY, xact: bool = False) -> float:
    """Take the runbook's advisory lock, waiting at most `wait_seconds`; returns the seconds waited.

    Session level by default (held until the connection closes, across transactions), or
    transaction level (`xact=True`, released at COMMIT/ROLLBACK; then the caller's transaction
    stays open). Raises AdvisoryLockTimeout naming the holder (pid, application_name, since).
    """
    started = time.monotonic()
    function = "pg_advisory_xact_lock" if xact else "pg_advisory_lock"
    with conn.cursor() as cur:
        try:
            if wait_seconds <= 0:
                cur.execute(f"SELECT {function.replace('pg_', 'pg_try_', 1)}(%s)", (key,))
                if not cur.fetchone()[0]:
                    raise psycopg2.errors.LockNotAvailable("advisory lock is held")
            else:
                cur.execute("SELECT set_config('lock_timeout', %s, true)", (f"{max(1, round(wait_seconds * 1000))}ms",))
                cur.execute(f"SELECT {function}(%s)", (key,))
                cur.execute("SELECT set_config('lock_timeout', '0', true)")
        except psycopg2.Error as exc:
            if pgcode_of(exc) != LOCK_NOT_AVAILABLE and not isinstance(exc, psycopg2.errors.LockNotAvailable):
                raise
            conn.rollback()
            with conn.cursor() as probe:
                holders = advisory_lock_holders(probe, key)
            conn.rollback()
            who = describe_sessions(holders) if holders else "holder gone"
            raise AdvisoryLockTimeout(
                f"Another schema revert holds the runbook's advisory lock on this database: {who}; "
                f"waited {time.monotonic() - started:.1f} s (advisory_lock_wait {wait_seconds:g} s): "
                "let it finish, then run again.",
                holders,
            ) from None
    if not xact:
        conn.commit()
    return time.monotonic() - started


class BlockerWatch:
    """Records who blocks session `pid` while an attempt runs, from a second connection.

    The report must name the sessions that blocked the *attempt*, and after a lock timeout the
    attempt no longer waits, so pg_blocking_pids() must be asked while it still does. The watch
    only connects when the attempt is still running after `delay` seconds (a lock wait is likely):
    a quick attempt costs nothing. Threads are fine here: only psycopg2 runs in this one.
    """

    def __init__(
        self,
        dsn: str,
        pid: int,
        delay: float,
        application_name: str,
        interval: float = 0.1,
        *,
        require_verified_tls: bool = False,
        include_query: bool = False,
    ):
        self.dsn, self.pid, self.delay, self.interval = dsn, pid, delay, interval
        self.require_verified_tls = require_verified_tls
        self.include_query = include_query
        self.application_name = application_name + "-watch"
        self.sessions: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="blocker-watch", daemon=True)

    def __enter__(self) -> BlockerWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        if self._stop.wait(self.delay):
            return
        try:
            conn = connect(self.dsn, self.application_name, 5, self.require_verified_tls)
        except Exception:
            return
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                while not self._stop.is_set():
                    found = blocking_sessions(cur, self.pid, self.include_query)
                    if found:
                        self.sessions = found
                    self._stop.wait(self.interval)
        except Exception:  # noqa: S110 - the watch only adds detail to a report; it must never fail a run
            pass
        finally:
            conn.close()
