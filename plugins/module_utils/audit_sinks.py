# Copyright: contributors to the emergency-rollback runbook
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Where a run's audit records go: the file, and the PostgreSQL copy when configured.

`AuditWriter.write(body)` seals the record after the file's last line and, holding the file's
lock, inserts the same line into PostgreSQL, then appends it to the file: both copies hold the
same bytes, in the same order. Every record says where it was written: `audit_file` (host and
path of the file) and `sinks` (`file`, `postgresql`), so that verification knows which copy must
hold it. A sink that fails is reported in the result (one sentence), never raised: the caller
decides what a failure means (at the start of a run, the rollback refuses to begin).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from ansible.module_utils.audit_chain import AuditKey, AuditWriteError, seal
from ansible.module_utils.audit_file import FileSink
from ansible.module_utils.audit_pg import PgSink

FILE, POSTGRESQL = "file", "postgresql"


@dataclass
class WriteResult:
    record: dict | None = None
    line: bytes | None = None
    file_error: str | None = None
    pg_error: str | None = None
    pg_seq: int | None = None

    def errors(self) -> list[str]:
        return [error for error in (self.file_error, self.pg_error) if error]


class AuditWriter:
    """The sinks of one run."""

    def __init__(self, path: str, key: AuditKey | None, group: str | None = None, pg_dsn: str | None = None):
        self.key = key
        self.file = FileSink(path, group, lock_timeout=30.0)
        self.pg = PgSink(pg_dsn, key) if pg_dsn and key is not None else None
        self.pg_configured = bool(pg_dsn)
        self.identity = {"host": socket.gethostname(), "path": os.path.abspath(path)}

    @property
    def sinks(self) -> list[str]:
        return [FILE, POSTGRESQL] if self.pg is not None else [FILE]

    def write(self, body: dict) -> WriteResult:
        """Seal and write one record to every sink; the result says what each sink did."""
        result = WriteResult()
        body = {**body, "audit_file": self.identity, "sinks": self.sinks}
        if self.pg_configured and self.pg is None:
            result.pg_error = "the PostgreSQL copy needs ROLLBACK_AUDIT_KEY (its rows are sealed): set it"

        def build(prev_line: bytes | None, prev_seq: int) -> bytes:
            result.record, result.line = seal(body, prev_line, prev_seq, self.key)
            self._to_pg(result)
            return result.line

        try:
            self.file.append(build)
        except AuditWriteError as exc:
            result.file_error = str(exc)
        except OSError as exc:
            result.file_error = f"cannot write {self.file.path}: {exc.strerror or exc}"
        if result.line is None and self.pg is not None:
            # The file could not even be opened: PostgreSQL still gets the record, as a chain of its own.
            body = {**body, "sinks": [POSTGRESQL], "file_error": result.file_error}
            result.record, result.line = seal(body, None, 0, self.key)
            self._to_pg(result)
        return result

    def _to_pg(self, result: WriteResult) -> None:
        if self.pg is None:
            return
        try:
            result.pg_seq = self.pg.append(result.line, result.record["run_id"], result.record["kind"])
        except AuditWriteError as exc:
            result.pg_error = str(exc)

    def probe(self) -> None:
        """AuditWriteError unless the file is still the run's own and writable."""
        self.file.probe()

    def lines_of_run(self, run_id: str) -> dict[str, list[bytes]]:
        """This run's lines as each sink holds them now (the guard reads its records back)."""
        from ansible.module_utils.audit_file import read_lines  # noqa: PLC0415

        lines = {FILE: []}
        try:
            marker = f'"run_id":"{run_id}"'.encode()
            lines[FILE] = [line for line in read_lines(self.file.path) if marker in line]
        except Exception as exc:
            raise AuditWriteError(f"cannot read {self.file.path} back: {exc}") from None
        if self.pg is not None:
            lines[POSTGRESQL] = self.pg.lines_of_run(run_id)
        return lines
