# Copyright: contributors to the emergency-rollback runbook
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The audit file: an append-only JSONL file, one sealed record per line (format: audit_chain).

- Opened with O_NOFOLLOW (a symbolic link in its place is refused, never followed), and refused
  unless it is a regular file owned by this user that nobody else can write (group and others
  have no write bit; its directory is not writable by others). A new file is created 0600, or
  0640 owned by the audit group, in a directory created 0700 (0750).
- `FileSink.append` takes an exclusive `flock`, reads the last line, lets the caller build the
  sealed line from it (the PostgreSQL copy is written then, under the same lock, so that both
  copies hold one run's records in the same order), appends it with O_APPEND, and fsyncs.
  Concurrent runs on one controller share a file safely.
- `read_lines` reads a file for verification, with the same refusal of links and of files
  others can write.

Plain Python, used by the `rollback_audit` callback (through audit_sinks) and `audit_verify`.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import time
from collections.abc import Callable

from ansible.module_utils.audit_chain import AuditError, AuditKey, AuditWriteError, seal, seq_of

LOCK_TIMEOUT = 10.0
MIN_FREE_BYTES = 64 * 1024
LineBuilder = Callable[[bytes | None, int], bytes]


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


def writable_by_others(mode: int) -> bool:
    return bool(mode & (stat.S_IWGRP | stat.S_IWOTH))


def check_opened(fd: int, path: str, owner_required: bool = True) -> None:
    """Refuse what is not a regular file of ours that only we can write (AuditWriteError, one sentence)."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise AuditWriteError(f"{path} is not a regular file: move it away and run again")
    if owner_required and st.st_uid != os.geteuid():
        raise AuditWriteError(
            f"{path} belongs to uid {st.st_uid}, not to this user (uid {os.geteuid()}): "
            "the audit file must be written by the user it belongs to"
        )
    mode = stat.S_IMODE(st.st_mode)
    if writable_by_others(mode):
        raise AuditWriteError(
            f"{path} can be written by others (mode {mode:04o}): check its records with "
            f"playbooks/audit_verify.yml, then chmod 600 {path} (640 with an audit group)"
        )
    directory = os.path.dirname(os.path.abspath(path))
    dir_mode = os.stat(directory).st_mode
    if dir_mode & stat.S_IWOTH and not dir_mode & stat.S_ISVTX:
        raise AuditWriteError(
            f"the directory {directory} of the audit file is writable by others, who could replace the file: "
            "use a directory only you can write"
        )


def _open_error(path: str, exc: OSError, verb: str) -> AuditWriteError:
    if exc.errno == errno.ELOOP:
        return AuditWriteError(f"{path} is a symbolic link: the audit file must be a regular file, not a link")
    return AuditWriteError(f"cannot {verb} {path}: {exc.strerror}")


def open_for_append(path: str, group: str | None = None) -> int:
    """Open (creating it 0600, or 0640 for `group`, with a private parent dir) the audit file for appending."""
    gid = resolve_group(group)
    flags = os.O_RDWR | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW
    try:
        _mkdir_private(os.path.dirname(os.path.abspath(path)), gid)
        fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        try:
            fd = os.open(path, flags)
        except OSError as exc:
            raise _open_error(path, exc, "open") from None
    except OSError as exc:
        raise _open_error(path, exc, "create") from None
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
    try:
        check_opened(fd, path)
    except BaseException:
        os.close(fd)
        raise
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


def last_line(fd: int) -> tuple[bytes | None, bool]:
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


class FileSink:
    """The audit file of one run: appends, and checks that it is still the file the run started with."""

    def __init__(self, path: str, group: str | None = None, lock_timeout: float = LOCK_TIMEOUT):
        self.path = path
        self.group = group
        self.lock_timeout = lock_timeout
        self.identity: tuple[int, int] | None = None

    def append(self, build: LineBuilder) -> bytes:
        """Append the line `build(last_line, last_seq)` returns, flushed and fsynced; returns it.

        A torn last line (no trailing newline) is left as it is, as evidence: the new record starts
        on a line of its own and chains to the torn bytes, and verify reports the torn line.
        """
        fd = open_for_append(self.path, self.group)
        try:
            _lock(fd, self.path, self.lock_timeout)
            prev, ends_with_newline = last_line(fd)
            line = build(prev, seq_of(prev))
            data = (b"" if ends_with_newline else b"\n") + line + b"\n"
            try:
                written = os.write(fd, data)
                if written != len(data):
                    raise AuditWriteError(f"cannot append to {self.path}: short write ({written} of {len(data)} bytes)")
                os.fsync(fd)
            except OSError as exc:
                raise AuditWriteError(f"cannot append to {self.path}: {exc.strerror}") from None
            st = os.fstat(fd)
            self.identity = (st.st_dev, st.st_ino)
            return line
        finally:
            os.close(fd)  # closing releases the lock

    def probe(self) -> None:
        """Raise AuditWriteError unless the file is still the one this run wrote and can take another record."""
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW)
        except FileNotFoundError:
            raise AuditWriteError(f"{self.path} is gone") from None
        except OSError as exc:
            if exc.errno == errno.EISDIR:
                raise AuditWriteError(f"{self.path} is no longer a regular file") from None
            raise _open_error(self.path, exc, "open") from None
        try:
            check_opened(fd, self.path)
            st = os.fstat(fd)
            if self.identity is not None and (st.st_dev, st.st_ino) != self.identity:
                raise AuditWriteError(f"{self.path} was replaced by another file during the run")
            vfs = os.fstatvfs(fd)
        finally:
            os.close(fd)
        if vfs.f_bavail * vfs.f_frsize < MIN_FREE_BYTES:
            raise AuditWriteError(f"the file system of {self.path} is full")


def append_record(path: str, record: dict, key: AuditKey | None = None, group: str | None = None) -> dict:
    """Seal `record` after the file's last line and append it (one call: what bench/floor.py measures)."""
    sealed: dict = {}

    def build(prev: bytes | None, prev_seq: int) -> bytes:
        done, line = seal(record, prev, prev_seq, key)
        sealed.update(done)
        return line

    FileSink(path, group).append(build)
    return sealed


def read_lines(path: str) -> list[bytes]:
    """The lines of an audit file (without newlines) for verification; a final line without newline is kept."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise AuditError(f"{path} does not exist: no audited run has written to it yet, or the path is wrong") from None
    except OSError as exc:
        raise AuditError(str(_open_error(path, exc, "read"))) from None
    try:
        check_opened(fd, path, owner_required=False)
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
    except AuditWriteError as exc:
        raise AuditError(str(exc)) from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if not data:
        return []
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    return lines
