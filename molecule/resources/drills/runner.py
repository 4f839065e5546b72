"""Running the real playbooks as an operator does, and reading what they left: audit records, sinks, load."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from drills.context import ROOT, VENV_BIN, parse_utc
from rehearsal.load import Sample, summarize

ANSIBLE_PLAYBOOK = str(VENV_BIN / "ansible-playbook")
_RECAP = re.compile(
    r"^(?P<host>\S+)\s*:\s*ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+unreachable=\d+\s+failed=(?P<failed>\d+)"
)


@dataclass
class PlaybookRun:
    """One `ansible-playbook` process: started in its own process group, its output streamed and logged."""

    label: str
    playbook: str
    args: list[str]
    env: dict[str, str]
    log: Path
    echo_prefix: str = ""
    process: subprocess.Popen | None = None
    started: float = 0.0
    ended: float = 0.0
    rc: int | None = None
    lines: list[str] = field(default_factory=list)
    _reader: threading.Thread | None = None

    def start(self) -> PlaybookRun:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        argv = [ANSIBLE_PLAYBOOK, self.playbook, *self.args]
        self.started = time.time()
        self.process = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            start_new_session=True,  # its own process group: SIGKILL reaches the modules it started too
        )
        self._reader = threading.Thread(target=self._read, name=f"output-{self.label}", daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        with self.log.open("w") as log:
            for line in self.process.stdout:
                self.lines.append(line.rstrip("\n"))
                log.write(line)
                log.flush()
                sys.stdout.write(self.echo_prefix + line)
                sys.stdout.flush()

    @property
    def pid(self) -> int:
        return self.process.pid

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait(self, timeout: float | None = None) -> int:
        self.rc = self.process.wait(timeout)
        self.ended = time.time()
        self._reader.join(10)
        return self.rc

    def kill_group(self) -> None:
        """SIGKILL the controller's process group (what is left of a run the drill gives up on)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)

    def kill_tree(self) -> list[dict]:
        """SIGKILL the controller and every process it started, at once, as when its machine or container dies.

        ansible-playbook's workers call setsid() (ansible-core 2.17+), so its process group does not
        hold the modules: the whole tree is frozen (SIGSTOP) first, so that nothing forks while it is
        collected, then killed. Returns what was killed (pid, name).
        """
        root = psutil.Process(self.process.pid)
        tree: dict[int, psutil.Process] = {}
        for _ in range(3):  # collect again after freezing: a child may have been forked meanwhile
            for proc in [root, *root.children(recursive=True)]:
                if proc.pid not in tree:
                    with contextlib.suppress(psutil.Error):
                        proc.suspend()
                        tree[proc.pid] = proc
        killed = []
        for proc in tree.values():
            with contextlib.suppress(psutil.Error):
                killed.append({"pid": proc.pid, "name": " ".join(proc.cmdline()[:3])[:400]})
                proc.kill()
        self.killed = list(tree.values())
        return killed

    def tree_alive(self) -> list[int]:
        """Processes of the killed tree still running (zombies awaiting their parent do not count)."""
        alive = []
        for proc in getattr(self, "killed", []):
            with contextlib.suppress(psutil.Error):
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    alive.append(proc.pid)
        return alive

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def recap(self) -> dict[str, dict[str, int]]:
        """PLAY RECAP counts per host (empty when the run never reached its recap)."""
        found = {}
        for line in self.lines:
            match = _RECAP.match(line)
            if match:
                found[match["host"]] = {k: int(match[k]) for k in ("ok", "changed", "failed")}
        return found


def run_playbook(label: str, playbook: str, args: list[str], env: dict[str, str], log: Path) -> PlaybookRun:
    run = PlaybookRun(label, playbook, args, env, log).start()
    run.wait()
    return run


# -- the audit trail -----------------------------------------------------------------------------
def audit_records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def audit_of(path: Path, pid: int) -> dict:
    """The start and end records of the run whose controller was process `pid` (end None: no end record)."""
    records = audit_records(path)
    starts = [r for r in records if r.get("kind") == "start" and r.get("controller", {}).get("pid") == pid]
    if not starts:
        return {"run_id": None, "start": None, "end": None}
    start = starts[-1]
    ends = [r for r in records if r.get("kind") == "end" and r.get("run_id") == start["run_id"]]
    return {"run_id": start["run_id"], "start": start, "end": ends[-1] if ends else None}


def step_window(end_record: dict | None, name: str) -> tuple[float, float] | None:
    """Epoch seconds (start, end) of a step of the audit's end record."""
    for step in (end_record or {}).get("steps", []):
        if step.get("name") == name:
            return parse_utc(step["started_at"]), parse_utc(step["ended_at"])
    return None


# -- the sinks -------------------------------------------------------------------------------------
def sink_messages(the_stack, since: dict[str, int]) -> dict[str, list[dict]]:
    """Mails, webhook posts and PagerDuty events received after the counts in `since` (without the raw MIME)."""
    mails = [{k: v for k, v in m.items() if k != "raw"} for m in the_stack.mails()[since["mails"] :]]
    posts = the_stack.webhook_posts()[since["webhooks"] :]
    pages = the_stack.pagerduty_events()[since.get("pagerduty", 0) :]
    return {"mails": mails, "webhooks": posts, "pagerduty": pages}


def sink_counts(the_stack) -> dict[str, int]:
    return {
        "mails": len(the_stack.mails()),
        "webhooks": len(the_stack.webhook_posts()),
        "pagerduty": len(the_stack.pagerduty_events()),
    }


# -- the load ----------------------------------------------------------------------------------
def window_summary(samples: list[Sample], start: float, end: float, rate: float) -> dict:
    """The load generator's summary over the requests sent between `start` and `end` (epoch seconds)."""
    inside = [s for s in samples if start <= s.t <= end]
    summary = summarize(inside, start, end, rate)
    summary["window"] = [round(start, 3), round(end, 3)]
    return summary


def slowest(samples: list[Sample], start: float, end: float) -> dict | None:
    inside = [s for s in samples if start <= s.t <= end]
    if not inside:
        return None
    worst = max(inside, key=lambda s: s.latency_ms)
    return {"t": worst.t, "latency_ms": worst.latency_ms, "status": worst.status, "instance": worst.instance}
