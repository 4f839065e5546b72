"""What every measurement shares: the machine, statistics, timed child processes, the playbook run.

A child process is timed from launch to exit (wall clock, `time.perf_counter`) and its CPU time is
the user + system time of it and every descendant it waited for (`os.wait4`), so Ansible's worker
processes and the modules' interpreters count. On this shared, noisy 2-core machine the CPU time is
the steadier of the two figures; the wall time is what the operator waits.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import psutil

from bench import ROOT, project

BIN = Path(sys.executable).parent
ANSIBLE_PLAYBOOK = BIN / "ansible-playbook"
# What the measured rollback is made of: a run on uncommitted changes to these says so in the report.
TREE_WATCHED = ("rollback.yml", "playbooks", "roles", "plugins", "inventories", "ansible.cfg", "migrations")
SNAPSHOT_MARK = ".bench-snapshot"  # in a copy made by `python -m bench --snapshot`: which commit it is


# -- the machine -----------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict:
    import ansible.release  # noqa: PLC0415

    where = project()
    commit = subprocess.run(
        ["git", "-C", str(where), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    changed = subprocess.run(
        ["git", "-C", str(where), "status", "--porcelain", "--", *TREE_WATCHED],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split("\n")
    mark = where / SNAPSHOT_MARK
    if mark.exists():  # a copy of a commit: nothing uncommitted in it
        commit, changed = mark.read_text().split()[-1], []
    if where == ROOT:
        measured = "this repository (its working tree)"
    elif mark.exists():
        measured = f"{where.relative_to(ROOT) if where.is_relative_to(ROOT) else where}: {mark.read_text().strip()}"
    else:
        measured = str(where)
    return {
        "project": measured,
        "uncommitted_changes": sorted(line[3:] for line in changed if line.strip()) if commit else [],
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model(),
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "ansible_core": ansible.release.__version__,
        "commit": commit or "not a git checkout",
        "started_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


# -- statistics ------------------------------------------------------------------------------------
def summary(values: list[float]) -> dict:
    """median, min, max and n of a list of numbers (None entries dropped)."""
    values = [v for v in values if v is not None]
    if not values:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {
        "median": round(statistics.median(values), 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
        "n": len(values),
    }


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


def linear_fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares slope and intercept."""
    if len(set(xs)) < 2:
        return 0.0, (ys[0] if ys else 0.0)
    slope, intercept = statistics.linear_regression(xs, ys)
    return slope, intercept


# -- child processes -------------------------------------------------------------------------------
@dataclass
class Timed:
    argv: list[str]
    rc: int
    wall: float  # seconds from launch to exit
    cpu: float  # user + system seconds of the process tree
    launched_at: float  # epoch seconds
    ended_at: float
    log: Path | None = None
    hung: bool = False  # killed after its timeout


def run_timed(
    argv: list[str], env: dict[str, str], log: Path | None = None, cwd: Path | None = None, timeout: float | None = None
) -> Timed:
    """Run argv to its end (or, after `timeout` s, kill it and every process it started: rc -9, hung)."""
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
    out = log.open("wb") if log is not None else subprocess.DEVNULL
    hung = False
    try:
        launched_at, began = time.time(), time.perf_counter()
        proc = subprocess.Popen(argv, env=env, cwd=cwd or project(), stdout=out, stderr=subprocess.STDOUT)
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG if timeout else 0)
            if pid:
                break
            if time.perf_counter() - began > timeout:
                hung = True
                _kill_tree(proc.pid)
                _, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.05)
        wall = time.perf_counter() - began
        proc.returncode = os.waitstatus_to_exitcode(status)
    finally:
        if log is not None:
            out.close()
    timed = Timed(argv, proc.returncode, wall, usage.ru_utime + usage.ru_stime, launched_at, time.time(), log)
    timed.hung = hung
    return timed


def _kill_tree(pid: int) -> None:
    """SIGKILL a process we started and all its descendants (Ansible's workers start their own sessions)."""
    try:
        parent = psutil.Process(pid)
        descendants = parent.children(recursive=True)
    except psutil.NoSuchProcess:
        return
    for member in [parent, *descendants]:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.kill()
    psutil.wait_procs(descendants, timeout=10)  # the parent is reaped by the caller's wait4


