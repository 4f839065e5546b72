# Copyright: contributors to the emergency-rollback runbook
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The audit log of the rollback: an append-only JSONL file whose records form a sha256 chain.

One line is one record, a JSON object in canonical form (sorted keys, no spaces, UTF-8) with:

- `seq`: 1 for the first record of the file, then +1 per record;
- `prev_sha256`: sha256 of the previous line's exact bytes (without its newline), 64 zeros for the first;
- `sha256`: sha256 of the canonical JSON of the record without its `sha256` field;
- `run_id` and `kind` (`start` or `end`): a run writes a `start` record when it begins and an
  `end` record when it finishes (or is interrupted).

`append_record` appends under an exclusive `flock`, computing `seq` and `prev_sha256` from the
file's last line while holding it, so concurrent runs can share one file. `verify_lines` /
`verify_file` walk the chain and name the first broken record and why: `not JSON`, `edited`,
`deleted` or `reordered`. Runs with a `start` but no `end` are reported as aborted (no end
record) unless their controller process is still alive on this host (then: in progress).

Plain Python, used by the `rollback_audit` callback and the `audit_verify` module.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import socket
import stat
import time
from dataclasses import dataclass, field

ZERO_SHA256 = "0" * 64
REQUIRED_FIELDS = ("kind", "prev_sha256", "run_id", "seq", "sha256")
KINDS = ("start", "end")
LOCK_TIMEOUT = 10.0
MIN_FREE_BYTES = 64 * 1024
ABORTED_NO_END = "aborted (no end record)"


class AuditError(Exception):
    """Base class of the audit log's errors."""


class AuditWriteError(AuditError):
    """The audit file could not be created, locked, or appended to."""


def canonical(record: dict) -> bytes:
    """The canonical bytes of a record: sorted keys, no whitespace, UTF-8."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def record_sha256(record: dict) -> str:
    """sha256 of the record's canonical JSON without its `sha256` field."""
    return sha256_hex(canonical({k: v for k, v in record.items() if k != "sha256"}))


def seal(record: dict, prev_line: bytes | None, prev_seq: int) -> tuple[dict, bytes]:
    """Chain `record` after `prev_line` (None for the first record): returns the sealed record and its line."""
    sealed = {k: v for k, v in record.items() if k not in ("seq", "prev_sha256", "sha256")}
    sealed["seq"] = prev_seq + 1
    sealed["prev_sha256"] = ZERO_SHA256 if prev_line is None else sha256_hex(prev_line)
    sealed["sha256"] = record_sha256(sealed)
    return sealed, canonical(sealed)


# --------------------------------------------------------------------------------------------
# Writing


def _mkdir_private(directory: str, gid: int | None) -> None:
    """Create `directory` (and missing parents) as 0700, or 0750 owned by the audit group."""
    if os.path.isdir(directory):
        return
    parent = os.path.dirname(directory)
    if parent and parent != directory:
        _mkdir_private(parent, gid)
    try:
        os.mkdir(directory, 0o750 if gid is not None else 0o700)
    except FileExistsError:
        return
    if gid is not None:
        os.chown(directory, -1, gid)
        os.chmod(directory, 0o750)  # noqa: S103 - readable by the audit group only, by request


def resolve_group(name: str | None) -> int | None:
    """The gid of the audit group `name` (None: no group, mode 0600)."""
    if not name:
        return None
    import grp  # noqa: PLC0415 - POSIX only, and only when a group is configured

    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise AuditWriteError(f"the audit group {name!r} does not exist: create it or unset file_group") from None


