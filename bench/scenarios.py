"""The measurements P1-P4 and the profile, each returning a JSON-ready dict (see bench/report.py).

Every measured rollback rolls back a real deployment (bench/deploy.py puts one back before it;
that time is never counted). The playbook and the floor alternate run by run (ABAB...), so that
the machine's noise hits both alike.
"""

from __future__ import annotations

import contextlib
import json
import random
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg2
import requests
import yaml

from bench import ROOT, project
from bench.common import (
    PlaybookHung,
    PlaybookResult,
    Timed,
    base_env,
    linear_fit,
    parse_iso,
    ratio,
    run_floor,
    run_playbook,
    run_timed,
    run_timeout,
    summary,
    tenants_inventory,
)
from bench.deploy import redeploy
from rehearsal.load import percentile
from rehearsal.stack import Stack

APP_DB = "transformation"
STEPS = ("preflight", "flag", "propagation", "schema", "verify", "notify")


@dataclass
class Context:
    stack: Stack
    out: Path  # raw data (logs, audit files, series): bench/out/
    log: callable = print
    counter: int = 0
    env: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.env = base_env(self.stack.env())

    def next_id(self, tag: str) -> str:
        self.counter += 1
        return f"{self.counter:03d}-{tag}"

    def tenants(self, count: int) -> list[str]:
        """`count` databases: the application's, then tenant_001.. (count - 1 of them)."""
        available = self.stack.state.get("tenants", [])
        if count - 1 > len(available):
            raise RuntimeError(f"{count} databases need {count - 1} tenants; the stack has {len(available)}")
        return [APP_DB, *available[: count - 1]]

    def playbook(self, tag: str, databases: list[str], **kwargs) -> PlaybookResult:
        run = self.next_id(tag)
        inventory = None
        if len(databases) > 1:
            # Inside the measured project: the rollback's guard refuses an inventory from elsewhere.
            inventory = tenants_inventory(
                project() / ".run" / "bench-inventory" / f"tenants-{len(databases)}.yml", databases[1:]
            )
        kwargs.setdefault("timeout", run_timeout(len(databases)))
        return run_playbook(
            "rollback.yml",
            {**self.env, **kwargs.pop("env", {})},
            self.out / "logs" / f"{run}.log",
            self.out / "audit" / f"{run}.jsonl",
            extra_inventory=inventory,
            reason=f"bench {run}",
            **kwargs,
        )

    def floor(self, tag: str, databases: list[str]) -> tuple[Timed, dict]:
        run = self.next_id(tag)
        return run_floor(
            self.env,
            databases,
            self.out / "logs" / f"{run}.log",
            self.out / "floor" / f"{run}.json",
            reason=f"bench {run}",
            audit_file=str(self.out / "audit" / f"{run}.jsonl"),
        )


# -- live traffic while measuring --------------------------------------------------------------
BACKGROUND_RATE = 10.0  # requests/s: enough for the verification's minimum in its window, light on 2 cores