def base_env(stack_env: dict[str, str], **extra: str) -> dict[str, str]:
    """The environment of a playbook or floor run: ours, the stack's contract, the repo's ansible.cfg."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "ROLLBACK_", "FF_", "TE_"))}
    env.update(stack_env)
    env.update(
        ANSIBLE_CONFIG=str(project() / "ansible.cfg"),
        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        PYTHONPATH=str(ROOT),
        **({"BENCH_PROJECT": str(project())} if project() != ROOT else {}),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_FORCE_COLOR="0",
    )
    env.setdefault("USER", os.environ.get("USER", "bench"))
    env.update(extra)
    return env


# -- the playbook ----------------------------------------------------------------------------------
def tenants_inventory(path: Path, names: list[str]) -> Path:
    """An extra inventory adding one host per tenant database to the group `local`."""
    hosts = {name: {"rollback_db_name": name} for name in names}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"all": {"children": {"local": {"hosts": hosts}}}}, indent=1) + "\n")
    return path


# A rollback here takes 3-40 s (100 databases), 1-2.5 min (500 databases on a loaded machine); one that
# runs for minutes beyond that is stuck (the report counts such runs): 150 s plus 0.5 s per database.
PLAYBOOK_TIMEOUT = 150.0
TIMEOUT_PER_DATABASE = 0.5


def run_timeout(databases: int) -> float:
    """Seconds a rollback of `databases` databases may take before it counts as hung and is killed."""
    return PLAYBOOK_TIMEOUT + TIMEOUT_PER_DATABASE * max(0, databases - 1)


class PlaybookHung(RuntimeError):
    """The playbook did not end within its timeout; it and every process it started were killed."""


@dataclass
class PlaybookResult:
    timed: Timed
    end_record: dict = field(repr=False)

    @property
    def steps(self) -> dict[str, dict]:
        return {s["name"]: s for s in self.end_record.get("steps", [])}

    def step_seconds(self, name: str) -> float | None:
        step = self.steps.get(name)
        return step["duration_seconds"] if step else None

    @property
    def propagation_seconds(self) -> float | None:
        value = self.end_record.get("propagation_seconds")
        return float(value) if value not in (None, "") else None


def last_end_record(audit_file: Path) -> dict:
    records = [json.loads(line) for line in audit_file.read_text().splitlines() if line.strip()]
    ends = [r for r in records if r.get("kind") == "end"]
    if not ends:
        raise RuntimeError(f"no end record in {audit_file}")
    return ends[-1]


def shown(path: Path) -> str:
    """A path as the committed report may show it: relative to the repository, never this machine's."""
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name


def run_playbook(
    playbook: str,
    env: dict[str, str],
    log: Path,
    audit_file: Path,
    *,
    extra_inventory: Path | None = None,
    reason: str = "bench",
    extra_args: tuple[str, ...] = (),
    timeout: float = PLAYBOOK_TIMEOUT,
) -> PlaybookResult:
    """`ansible-playbook <playbook> -e env=local -e reason=...` from launch to exit; fails loudly on rc != 0."""
    # One JSON -e: `-e reason=a b` would be split on the space (and the guard refuses the stray `_raw_params`).
    argv = [str(ANSIBLE_PLAYBOOK), playbook, "-e", json.dumps({"env": "local", "reason": reason})]
    if extra_inventory is not None:
        argv += ["-i", str(project() / "inventories"), "-i", str(extra_inventory)]
    argv += list(extra_args)
    timed = run_timed(argv, {**env, "ROLLBACK_AUDIT_FILE": str(audit_file)}, log, timeout=timeout)
    if timed.hung:
        raise PlaybookHung(f"{playbook} did not end within {timeout:g} s and was killed; see {shown(log)}")
    if timed.rc != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
        raise RuntimeError(f"{playbook} failed (rc {timed.rc}); see {shown(log)}:\n{tail}")
    return PlaybookResult(timed, last_end_record(audit_file))


def run_floor(env: dict[str, str], databases: list[str], log: Path, json_out: Path, **options) -> tuple[Timed, dict]:
    """`python -m bench.floor` from launch to exit, and its own result."""
    json_out.parent.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "bench.floor", "--json-out", str(json_out)]
    for name in databases:
        argv += ["--db", name]
    for key, value in options.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    timed = run_timed(argv, env, log, timeout=run_timeout(len(databases)))
    if timed.rc != 0:
        raise RuntimeError(f"the floor failed (rc {timed.rc}): {log.read_text(errors='replace')[-2000:]}")
    return timed, json.loads(json_out.read_text())


def parse_iso(value: str) -> float:
    """Epoch seconds of an ISO 8601 UTC timestamp as the audit writes it (…Z)."""
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
