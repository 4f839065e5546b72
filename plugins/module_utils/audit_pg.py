# Copyright: contributors to the emergency-rollback runbook
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The PostgreSQL copy of the audit: one chain across every run, in `runbook.audit_log`.

Each row keeps one record line exactly as the audit file has it (`line`), and its place in the
database's own chain, which runs across every run of every controller (an AWX job's file is
fresh each time; this chain is not):

- `seq`: 1, 2, ... over the whole table, with no gap;
- `prev_sha256`: the previous row's `sha256` (64 zeros for the first);
- `sha256` = sha256 of `"<seq>:<prev_sha256>:<sha256 of line>"`, and `seal` = the HMAC-SHA256 of
  the same text keyed with ROLLBACK_AUDIT_KEY;
- `runbook.audit_head` holds the last row's seq and sha256, so that rows cut off the end are seen.

The table is created by the runbook's own migration (audit_pg_schema, `playbooks/audit_setup.yml`),
never here. The writer role may only INSERT (and SELECT): a trigger refuses UPDATE, DELETE and
TRUNCATE, checks that every new row follows the head, and moves the head. Appends are serialised
by a transaction-level advisory lock.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from ansible.module_utils.audit_chain import (
    RESEALED,
    ZERO_SHA256,
    AuditError,
    AuditKey,
    AuditWriteError,
    Broken,
    Report,
    check_record,
    note_run,
    sha256_hex,
)
from ansible.module_utils.pg_session import advisory_key, first_line, redact

try:
    import psycopg2

    HAS_PSYCOPG2 = True
except ImportError:  # pragma: no cover - reported when the copy is configured
    HAS_PSYCOPG2 = False

DSN_ENV = "ROLLBACK_AUDIT_PG_DSN"
APPLICATION_NAME = "rollback_audit"
APPEND_LOCK_KEY = advisory_key("emergency-rollback:audit-append")
UNDEFINED_TABLE = "42P01"
_INSERT = (
    "INSERT INTO runbook.audit_log (seq, prev_sha256, sha256, seal, run_id, kind, line)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s)"
)
_SELECT = "SELECT seq, prev_sha256, sha256, seal, line FROM runbook.audit_log"


def entry_text(seq: int, prev_sha256: str, line: bytes) -> bytes:
    """What a row's sha256 and seal cover: its place in the chain and its line's sha256."""
    return f"{seq}:{prev_sha256}:{sha256_hex(line)}".encode()


def _missing_table(exc: Exception) -> bool:
    return getattr(exc, "pgcode", None) == UNDEFINED_TABLE


NO_TABLE = (
    "the audit database has no runbook.audit_log: create it with playbooks/audit_setup.yml, run by the audit"
    " database's owner"
)


class PgSink:
    """Appends record lines to runbook.audit_log, one short transaction (and connection) each."""

    def __init__(self, dsn: str, key: AuditKey, connect_timeout: int = 5):
        self.dsn = dsn
        self.key = key
        self.connect_timeout = connect_timeout

    def _connect(self):
        if not HAS_PSYCOPG2:
            raise AuditWriteError("the PostgreSQL copy needs psycopg2 on the controller")
        return psycopg2.connect(self.dsn, connect_timeout=self.connect_timeout, application_name=APPLICATION_NAME)

    def _error(self, what: str, exc: Exception) -> AuditWriteError:
        if _missing_table(exc):
            return AuditWriteError(NO_TABLE)
        return AuditWriteError(redact(f"cannot {what} the PostgreSQL copy of the audit: {first_line(exc)}", self.dsn))

    @contextlib.contextmanager
    def _cursor(self, what: str):
        """A cursor in one transaction (committed on the way out); any failure becomes AuditWriteError
        ("cannot <what> the PostgreSQL copy ...", redacted) and the connection is closed."""
        try:
            conn = self._connect()
            try:
                with conn, conn.cursor() as cur:
                    yield cur
            finally:
                conn.close()
        except AuditWriteError:
            raise
        except Exception as exc:
            raise self._error(what, exc) from None

    def append(self, line: bytes, run_id: str, kind: str) -> int:
        """Insert one record line after the chain head; returns its seq."""
        with self._cursor("write") as cur:
            cur.execute("SET LOCAL lock_timeout = '10s'; SET LOCAL statement_timeout = '20s'")
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (APPEND_LOCK_KEY,))
            cur.execute("SELECT seq, sha256 FROM runbook.audit_head")
            head = cur.fetchone()
            if head is None:
                raise AuditWriteError(NO_TABLE)
            seq, prev = head[0] + 1, head[1]
            text = entry_text(seq, prev, line)
            cur.execute(_INSERT, (seq, prev, sha256_hex(text), self.key.mac(text), run_id, kind, line.decode()))
        return seq

    def lines_of_run(self, run_id: str) -> list[bytes]:
        """The record lines of one run, in chain order (the guard reads its own records back)."""
        with self._cursor("read") as cur:
            cur.execute("SELECT line FROM runbook.audit_log WHERE run_id = %s ORDER BY seq", (run_id,))
            return [row[0].encode() for row in cur.fetchall()]