@contextlib.contextmanager
def background_traffic(ctx: Context, rate: float = BACKGROUND_RATE):
    """Steady traffic to both instances while a part runs: the verification judges the 5xx ratio
    over real requests (with none it is inconclusive, and the rollback rightly fails)."""
    argv = [sys.executable, "-m", "rehearsal", "--run-dir", str(ctx.stack.run_dir), "load", "--rate", str(rate)]
    log = ctx.out / "logs" / "background-traffic.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as out:
        load = subprocess.Popen(argv, cwd=ROOT, env=ctx.env, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield
    finally:
        load.send_signal(signal.SIGTERM)
        try:
            load.wait(timeout=60)
        except subprocess.TimeoutExpired:
            load.kill()
            load.wait()


# -- P1 and P2: the playbook against the floor -----------------------------------------------------
def _flag_off(result: PlaybookResult) -> float | None:
    """Launch to the flag confirmed off: the flag plugin's `confirmed_at`, as the audit's end record keeps it."""
    confirmed = (result.end_record.get("flag") or {}).get("confirmed_at")
    return parse_iso(confirmed) - result.timed.launched_at if confirmed else None


def _playbook_figures(result: PlaybookResult) -> dict:
    wait = result.propagation_seconds or 0.0
    return {
        "flag_off": _flag_off(result),
        "wall": result.timed.wall,
        "cpu": result.timed.cpu,
        "propagation_wait": wait,
        "propagation_step": result.step_seconds("propagation"),
        "excl_wait": result.timed.wall - wait,
        "excl_step": result.timed.wall - (result.step_seconds("propagation") or 0.0),
        "steps": {name: result.step_seconds(name) for name in STEPS},
        "launch_to_first_step": parse_iso(result.end_record["steps"][0]["started_at"]) - result.timed.launched_at,
        "last_step_to_exit": result.timed.ended_at - parse_iso(result.end_record["steps"][-1]["ended_at"]),
        "schema_db_seconds": [d.get("duration_seconds") for d in result.end_record.get("databases", {}).values()],
    }


def _floor_figures(timed: Timed, result: dict) -> dict:
    wait = result["propagation_seconds"]
    return {
        "flag_off": parse_iso(result["flag_confirmed_at"]) - timed.launched_at,
        "plan": result.get("plan_seconds"),
        "wall": timed.wall,
        "cpu": timed.cpu,
        "in_process": result["total_seconds"],
        "propagation_wait": wait,
        "excl_wait": timed.wall - wait,
        "steps": {name: result["steps"].get(name, {}).get("seconds") for name in STEPS},
        "launch_to_first_step": result["steps"]["preflight"]["started_at"] - timed.launched_at,
    }


def _summarise_runs(runs: list[dict], keys: tuple[str, ...]) -> dict:
    out = {key: summary([r[key] for r in runs]) for key in keys}
    out["steps"] = {name: summary([r["steps"].get(name) for r in runs]) for name in STEPS}
    return out


def compare(ctx: Context, databases: list[str], runs: int, tag: str) -> dict:
    """`runs` playbook and `runs` floor rollbacks of `databases`, alternating; their figures."""
    playbook_runs, floor_runs, hung = [], [], []
    for index in range(2 * runs):
        kind = ("playbook", "floor")[index % 2]
        redeploy(ctx.stack, databases)
        if kind == "playbook":
            try:
                figures = _playbook_figures(ctx.playbook(f"{tag}-playbook", databases))
            except PlaybookHung as exc:  # a finding, not a figure: counted, and the next run goes on
                hung.append(str(exc))
                ctx.log(f"  {tag} playbook {index // 2 + 1}/{runs}: HUNG ({exc})")
                continue
            playbook_runs.append(figures)
        else:
            figures = _floor_figures(*ctx.floor(f"{tag}-floor", databases))
            floor_runs.append(figures)
        ctx.log(
            f"  {tag} {kind} {index // 2 + 1}/{runs}: {figures['wall']:.2f} s wall, {figures['cpu']:.2f} s CPU, "
            f"propagation wait {figures['propagation_wait']:.2f} s"
        )
    playbook = _summarise_runs(
        playbook_runs,
        (
            "flag_off",
            "wall",
            "cpu",
            "propagation_wait",
            "propagation_step",
            "excl_wait",
            "excl_step",
            "launch_to_first_step",
        ),
    )
    floor = _summarise_runs(
        floor_runs, ("flag_off", "plan", "wall", "cpu", "in_process", "propagation_wait", "excl_wait")
    )
    return {
        "databases": len(databases),
        "runs": runs,
        "hung": hung,
        "playbook": playbook,
        "floor": floor,
        "ratio": {
            key: ratio(playbook[key]["median"], floor[key]["median"])
            for key in ("flag_off", "wall", "cpu", "excl_wait")
        },
        "raw": {"playbook": playbook_runs, "floor": floor_runs},
    }


def measure_p1(ctx: Context, runs: int) -> dict:
    ctx.log(f"P1: one environment, one database, {runs} playbook and {runs} floor runs (alternating)")
    return compare(ctx, [APP_DB], runs, "p1")


def measure_p2(ctx: Context, counts: list[int], runs: int) -> dict:
    ctx.log(f"P2: fan-out over {counts} databases, {runs} run(s) each of the playbook and the floor")
    points = []
    for count in counts:
        result = compare(ctx, ctx.tenants(count), runs, f"p2-{count}")
        result.pop("raw")
        points.append(result)
    fits = {}
    for kind in ("playbook", "floor"):
        xs = [p["databases"] for p in points]
        ys = [p[kind]["wall"]["median"] for p in points]
        slope, intercept = linear_fit(xs, ys)
        span = (ys[-1] - ys[0]) / (xs[-1] - xs[0]) if len(xs) > 1 and xs[-1] != xs[0] else None
        fits[kind] = {"slope": round(slope, 4), "intercept": round(intercept, 3), "endpoints_slope": span}
    return {"points": points, "fit": fits}


# -- the stress run: no hang in many many-database rollbacks ------------------------------------------
def measure_stress(ctx: Context, databases: int, runs: int) -> dict:
    """`runs` rollbacks of `databases` databases through ansible-playbook in a row, each after a redeploy.

    Not a timing: a count of the runs that did not end (the playbook's watchdog kills a run that
    outlives run_timeout() and every process it started) and of the runs that failed.
    """
    ctx.log(f"stress: {runs} rollbacks of {databases} databases in a row through ansible-playbook")
    names = ctx.tenants(databases)
    outcomes = []
    for run in range(1, runs + 1):
        redeploy(ctx.stack, names)
        try:
            result = ctx.playbook(f"stress-{databases}", names)
        except PlaybookHung as exc:
            outcomes.append({"run": run, "outcome": "hung", "error": str(exc)})
        except RuntimeError as exc:
            outcomes.append({"run": run, "outcome": "failed", "error": str(exc).splitlines()[0]})
        else:
            outcomes.append(
                {"run": run, "outcome": "ok", "wall": result.timed.wall, "schema": result.step_seconds("schema")}
            )
        ctx.log(f"  stress {run}/{runs}: {outcomes[-1]['outcome']}")
    ok = [o for o in outcomes if o["outcome"] == "ok"]
    return {
        "databases": databases,
        "runs": runs,
        "ok": len(ok),
        "hung": sum(o["outcome"] == "hung" for o in outcomes),
        "failed": sum(o["outcome"] == "failed" for o in outcomes),
        "wall": summary([o["wall"] for o in ok]),
        "schema": summary([o["schema"] for o in ok]),
        "raw": outcomes,
    }


# -- the profile ---------------------------------------------------------------------------------
_RECAP_LINE = re.compile(r"^(?P<name>.+?) -{2,} (?P<seconds>\d+(?:\.\d+)?)s$")
_TASK_KEYWORDS = {
    "name", "register", "vars", "when", "loop", "loop_control", "changed_when", "failed_when", "until", "retries",
    "delay", "no_log", "check_mode", "tags", "notify", "ignore_errors", "environment", "block", "rescue", "always",
    "listen", "become", "delegate_to", "run_once",
}  # fmt: skip


def task_actions() -> dict[str, str]:
    """Task name -> module, read from the roles' task and handler files."""
    actions: dict[str, str] = {}

    def walk(tasks) -> None:
        for task in tasks or []:
            if not isinstance(task, dict):
                continue
            for key in ("block", "rescue", "always"):
                walk(task.get(key))
            action = next((k for k in task if k not in _TASK_KEYWORDS), None)
            if action and task.get("name"):
                actions[task["name"]] = action.rsplit(".", 1)[-1]

    for path in sorted((project() / "roles").glob("*/*/*.yml")):
        if path.parent.name in ("tasks", "handlers"):
            walk(yaml.safe_load(path.read_text()))
    return actions


def parse_profile(text: str, actions: dict[str, str]) -> list[dict]:
    """profile_tasks' recap (sort order none: execution order) as [{task, action, seconds}]."""
    lines = text.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.startswith("TASKS RECAP"))
    except StopIteration:
        return []
    tasks = []
    for line in lines[start + 1 :]:
        match = _RECAP_LINE.match(line.strip())
        if not match:
            continue
        name = match["name"].strip()
        short = name.split(" : ", 1)[-1]
        if short.startswith("Validating arguments against arg spec"):
            action = "validate_argument_spec"
        else:
            action = actions.get(short, "?")
        tasks.append({"task": name, "action": action, "seconds": float(match["seconds"])})
    return tasks


