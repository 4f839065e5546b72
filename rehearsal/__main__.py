"""`python -m rehearsal <up|down|status|env|load>`: the stack's command line, a thin shell over rehearsal.stack."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

from rehearsal.stack import DEFAULT_PORTS, DEFAULT_RUN_DIR, Stack, StackError, format_env


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m rehearsal",
        description="The local rehearsal stack: PostgreSQL 16, Unleash, 2 app instances, Prometheus, sinks.",
    )
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=Path(os.environ.get("REHEARSAL_RUN_DIR") or DEFAULT_RUN_DIR),
        help=f"where the stack keeps data, logs, pids (env REHEARSAL_RUN_DIR; default {DEFAULT_RUN_DIR})",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    up = commands.add_parser("up", help="start every service (idempotent) and wait until all are healthy")
    ports_help = ", ".join(f"{name} {port}" for name, port in DEFAULT_PORTS.items())
    up.add_argument(
        "--ports",
        choices=("default", "auto"),
        default="default",
        help=f"default: {ports_help}; auto: free ports. A run folder keeps the ports of its first up.",
    )
    up.add_argument("--tenants", type=int, help="make exactly N tenant databases tenant_001.. (default: keep)")
    up.add_argument("--refresh-interval", type=float, help="the apps' Unleash SDK refresh interval in s (default 1)")
    up.add_argument("--timeout", type=float, default=90, help="seconds each service may take to become healthy")

    commands.add_parser("down", help="stop every process the stack recorded; fail if any is left")

    status = commands.add_parser("status", help="which services run and answer (exit 1 if one does not)")
    status.add_argument("--format", choices=("text", "json"), default="text")

    env = commands.add_parser("env", help="connection details for the playbook (env=local) and tests; has secrets")
    env.add_argument("--format", choices=("shell", "json"), default="shell")

    load = commands.add_parser("load", help="steady POST /transform load against both app instances")
    load.add_argument("--rate", type=float, default=200, help="requests per second (default 200)")
    load.add_argument("--duration", type=float, help="seconds (default: until SIGTERM or Ctrl-C)")
    load.add_argument("--out", type=Path, help="raw series, JSONL (default: <run-dir>/load/load-<time>.jsonl)")
    load.add_argument("--workers", type=int, default=16, help="requests in flight at most (default 16)")
    load.add_argument("--urls", help="comma list of app base URLs (default: the stack's APP_URLS)")
    load.add_argument("--format", choices=("text", "json"), default="text")
    return parser


def _up(stack: Stack, args) -> int:
    timings = stack.up(
        ports=args.ports, tenants=args.tenants, refresh_interval=args.refresh_interval, timeout=args.timeout
    )
    for name, seconds in timings.items():
        if name != "total":
            print(f"  {name:<22} {'running already' if seconds == 0 else f'{seconds:.2f} s'}")
    print(f"rehearsal stack is up in {timings['total']:.2f} s ({stack.run_dir})")
    print("connection details (with secrets): python -m rehearsal env")
    return 0


def _status(stack: Stack, args) -> int:
    report = stack.status()
    if args.format == "json":
        print(json.dumps(report, indent=2))
    else:
        for name, item in report.items():
            state = "healthy" if item["healthy"] else ("running, NOT healthy" if item["pid"] else "DOWN")
            print(f"  {name:<11} {state:<21} pid {item['pid'] or '-':<8} {item['address']}")
    return 0 if all(item["healthy"] for item in report.values()) else 1


def _load(stack: Stack, args) -> int:
    from rehearsal.load import LoadGenerator, format_summary  # noqa: PLC0415

    urls = args.urls.split(",") if args.urls else stack.env()["APP_URLS"].split(",")
    out = args.out or stack.run_dir / "load" / f"load-{time.strftime('%Y%m%dT%H%M%S')}.jsonl"
    generator = LoadGenerator(urls, args.rate, args.duration, out=out, workers=args.workers)

    def _stop(_signum, _frame):
        generator.request_stop()  # the main thread then writes the summary

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    generator.start()
    while not generator.wait(0.2):
        if generator.stopping:
            break
    summary = generator.stop()
    print(json.dumps(summary) if args.format == "json" else format_summary(summary) + f"\nraw series: {out}")
    return 0


def _down(stack: Stack, _args) -> int:
    stopped = stack.down()
    print(f"rehearsal stack is down ({', '.join(stopped) or 'nothing was running'}); no process left")
    return 0


def _env(stack: Stack, args) -> int:
    print(format_env(stack.env(), args.format))
    return 0


COMMANDS = {"up": _up, "down": _down, "status": _status, "env": _env, "load": _load}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    stack = Stack(args.run_dir)
    try:
        return COMMANDS[args.command](stack, args)
    except StackError as exc:
        print(f"rehearsal {args.command}: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"rehearsal {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
