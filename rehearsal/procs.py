"""Detached service processes of the rehearsal stack: start, record, find again, stop.

Each service runs in its own session (process group), with stdout and stderr in `<name>.log`. Its
pid and start time go to `<name>.pid` (JSON) in the run folder, so that `down`, from another
process and much later, stops exactly that process group and never a recycled pid.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psutil


@dataclass
class Service:
    """One detached process of the stack, known by its name and its run folder."""

    name: str
    run_dir: Path

    @property
    def pidfile(self) -> Path:
        return self.run_dir / "pids" / f"{self.name}.pid"

    @property
    def logfile(self) -> Path:
        return self.run_dir / "logs" / f"{self.name}.log"

    def start(self, argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> int:
        """Start `argv` detached (own session, no stdin, output to the log); record and return its pid."""
        self.pidfile.parent.mkdir(parents=True, exist_ok=True)
        self.logfile.parent.mkdir(parents=True, exist_ok=True)
        with self.logfile.open("ab") as log:
            log.write(f"\n=== {time.strftime('%Y-%m-%dT%H:%M:%S')} starting {self.name}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=env,
                cwd=cwd,
                close_fds=True,
            )
        record = {"pid": proc.pid, "create_time": psutil.Process(proc.pid).create_time(), "argv": argv[:3]}
        self.pidfile.write_text(json.dumps(record) + "\n")
        return proc.pid

    def process(self) -> psutil.Process | None:
        """The recorded process if it still runs (same pid AND same start time), else None."""
        try:
            record = json.loads(self.pidfile.read_text())
            proc = psutil.Process(record["pid"])
            if abs(proc.create_time() - record["create_time"]) > 0.01:
                return None  # the pid was recycled: not ours
            if proc.status() == psutil.STATUS_ZOMBIE:
                return None
            return proc
        except (OSError, ValueError, KeyError, psutil.Error):
            return None

    def is_running(self) -> bool:
        return self.process() is not None

    def pid(self) -> int | None:
        proc = self.process()
        return proc.pid if proc else None

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM the process group, wait, SIGKILL what is left; forget the pid."""
        proc = self.process()
        if proc is not None:
            members = _group_members(proc)
            _signal_group(proc.pid, members, signal.SIGTERM)
            alive = _wait_gone(members, timeout)
            if alive:
                _signal_group(proc.pid, alive, signal.SIGKILL)
                _wait_gone(alive, 5)
            _reap(proc.pid)
        self.pidfile.unlink(missing_ok=True)

    def log_tail(self, lines: int = 25) -> str:
        if not self.logfile.exists():
            return "(no log)"
        with self.logfile.open("rb") as log:
            log.seek(0, os.SEEK_END)
            log.seek(max(0, log.tell() - 64 * 1024))
            text = log.read().decode(errors="replace")
        return "\n".join(text.splitlines()[-lines:])


def _group_members(leader: psutil.Process) -> list[psutil.Process]:
    """The leader, its descendants, and anything else still in its process group."""
    members = {leader.pid: leader}
    with contextlib.suppress(psutil.Error):
        for child in leader.children(recursive=True):
            members[child.pid] = child
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if proc.pid not in members and os.getpgid(proc.pid) == leader.pid:
                members[proc.pid] = proc
    return list(members.values())


def _is_gone(proc: psutil.Process) -> bool:
    # A zombie has exited: only its parent (here often PID 1, which reaps lazily) has to collect it.
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


def _wait_gone(members: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait until every member has exited; those still alive after `timeout`."""
    deadline = time.monotonic() + timeout
    alive = list(members)
    while alive:
        for proc in alive:
            _reap(proc.pid)
        alive = [proc for proc in alive if not _is_gone(proc)]
        if not alive or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    return alive


def _signal_group(pgid: int, members: list[psutil.Process], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
    for proc in members:  # descendants that left the group (setsid) get the signal too
        with contextlib.suppress(psutil.Error):
            proc.send_signal(sig)


def _reap(pid: int) -> None:
    """Collect the exit status if the process is our own child (when `up` and `down` share a process)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


SERVICE_NAMES = {"postgres", "node", "prometheus", "python", "python3", "python3.11"}
SERVICE_MODULES = ("rehearsal.app", "rehearsal.sinks", "rehearsal.pgtls")


def stack_processes(run_dir: str) -> list[psutil.Process]:
    """Live processes that are services of the stack in `run_dir`, recorded or not (for leak checks).

    A service: a postgres/node/prometheus/python process working inside the run folder (postgres
    backends, Unleash), or a postgres/prometheus/`python -m rehearsal.app|sinks` process whose
    command line names the run folder. A shell, editor or `tail -f` that merely mentions the
    folder is not one, and is never touched.
    """
    found = []
    me = os.getpid()
    for proc in psutil.process_iter(["pid", "name", "cmdline", "cwd", "status"]):
        info = proc.info
        if info["pid"] == me or info["status"] == psutil.STATUS_ZOMBIE or info["name"] not in SERVICE_NAMES:
            continue
        argv = info["cmdline"] or []
        cwd = info["cwd"] or ""
        inside = cwd == run_dir or cwd.startswith(run_dir + os.sep)
        named = any(arg == run_dir or run_dir + os.sep in arg for arg in argv)
        is_python_service = any(module in argv for module in SERVICE_MODULES)
        if inside or (named and (info["name"] in ("postgres", "prometheus") or is_python_service)):
            found.append(proc)
    return found