def in_process_actions() -> list[str]:
    """The project's modules that have an action plugin (run in Ansible's worker, no module process)."""
    return sorted(path.stem for path in (project() / "plugins" / "action").glob("*.py"))


def measure_profile(ctx: Context, runs: int) -> dict:
    """Rollbacks with ansible.posix.profile_tasks on: per task seconds, medians over `runs`."""
    ctx.log(f"Profile: {runs} playbook run(s) with ansible.posix.profile_tasks")
    actions = task_actions()
    per_run, records = [], []
    env = {
        "ANSIBLE_CALLBACKS_ENABLED": "rollback_audit,ansible.posix.profile_tasks",
        "PROFILE_TASKS_TASK_OUTPUT_LIMIT": "all",
        "PROFILE_TASKS_SORT_ORDER": "none",
    }
    for _ in range(runs):
        redeploy(ctx.stack, [APP_DB])
        result = ctx.playbook("profile", [APP_DB], env=env)
        per_run.append(parse_profile(result.timed.log.read_text(errors="replace"), actions))
        records.append(_playbook_figures(result))
    tasks = []
    for position, task in enumerate(per_run[0]):
        seconds = [run[position]["seconds"] for run in per_run if len(run) > position]
        tasks.append({**task, "seconds": summary(seconds)["median"]})
    return {
        "runs": runs,
        "tasks": tasks,
        "in_process_actions": in_process_actions(),
        "slowest": sorted(tasks, key=lambda t: -t["seconds"])[:10],
        "total_task_seconds": round(sum(t["seconds"] for t in tasks), 2),
        "wall": summary([r["wall"] for r in records]),
        "launch_to_first_step": summary([r["launch_to_first_step"] for r in records]),
        "last_step_to_exit": summary([r["last_step_to_exit"] for r in records]),
    }