@dataclass
class PgRow:
    seq: int
    prev_sha256: str
    sha256: str
    seal: str
    line: bytes


def read_chain(dsn: str, connect_timeout: int = 10) -> tuple[list[PgRow], tuple[int, str] | None]:
    """Every row of runbook.audit_log in seq order, and the head (None if its row is gone)."""
    if not HAS_PSYCOPG2:
        raise AuditError("reading the PostgreSQL copy needs psycopg2 on the controller")
    try:
        conn = psycopg2.connect(dsn, connect_timeout=connect_timeout, application_name=APPLICATION_NAME)
        try:
            conn.set_session(readonly=True, isolation_level="REPEATABLE READ")
            with conn, conn.cursor() as cur:
                cur.execute(_SELECT + " ORDER BY seq")
                rows = [PgRow(r[0], r[1], r[2], r[3], r[4].encode()) for r in cur.fetchall()]
                cur.execute("SELECT seq, sha256 FROM runbook.audit_head")
                head = cur.fetchone()
        finally:
            conn.close()
    except Exception as exc:
        if _missing_table(exc):
            raise AuditError(NO_TABLE) from None
        raise AuditError(redact(f"cannot read the PostgreSQL copy of the audit: {first_line(exc)}", dsn)) from None
    return rows, (head[0], head[1]) if head else None


def _row_failure(index: int, rows: list[PgRow], prev: PgRow | None, key: AuditKey) -> tuple[str, str] | None:  # noqa: PLR0911
    """Why row `index` does not belong where it is, or None."""
    row = rows[index]
    expected_seq = prev.seq + 1 if prev else 1
    expected_prev = prev.sha256 if prev else ZERO_SHA256
    text = entry_text(row.seq, row.prev_sha256, row.line)
    if row.seq != expected_seq:
        if row.seq > expected_seq:
            where = "at the start" if prev is None else "in the middle"
            return f"missing {where}", f"rows seq {expected_seq} to {row.seq - 1} are missing"
        return "reordered", f"its seq {row.seq} comes after seq {prev.seq if prev else 0}"
    if row.prev_sha256 != expected_prev:
        later = [r.seq for r in rows[index + 1 :] if r.sha256 == row.prev_sha256]
        if later:
            return "reordered", f"it follows seq {later[0]}, which now comes after it"
        return "edited", "its prev_sha256 is not the sha256 of the row before it"
    if sha256_hex(text) != row.sha256:
        return "edited", "its sha256 does not match its seq, link and line"
    if not key.valid(text, row.seal):
        return RESEALED, "its seal does not match: rewritten by someone without the key"
    return None


def verify_rows(rows: list[PgRow], head: tuple[int, str] | None, key: AuditKey) -> Report:
    """Verify the PostgreSQL chain: each row's link, hash, seal and line, then the head."""
    report = Report()
    prev: PgRow | None = None
    for index, row in enumerate(rows):
        record, reason, detail = check_record(row.line, key)
        run_id = record.get("run_id") if isinstance(record, dict) else None
        failure = _row_failure(index, rows, prev, key)
        if failure is not None:
            reason, detail = failure
        if reason is not None:
            report.broken = Broken(row.seq, run_id if isinstance(run_id, str) else None, reason, detail, "postgresql")
            return report
        report.records += 1
        report.sealed += 1
        report.head_seq, report.head_sha256 = row.seq, row.sha256
        note_run(report, record, row.seq)
        prev = row
    if head is None:
        report.broken = Broken(report.head_seq, None, "edited", "runbook.audit_head has no row", "postgresql")
    elif head != (report.head_seq, report.head_sha256):
        if head[0] > report.head_seq:
            detail = f"the head says seq {head[0]}, the last row is seq {report.head_seq}"
            report.broken = Broken(report.head_seq + 1, None, "missing at the end", detail, "postgresql")
        else:
            detail = f"the head (seq {head[0]}) does not match the last row (seq {report.head_seq})"
            report.broken = Broken(head[0], None, "edited", detail, "postgresql")
    return report