def open_for_append(path: str, group: str | None = None) -> int:
    """Open (creating it 0600, or 0640 for `group`, with a private parent dir) the audit file for appending."""
    gid = resolve_group(group)
    try:
        _mkdir_private(os.path.dirname(os.path.abspath(path)), gid)
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        try:
            fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
        except OSError as exc:
            raise AuditWriteError(f"cannot open {path}: {exc.strerror}") from None
    except OSError as exc:
        raise AuditWriteError(f"cannot create {path}: {exc.strerror}") from None
    else:
        try:
            if gid is not None:
                os.fchown(fd, -1, gid)
                os.fchmod(fd, 0o640)
            else:
                os.fchmod(fd, 0o600)
        except OSError as exc:
            os.close(fd)
            raise AuditWriteError(f"cannot set the mode of {path}: {exc.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise AuditWriteError(f"{path} is not a regular file")
    return fd


def _lock(fd: int, path: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise AuditWriteError(f"cannot lock {path}: {exc.strerror}") from None
        if time.monotonic() >= deadline:
            raise AuditWriteError(f"cannot lock {path}: another process held it for {timeout:.0f} s")
        time.sleep(0.02)


def _last_line(fd: int) -> tuple[bytes | None, bool]:
    """The file's last line without its newline (None if empty), and whether the file ends with a newline."""
    size = os.fstat(fd).st_size
    if size == 0:
        return None, True
    ends_with_newline = os.pread(fd, 1, size - 1) == b"\n"
    pos = size - 1 if ends_with_newline else size
    buf = b""
    while pos > 0:
        start = max(0, pos - 8192)
        buf = os.pread(fd, pos - start, start) + buf
        pos = start
        cut = buf.rfind(b"\n")
        if cut >= 0:
            return buf[cut + 1 :], ends_with_newline
    return buf, ends_with_newline


def _seq_of(line: bytes | None) -> int:
    if line is None:
        return 0
    try:
        seq = json.loads(line).get("seq")
    except (ValueError, AttributeError):
        return 0
    return seq if isinstance(seq, int) and not isinstance(seq, bool) else 0


def append_record(path: str, record: dict, group: str | None = None, lock_timeout: float = LOCK_TIMEOUT) -> dict:
    """Seal `record` after the file's last line and append it, flushed and fsynced; returns the sealed record.

    A torn last line (no trailing newline) is left as it is, as evidence: the new record starts on
    a line of its own and chains to the torn bytes, and `verify` reports the torn line.
    """
    fd = open_for_append(path, group)
    try:
        _lock(fd, path, lock_timeout)
        prev, ends_with_newline = _last_line(fd)
        sealed, line = seal(record, prev, _seq_of(prev))
        data = (b"" if ends_with_newline else b"\n") + line + b"\n"
        try:
            written = os.write(fd, data)
            if written != len(data):
                raise AuditWriteError(f"cannot append to {path}: short write ({written} of {len(data)} bytes)")
            os.fsync(fd)
        except OSError as exc:
            raise AuditWriteError(f"cannot append to {path}: {exc.strerror}") from None
        return sealed
    finally:
        os.close(fd)  # closing releases the lock


def file_identity(path: str) -> tuple[int, int] | None:
    """(device, inode) of the audit file, None if it does not exist."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def probe(path: str, identity: tuple[int, int] | None) -> None:
    """Raise AuditWriteError unless the audit file is still the one we wrote and can take another record."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise AuditWriteError(f"{path} is gone: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise AuditWriteError(f"{path} is no longer a regular file")
    if identity is not None and (st.st_dev, st.st_ino) != identity:
        raise AuditWriteError(f"{path} was replaced by another file during the run")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
    except OSError as exc:
        raise AuditWriteError(f"cannot open {path} for appending: {exc.strerror}") from None
    try:
        vfs = os.fstatvfs(fd)
    finally:
        os.close(fd)
    if vfs.f_bavail * vfs.f_frsize < MIN_FREE_BYTES:
        raise AuditWriteError(f"the file system of {path} is full")


# --------------------------------------------------------------------------------------------
# Process liveness: is the controller that wrote a `start` record still running?


def process_start_ticks(pid: int) -> int | None:
    """The start time of process `pid` in clock ticks since boot (Linux), None if unknown or not alive."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            data = handle.read()
    except OSError:
        return None
    fields = data[data.rfind(b")") + 2 :].split()
    if not fields or fields[0] == b"Z":
        return None
    return int(fields[19])


def controller_identity() -> dict:
    """Who and where this process is, as recorded in a `start` record."""
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "pid_start": process_start_ticks(pid)}


def controller_alive(controller: dict) -> bool:
    """True if the controller process of a `start` record is this host's live process with that start time."""
    if not isinstance(controller, dict) or controller.get("host") != socket.gethostname():
        return False
    pid = controller.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    ticks = process_start_ticks(pid)
    if ticks is None:
        return False
    return controller.get("pid_start") in (None, ticks)


# --------------------------------------------------------------------------------------------
# Verifying


@dataclass
class Broken:
    line: int
    run_id: str | None
    reason: str  # "not JSON", "edited", "deleted" or "reordered"
    detail: str

    def message(self) -> str:
        run = f" (run {self.run_id})" if self.run_id else ""
        return f"broken at line {self.line}{run}: {self.reason}: {self.detail}"


@dataclass
class Run:
    run_id: str
    start_line: int | None = None
    end_line: int | None = None
    playbook: str | None = None
    started_at: str | None = None
    outcome: str | None = None
    controller: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "run_id": self.run_id,
            "playbook": self.playbook,
            "started_at": self.started_at,
            "outcome": self.outcome,
            "start_line": self.start_line,
            "end_line": self.end_line,
        }


@dataclass
class Report:
    records: int = 0
    runs: dict[str, Run] = field(default_factory=dict)
    broken: Broken | None = None
    head_sha256: str = ZERO_SHA256

    @property
    def ok(self) -> bool:
        return self.broken is None

    def aborted(self) -> list[Run]:
        return [r for r in self.runs.values() if r.outcome is not None and r.outcome.startswith("aborted")]

    def in_progress(self) -> list[Run]:
        return [r for r in self.runs.values() if r.end_line is None and r.outcome is None]

    def summary(self) -> str:
        if self.broken is not None:
            return self.broken.message()
        text = f"ok: {self.records} records, {len(self.runs)} runs, {len(self.aborted())} aborted"
        running = len(self.in_progress())
        return text + (f", {running} in progress" if running else "")

    def as_dict(self) -> dict:
        return {
            "ok": self.ok,
            "msg": self.summary(),
            "records": self.records,
            "runs": len(self.runs),
            "aborted_runs": [r.as_dict() for r in self.aborted()],
            "in_progress_runs": [r.as_dict() for r in self.in_progress()],
            "broken": None if self.broken is None else vars(self.broken).copy(),
            "head_sha256": self.head_sha256,
        }


def _check_record(raw: bytes) -> tuple[dict | None, str | None, str | None]:  # noqa: PLR0911 - one per reason
    """Parse and self-check one line: (record, reason, detail); reason is None when it is sound."""
    try:
        record = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None, "not JSON", "the line is not a JSON object (torn or edited by hand)"
    if not isinstance(record, dict):
        return None, "not JSON", "the line is not a JSON object"
    missing = [name for name in REQUIRED_FIELDS if name not in record]
    if missing:
        return record, "edited", f"the field(s) {', '.join(missing)} are missing"
    if record["kind"] not in KINDS or not isinstance(record["seq"], int) or isinstance(record["seq"], bool):
        return record, "edited", "kind or seq has a value the callback never writes"
    if record_sha256(record) != record["sha256"]:
        return record, "edited", "its sha256 does not match its content"
    try:
        is_canonical = canonical(record) == raw
    except ValueError:
        is_canonical = False
    if not is_canonical:
        return record, "edited", "its bytes are not the canonical JSON the callback writes"
    return record, None, None


def _link_failure(index: int, record: dict, lines: list[bytes], hashes: list[str], prev_seq: int) -> Broken:
    """Classify a record whose prev_sha256 does not match the line before it."""
    number = index + 1
    run_id = record.get("run_id")
    seq = record["seq"]
    later = [i for i in range(index + 1, len(lines)) if hashes[i] == record["prev_sha256"]]
    if later:
        return Broken(number, run_id, "reordered", f"it follows line {later[0] + 1}, which now comes after it")
    if record["prev_sha256"] == ZERO_SHA256 and index > 0:
        return Broken(number, run_id, "reordered", "the first record of the chain is not on the first line")
    if seq > prev_seq + 1:
        missing = seq - prev_seq - 1
        where = "before it" if index else "at the start of the file"
        return Broken(number, run_id, "deleted", f"{missing} record(s) {where} are missing (seq {prev_seq} -> {seq})")
    if seq <= prev_seq:
        return Broken(number, run_id, "reordered", f"its seq {seq} comes after seq {prev_seq}")
    # The seq follows on but the link does not: the line before was changed and sealed again.
    prev_record = json.loads(lines[index - 1]) if index else {}
    return Broken(
        number - 1,
        prev_record.get("run_id"),
        "edited",
        f"it was changed and re-sealed: line {number} no longer chains to it",
    )


def verify_lines(lines: list[bytes], current_run_id: str | None = None) -> Report:
    """Verify a chain given as lines (without newlines); stops at the first broken record."""
    report = Report()
    hashes = [sha256_hex(line) for line in lines]
    prev_seq = 0
    for index, raw in enumerate(lines):
        record, reason, detail = _check_record(raw)
        run_id = record.get("run_id") if isinstance(record, dict) else None
        if reason is not None:
            report.broken = Broken(index + 1, run_id if isinstance(run_id, str) else None, reason, detail or "")
            break
        expected = ZERO_SHA256 if index == 0 else hashes[index - 1]
        if record["prev_sha256"] != expected:
            report.broken = _link_failure(index, record, lines, hashes, prev_seq)
            break
        if record["seq"] != prev_seq + 1:
            detail = f"its seq {record['seq']} does not follow seq {prev_seq} (changed and re-sealed)"
            report.broken = Broken(index + 1, run_id, "edited", detail)
            break
        prev_seq = record["seq"]
        report.records += 1
        report.head_sha256 = hashes[index]
        run = report.runs.setdefault(run_id, Run(run_id))
        if record["kind"] == "start":
            run.start_line = index + 1
            run.playbook = record.get("playbook")
            run.started_at = record.get("started_at")
            run.controller = record.get("controller") or {}
        else:
            run.end_line = index + 1
            run.outcome = record.get("outcome") or "unknown"
            run.playbook = run.playbook or record.get("playbook")
            run.started_at = run.started_at or record.get("started_at")
    for run in report.runs.values():
        if run.end_line is None and run.run_id != current_run_id and not controller_alive(run.controller):
            run.outcome = ABORTED_NO_END
    return report


def read_lines(path: str) -> list[bytes]:
    """The lines of the audit file (without newlines); a final line without newline is kept (torn)."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        raise AuditError(f"{path} does not exist: no audited run has written to it yet, or the path is wrong") from None
    except OSError as exc:
        raise AuditError(f"cannot read {path}: {exc.strerror}") from None
    if not data:
        return []
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    return lines


def verify_file(path: str, current_run_id: str | None = None) -> Report:
    return verify_lines(read_lines(path), current_run_id)


def run_audit_verify(params: dict, check_mode: bool = False, diff: bool = False) -> dict:
    """The audit_verify plugin: verify_file() as a task result (see the module's documentation)."""
    path = params["path"]
    current = params["current_run_id"] or None
    try:
        report = verify_file(path, current_run_id=current)
    except AuditError as exc:
        return {"changed": False, "failed": True, "msg": f"Cannot verify the audit log: {exc}"}
    result = {"changed": False, **report.as_dict()}
    if not report.ok:
        return {**result, "failed": True, "msg": f"Audit chain of {path} is {result['msg']}"}
    if current and current not in report.runs:
        message = f"Audit log {path} has no start record of this run {current}: is the callback enabled?"
        return {**result, "failed": True, "msg": message}
    return result
