"""Lock waits as PostgreSQL itself measures them, read from the server's log.

With `log_lock_waits = on`, a backend whose lock wait lasts longer than `deadlock_timeout` logs
"process <pid> still waiting for <mode> on <object> after <ms> ms" (once, when its deadlock check
runs) and, when it finally gets the lock, "process <pid> acquired <mode> on <object> after <ms> ms":
the time since its wait began, by the server's clock (PostgreSQL 16, src/backend/storage/lmgr/proc.c,
ProcSleep; https://www.postgresql.org/docs/16/runtime-config-logging.html#GUC-LOG-LOCK-WAITS). A wait
that ends any other way (the statement cancelled by statement_timeout or lock_timeout) logs no
"acquired" line: it stays open here (`acquired_ms` None).

The rehearsal stack and the test clusters share the log line prefix of rehearsal.postgres; `enable()`
adds the application_name (`app=%a`) so that a wait can be told apart by who waited.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

# What the log must say for a wait to be measured; deadlock_timeout is also the shortest wait logged.
SETTINGS = {
    "log_lock_waits": "on",
    "deadlock_timeout": "20ms",
    "log_line_prefix": "%m [%p] %u@%d app=%a ",
}
# A live query queued behind a lock request that lock_timeout cancels is woken when the cancelled
# backend leaves the wait queue: its wait, as PostgreSQL measured it, ends this little after
# lock_timeout (the cancelled backend's interrupt handling and the waiter's wake-up; no client,
# network or controller time is in it).
LOCK_WAIT_MARGIN = 0.25

_LINE = re.compile(
    r"\[(?P<pid>\d+)\] \S*@\S* (?:app=(?P<app>.*?) )?LOG:  process (?P<process>\d+) "
    r"(?P<what>still waiting for|acquired) (?P<mode>\w+) on (?P<object>.+?) after (?P<ms>\d+\.\d+) ms"
    r"|\[(?P<detail_pid>\d+)\] \S*@\S* (?:app=.*? )?DETAIL:  Process(?:es)? holding the lock: (?P<holders>[\d, ]*)\. "
    r"Wait queue: (?P<queue>[\d, ]*)\."
)


@dataclass
class LockWait:
    """One lock wait of one backend longer than deadlock_timeout."""

    pid: int
    application_name: str | None
    mode: str
    object: str
    still_waiting_ms: float | None = None
    acquired_ms: float | None = None
    # When it logged "still waiting" (its DETAIL): who held the lock, and the queue in order (itself included).
    holders: list[int] = field(default_factory=list)
    wait_queue: list[int] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def enable(cluster) -> None:
    """Log every lock wait of the server longer than deadlock_timeout, naming the application (the whole
    server, running sessions included: ALTER SYSTEM, then a configuration reload)."""
    for name, value in SETTINGS.items():
        cluster.execute(f"ALTER SYSTEM SET {name} = '{value}'")
    cluster.execute("SELECT pg_reload_conf()")


def parse(text: str) -> list[LockWait]:
    """The lock waits in a piece of PostgreSQL's log, in the order they began."""
    waits: list[LockWait] = []
    open_waits: dict[int, LockWait] = {}
    for match in _LINE.finditer(text):
        if match["detail_pid"]:
            if wait := open_waits.get(int(match["detail_pid"])):
                wait.holders, wait.wait_queue = _pids(match["holders"]), _pids(match["queue"])
            continue
        pid = int(match["process"])
        key = (match["mode"], match["object"])
        wait = open_waits.get(pid)
        if wait is None or (wait.mode, wait.object) != key or match["what"] == "still waiting for":
            wait = LockWait(pid, match["app"], *key)
            waits.append(wait)
        if match["what"] == "still waiting for":
            wait.still_waiting_ms = float(match["ms"])
            open_waits[pid] = wait
        else:
            wait.acquired_ms = float(match["ms"])
            open_waits.pop(pid, None)
    return waits


def _pids(text: str) -> list[int]:
    return [int(pid) for pid in text.split(",") if pid.strip()]


class LockWaitLog:
    """The lock waits PostgreSQL logs from now on (`cluster.logfile`, read from its size at creation)."""

    def __init__(self, cluster):
        self.logfile = Path(cluster.logfile)
        self.offset = self.logfile.stat().st_size if self.logfile.exists() else 0

    def read(self) -> list[LockWait]:
        with open(self.logfile, errors="replace") as log:
            log.seek(self.offset)
            return parse(log.read())

    def waits(self, pid: int) -> list[float]:
        """Seconds each lock wait of backend `pid` lasted until it got its lock, as PostgreSQL measured it."""
        return [w.acquired_ms / 1000 for w in self.read() if w.pid == pid and w.acquired_ms is not None]