def measure_task_overhead(ctx: Context, tasks: int = 10, rounds: int = 3) -> dict:
    """Ansible's own cost per task on this machine: `tasks` no-op module tasks vs `tasks` debug tasks,
    without and with pipelining, alternating `rounds` times."""
    ctx.log(f"Overhead: {rounds} x {tasks} ping and {tasks} debug tasks, without and with pipelining")
    playbook = ctx.out / "overhead.yml"
    body = [
        {
            "name": "Per-task overhead",
            "hosts": "localhost",
            "gather_facts": False,
            "vars": {"ansible_python_interpreter": "{{ ansible_playbook_python }}", "ansible_connection": "local"},
            "tasks": [{"name": f"ping {i}", "ansible.builtin.ping": None} for i in range(tasks)]
            + [{"name": f"debug {i}", "ansible.builtin.debug": {"msg": "x"}} for i in range(tasks)],
        }
    ]
    playbook.write_text(yaml.safe_dump(body))
    inventory = ctx.out / "overhead-inventory.yml"
    inventory.write_text(yaml.safe_dump({"all": {"hosts": {"localhost": None}}}))
    env = {
        **ctx.env,
        "ANSIBLE_CALLBACKS_ENABLED": "ansible.posix.profile_tasks",
        "PROFILE_TASKS_TASK_OUTPUT_LIMIT": "all",
        "PROFILE_TASKS_SORT_ORDER": "none",
    }
    collected: dict[str, dict[str, list[float]]] = {}
    for round_ in range(rounds):
        for pipelining in ("False", "True"):
            log = ctx.out / "logs" / f"overhead-{round_}-pipelining-{pipelining}.log"
            timed = run_timed(
                [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(inventory), str(playbook)],
                {**env, "ANSIBLE_PIPELINING": pipelining},
                log,
            )
            rows = parse_profile(log.read_text(errors="replace"), {})
            figures = collected.setdefault(f"pipelining_{pipelining.lower()}", {})
            # The first ping pays for the imports of the worker; the others are the steady cost.
            pings = [r["seconds"] for r in rows if r["task"].startswith("ping")]
            figures.setdefault("module_task", []).extend(pings[1:])
            debugs = [r["seconds"] for r in rows if r["task"].startswith("debug")]
            figures.setdefault("controller_task", []).extend(debugs)
            figures.setdefault("wall", []).append(timed.wall)
            figures.setdefault("cpu", []).append(timed.cpu)
    return {
        key: {
            "rounds": rounds,
            "wall": summary(figures["wall"])["median"],
            "cpu": summary(figures["cpu"])["median"],
            "module_task": summary(figures["module_task"]),
            "controller_task": summary(figures["controller_task"]),
        }
        for key, figures in collected.items()
    }


# -- P3: time to legacy --------------------------------------------------------------------------
def time_to_legacy(stack: Stack, refresh: float, poll: float = 0.02, timeout: float = 60) -> dict:
    """Flag off through the admin API; seconds until each instance's /status reports legacy."""
    stack.set_flag(True)
    stack.wait_for_path("new", timeout)
    time.sleep(random.uniform(0, refresh))  # a random phase against the SDK's and Unleash's timers
    urls = [stack.url(name) + "/status" for name in ("app-1", "app-2")]
    sessions = [requests.Session() for _ in urls]
    seen: dict[str, float] = {}
    began = time.perf_counter()
    stack.set_flag(False)
    written = time.perf_counter() - began
    try:
        while len(seen) < len(urls):
            for url, session in zip(urls, sessions, strict=True):
                if url not in seen:
                    with_error = None
                    try:
                        status = session.get(url, timeout=2).json()
                    except (requests.RequestException, ValueError) as exc:
                        with_error = exc
                    if with_error is None and status.get("path") == "legacy":
                        seen[url] = time.perf_counter() - began
            if time.perf_counter() - began > timeout:
                raise RuntimeError(f"instances not on legacy after {timeout} s: {sorted(set(urls) - set(seen))}")
            time.sleep(poll)
    finally:
        for session in sessions:
            session.close()
    return {"write_seconds": written, "instances": sorted(seen.values()), "last": max(seen.values())}


