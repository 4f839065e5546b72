"""`python -m bench` (`make bench`): measure the rollback, write bench/RESULTS.md and the plots.

Brings its own rehearsal stack up in .run/bench/ (free ports, the tenant databases P2 needs, SDK
refresh 1 s), deploys once through playbooks/deploy.yml, warms up with one unmeasured rollback,
then measures P1, P2, the profile, P4 and P3 (in that order: P3 restarts the app instances with
other refresh intervals), writes bench/results.json, bench/RESULTS.md and bench/*.png, and tears
the stack down. Raw data (logs, audit files, the load series, generated inventories) stay in
bench/out/ (git-ignored, skipped by the linters).

    python -m bench                                   # everything, the defaults below
    python -m bench --runs 3 --fanout 1,10,100        # fewer runs, no 500-database point
    python -m bench --only p1,profile --runs 2        # a part (the report shows what was measured)
    python -m bench --report-only                     # rewrite RESULTS.md and plots from results.json
    python -m bench --only p1 --project /tmp/copy --report-dir /tmp/copy-report   # measure a modified copy
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

from bench import BENCH_DIR, PROJECT_ENV, ROOT, project
from bench.common import SNAPSHOT_MARK, TREE_WATCHED, machine_info, run_playbook
from bench.deploy import redeploy
from bench.report import write_report
from bench.scenarios import (
    APP_DB,
    Context,
    background_traffic,
    measure_p1,
    measure_p2,
    measure_p3,
    measure_p4,
    measure_profile,
    measure_stress,
    measure_task_overhead,
)
from rehearsal.stack import Stack

DEFAULT_RUN_DIR = ROOT / ".run" / "bench"
PARTS = ("p1", "p2", "profile", "overhead", "p4", "p3", "stress")


def _numbers(text: str, kind=int) -> list:
    return [kind(x) for x in text.split(",") if x.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="P1 runs of the playbook and of the floor (default 5)")
    parser.add_argument("--fanout", default="1,10,100,500", help="P2 database counts (default 1,10,100,500)")
    parser.add_argument(
        "--fanout-runs",
        type=int,
        default=2,
        help="P2 runs per count and kind (default 2: a 500-database pair takes minutes)",
    )
    parser.add_argument("--refresh", default="1,5", help="P3 SDK refresh intervals in s (default 1,5)")
    parser.add_argument("--p3-runs", type=int, default=8, help="P3 flag toggles per refresh interval (default 8)")
    parser.add_argument("--profile-runs", type=int, default=3, help="profiled playbook runs (default 3)")
    parser.add_argument("--rate", type=float, default=200, help="P4 load in requests/s (default 200)")
    parser.add_argument("--stress-runs", type=int, default=20, help="stress: rollbacks in a row (default 20)")
    parser.add_argument("--stress-databases", type=int, default=100, help="stress: databases each (default 100)")
    parser.add_argument("--only", help=f"comma list of parts to run, of {','.join(PARTS)} (default all)")
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=DEFAULT_RUN_DIR,
        help="the stack's run folder (default .run/bench, made afresh by every run without --keep-stack)",
    )
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "out", help="raw data folder (default bench/out)")
    parser.add_argument(
        "--project",
        type=Path,
        help="measure another copy of the playbook (a folder with rollback.yml, playbooks/, roles/, plugins/, "
        "inventories/, ansible.cfg, migrations/); default: this repository",
    )
    parser.add_argument(
        "--snapshot",
        action="store_true",
        help="measure the committed HEAD (git archive into .run/), unaffected by edits made while it runs",
    )
    parser.add_argument("--report-dir", type=Path, default=BENCH_DIR, help="where RESULTS.md, results.json, *.png go")
    parser.add_argument("--keep-stack", action="store_true", help="leave the stack up at the end")
    parser.add_argument("--report-only", action="store_true", help="only rewrite the report from results.json")
    args = parser.parse_args(argv)
    args.parts = _numbers(args.only, str) if args.only else list(PARTS)
    unknown = sorted(set(args.parts) - set(PARTS))
    if unknown:
        parser.error(f"unknown part(s) {', '.join(unknown)}: choose among {', '.join(PARTS)}")
    args.fanout, args.refresh = _numbers(args.fanout), _numbers(args.refresh, float)
    if any(n < 1 for n in args.fanout) or args.runs < 1 or args.fanout_runs < 1:
        parser.error("runs and database counts must be at least 1")
    return args


def snapshot_of_head() -> Path:
    """The committed playbook (TREE_WATCHED of HEAD) in .run/bench-snapshot-<commit>/, made once."""
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    folder = ROOT / ".run" / f"bench-snapshot-{commit}"
    if not (folder / SNAPSHOT_MARK).exists():
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", "--format=tar", "HEAD", *TREE_WATCHED], capture_output=True, check=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
        (folder / SNAPSHOT_MARK).write_text(f"git archive of commit {commit}\n")
    return folder


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.snapshot and project() == ROOT:
        args.project = snapshot_of_head()
    if args.project is not None and project() != args.project.resolve():
        if not (args.project / "rollback.yml").is_file():
            print(f"python -m bench: --project {args.project} has no rollback.yml: give a copy of the playbook.")
            return 2
        # Every module of the bench (and every child) must see the project from its first import.
        env = {**os.environ, PROJECT_ENV: str(args.project.resolve())}
        rerun = [sys.executable, "-m", "bench", *(sys.argv[1:] if argv is None else argv)]
        return subprocess.run(rerun, env=env, check=False).returncode
    args.report_dir.mkdir(parents=True, exist_ok=True)
    results_file = args.report_dir / "results.json"
    if args.report_only:
        write_report(json.loads(results_file.read_text()), args.report_dir)
        log(f"wrote {args.report_dir / 'RESULTS.md'} and the plots from {results_file}")
        return 0
    options = (
        "runs",
        "fanout",
        "fanout_runs",
        "refresh",
        "p3_runs",
        "profile_runs",
        "rate",
        "stress_runs",
        "stress_databases",
        "parts",
    )
    results: dict = {"machine": machine_info(), "options": {key: getattr(args, key) for key in options}}
    log(f"machine: {results['machine']}")
    # `kill <pid>` ends the run like Ctrl-C: the stack goes down and the report is written.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    if args.run_dir.resolve() == DEFAULT_RUN_DIR.resolve() and not args.keep_stack:
        # The bench's own stack starts fresh: archives left by earlier runs' rollbacks would make the
        # setup's deploy.yml refuse to restore over the rows written since (seen here).
        Stack(args.run_dir).down()
        shutil.rmtree(args.run_dir, ignore_errors=True)
    stack = Stack(args.run_dir)
    try:
        code = measure_all(args, stack, results, results_file)
    except BaseException as exc:
        log(f"stopped: {type(exc).__name__}: {exc}")
        traceback.print_exc()
        results["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        code = 1
    finally:
        results["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
        if not args.keep_stack:
            log("stack: down")
            stack.down()
    _save(results, results_file)
    write_report(results, args.report_dir)
    log(f"wrote {args.report_dir / 'RESULTS.md'}, {results_file} and the plots")
    return code


def measure_all(args: argparse.Namespace, stack: Stack, results: dict, results_file: Path) -> int:
    """Stack up, one deploy.yml and a warm-up, then each part; 1 if a part failed (the others still run)."""
    tenants = (
        max([*(args.fanout if "p2" in args.parts else []), args.stress_databases if "stress" in args.parts else 1]) - 1
    )
    log(f"stack: up in {args.run_dir} with {tenants} tenant database(s)")
    results["stack_up_seconds"] = stack.up(ports="auto", tenants=tenants, refresh_interval=1.0)["total"]
    stack.reset()
    ctx = Context(stack, args.out, log=log)
    log("setup: playbooks/deploy.yml once, then one unmeasured rollback of each kind (warm-up)")
    deployed = run_playbook(
        "playbooks/deploy.yml", ctx.env, args.out / "logs" / "000-deploy.log", args.out / "audit" / "deploy.jsonl"
    )
    results["deploy_playbook_seconds"] = round(deployed.timed.wall, 2)
    with background_traffic(ctx):
        ctx.playbook("warmup", [APP_DB])
    redeploy(stack, [APP_DB])
    ctx.floor("warmup", [APP_DB])
    measures = {
        "p1": lambda: measure_p1(ctx, args.runs),
        "p2": lambda: measure_p2(ctx, args.fanout, args.fanout_runs),
        "profile": lambda: measure_profile(ctx, args.profile_runs),
        "overhead": lambda: measure_task_overhead(ctx),
        "p4": lambda: measure_p4(ctx, rate=args.rate),
        "p3": lambda: measure_p3(ctx, args.refresh, args.p3_runs),
        "stress": lambda: measure_stress(ctx, args.stress_databases, args.stress_runs),
    }
    code = 0
    for part in (p for p in PARTS if p in args.parts):
        began = time.monotonic()
        # P4 brings its own load; P3 restarts the instances. The others run under light live traffic.
        traffic = contextlib.nullcontext() if part in ("p3", "p4") else background_traffic(ctx)
        try:
            with traffic:
                results[part] = measures[part]()
        except Exception as exc:  # the other parts are still worth measuring
            log(f"{part} failed: {type(exc).__name__}: {exc}")
            traceback.print_exc()
            results.setdefault("errors", {})[part] = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
            code = 1
            stack.reset()
        results.setdefault("part_seconds", {})[part] = round(time.monotonic() - began, 1)
        _save(results, results_file)
    return code


def _save(results: dict, path: Path) -> None:
    path.write_text(json.dumps(results, indent=1, default=str) + "\n")


if __name__ == "__main__":
    sys.exit(main())