def measure_p3(ctx: Context, refreshes: list[float], runs: int) -> dict:
    ctx.log(f"P3: time to legacy for SDK refresh {refreshes} s, {runs} runs each")
    results = []
    for refresh in [*refreshes, 1.0]:
        ctx.stack.up(refresh_interval=refresh)  # restarts only the two app instances
        if len(results) == len(refreshes):
            break  # back at the stack's usual 1 s
        samples = [time_to_legacy(ctx.stack, refresh) for _ in range(runs)]
        last = [s["last"] for s in samples]
        ctx.log(f"  refresh {refresh:g} s: " + ", ".join(f"{x:.2f}" for x in last))
        results.append(
            {
                "refresh": refresh,
                "target": refresh + 1.0,
                "last": summary(last),
                "first": summary([s["instances"][0] for s in samples]),
                "write": summary([s["write_seconds"] for s in samples]),
                "within_target": sum(x <= refresh + 1.0 for x in last),
                "runs": runs,
                "samples": last,
            }
        )
    return {"poll_seconds": 0.02, "points": results}


# -- P4: cost to live traffic ----------------------------------------------------------------------
LOCK_QUERY = """
SELECT l.granted, c.relname
FROM pg_locks l
JOIN pg_stat_activity a ON a.pid = l.pid
LEFT JOIN pg_class c ON c.oid = l.relation
WHERE a.application_name = 'emergency-rollback' AND l.locktype = 'relation' AND l.mode = 'AccessExclusiveLock'
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""
QUEUED_QUERY = """
SELECT count(*) FROM pg_stat_activity
WHERE datname = current_database() AND wait_event_type = 'Lock' AND application_name <> 'emergency-rollback'
"""


class LockMonitor(threading.Thread):
    """Samples, every `interval` s, whether the rollback holds (or waits for) an ACCESS EXCLUSIVE lock
    on a table of the application database, and how many other sessions wait for a lock."""

    def __init__(self, dsn: str, interval: float = 0.01):
        super().__init__(name="lock-monitor", daemon=True)
        self.dsn, self.interval = dsn, interval
        self.samples: list[tuple[float, bool, bool, int]] = []  # t, requested, granted, queued
        self._stop_event = threading.Event()

    def run(self) -> None:
        conn = psycopg2.connect(self.dsn, application_name="bench-lock-monitor")
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                while not self._stop_event.is_set():
                    cur.execute(LOCK_QUERY)
                    rows = cur.fetchall()
                    cur.execute(QUEUED_QUERY)
                    queued = cur.fetchone()[0]
                    self.samples.append((time.time(), bool(rows), any(r[0] for r in rows), queued))
                    self._stop_event.wait(self.interval)
        finally:
            conn.close()

    def stop(self) -> None:
        self._stop_event.set()
        self.join(5)

    def window(self) -> tuple[float, float] | None:
        times = [t for t, requested, _, _ in self.samples if requested]
        return (min(times), max(times)) if times else None

    def max_queued(self, start: float, end: float) -> int:
        return max((q for t, _, _, q in self.samples if start <= t <= end), default=0)


def _phase(samples: list[dict], start: float, end: float) -> dict:
    chosen = [s for s in samples if start <= s["t"] < end]
    latencies = [s["latency_ms"] for s in chosen]
    return {
        "start": start,
        "end": end,
        "requests": len(chosen),
        "failed": sum(1 for s in chosen if not 200 <= s["status"] < 300),
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "max_ms": max(latencies) if latencies else None,
        "by_path": {p: sum(1 for s in chosen if s.get("path") == p) for p in ("new", "legacy")},
    }


def measure_p4(ctx: Context, rate: float = 200, before: float = 15, after: float = 15) -> dict:
    ctx.log(f"P4: one rollback under {rate:g} req/s of live traffic ({before:g} s before, {after:g} s after)")
    redeploy(ctx.stack, [APP_DB])
    series = ctx.out / "p4" / "load.jsonl"
    series.parent.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "rehearsal", "--run-dir", str(ctx.stack.run_dir), "load", "--rate", str(rate)]
    load = subprocess.Popen(
        [*argv, "--out", str(series), "--format", "json"],
        cwd=ROOT,
        env=ctx.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    monitor = LockMonitor(ctx.stack.dsn(APP_DB))
    try:
        time.sleep(before)
        monitor.start()
        result = ctx.playbook("p4-playbook", [APP_DB])
        time.sleep(after)
    finally:
        monitor.stop()
        load.send_signal(signal.SIGTERM)
        output, _ = load.communicate(timeout=60)
    samples = [json.loads(line) for line in series.read_text().splitlines() if line.strip()]
    if not samples:
        raise RuntimeError(f"the load generator recorded nothing: {output[-2000:]}")
    launched, exited = result.timed.launched_at, result.timed.ended_at
    steps = {
        s["name"]: {"start": parse_iso(s["started_at"]), "end": parse_iso(s["ended_at"])}
        for s in result.end_record["steps"]
    }
    schema = steps["schema"]
    first, last = min(s["t"] for s in samples), max(s["t"] for s in samples)
    lock = monitor.window()
    phases = {
        "before": _phase(samples, first + 3.0, launched),
        "rollback, before the schema step": _phase(samples, launched, schema["start"]),
        "schema step": _phase(samples, schema["start"], schema["end"]),
        "after the schema step": _phase(samples, schema["end"], last + 1),
    }
    lock_phase = None
    if lock:
        # A request sent up to one lock_timeout before the lock was requested may still be in flight.
        lock_phase = _phase(samples, lock[0], lock[1] + 0.01)
        lock_phase["lock_seconds"] = round(lock[1] - lock[0], 3)
        lock_phase["max_queued_sessions"] = monitor.max_queued(lock[0], lock[1] + 0.05)
    during = _phase(samples, launched, exited)
    before_p99 = phases["before"]["p99_ms"]
    return {
        "rate": rate,
        "lock_timeout_seconds": 2.0,
        "target_increase_ms": 2100.0,
        "phases": phases,
        "lock_window": lock_phase,
        "during_rollback": during,
        "p99_increase_ms": (
            round(phases["schema step"]["p99_ms"] - before_p99, 1)
            if before_p99 is not None and phases["schema step"]["p99_ms"] is not None
            else None
        ),
        "failed_total": sum(1 for s in samples if not 200 <= s["status"] < 300),
        "requests_total": len(samples),
        "late_over_50ms": sum(1 for s in samples if s.get("lag_ms", 0) > 50),
        "rollback": {
            "launched": launched,
            "exited": exited,
            "wall": result.timed.wall,
            "steps": steps,
            "propagation_wait": result.propagation_seconds,
            "schema_db_seconds": [d.get("duration_seconds") for d in result.end_record.get("databases", {}).values()],
        },
        "timeline": timeline(samples, monitor.samples, origin=launched),
        "series": str(series.relative_to(ROOT)) if series.is_relative_to(ROOT) else str(series),
    }


def timeline(samples: list[dict], lock_samples: list[tuple], origin: float, width: float = 0.25) -> dict:
    """The load and the lock in bins of `width` s by send time, relative to `origin` (the launch)."""
    bins: dict[int, list[dict]] = {}
    for s in samples:
        bins.setdefault(int((s["t"] - origin) // width), []).append(s)
    queued: dict[int, int] = {}
    locked: set[int] = set()
    for t, requested, _granted, count in lock_samples:
        index = int((t - origin) // width)
        queued[index] = max(queued.get(index, 0), count)
        if requested:
            locked.add(index)
    indexes = sorted(set(bins) | set(queued))
    return {
        "width": width,
        "t": [round(i * width, 3) for i in indexes],
        "rate": [round(len(bins.get(i, [])) / width, 1) for i in indexes],
        "failed": [sum(1 for s in bins.get(i, []) if not 200 <= s["status"] < 300) for i in indexes],
        "p99_ms": [percentile([s["latency_ms"] for s in bins.get(i, [])], 99) for i in indexes],
        "legacy_share": [
            round(sum(1 for s in bins[i] if s.get("path") == "legacy") / len(bins[i]), 3) if bins.get(i) else None
            for i in indexes
        ],
        "queued": [queued.get(i, 0) for i in indexes],
        "locked": [i in locked for i in indexes],
    }
