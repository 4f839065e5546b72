"""`python -m drills <prepare|rollback|report> SCENARIO ...` (PYTHONPATH=molecule/resources): the drills' command line.

    prepare  SCENARIO [--writes N] [--faulty]      reset the shared stack, deploy, write through the new path
    rollback SCENARIO --label NAME [--expect success|failure|killed|any] [--load-rate R]
             [--flag-fault 500|503|401] [--blocker hold|release-when-queued|release-after=S]
             [--kill] [--parallel N] [-e VAR=VALUE ...]
    dba-fix  SCENARIO                               record what a failed downgrade left, then undo 0003 by hand
    report   SCENARIO                               what the drill did, readable (steps, load, notifications, audit)
    snapshot SCENARIO --label NAME                  checksums of the feature's rows now (the way-forward drill)
    deploy   SCENARIO --label NAME [--expect ...] [--load-rate R] [-e VAR=VALUE ...]
                                                    run deploy.yml under load; what it restored, by checksum
    instance SCENARIO start|cut|write|fix|stop [--count N]
                                                    the stale-instance drill's third app instance (drills/stale.py)

`rollback` streams the playbook's output, then prints one JSON line last: {"drill": "rollback", "runs": [...],
"changed": N} (N: the changed count of the rollback's own PLAY RECAP, what molecule's idempotence checks).
Exit 1 with one line on stderr when the drill could not do what it was asked or the outcome was not the
expected one.
"""

from __future__ import annotations

import argparse
import json
import sys

from drills import drill, forward, report, stale
from drills.context import DrillError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m drills", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    prepare = commands.add_parser("prepare", help="reset the stack, deploy.yml, write rows through the new path")
    prepare.add_argument("scenario")
    prepare.add_argument("--writes", type=int, default=8, help="documents written through the new path (default 8)")
    prepare.add_argument("--faulty", action="store_true", help="also upgrade to the test-only 0003_faulty_downgrade")

    rollback = commands.add_parser("rollback", help="run rollback.yml under load with a fault in the way")
    rollback.add_argument("scenario")
    rollback.add_argument("--label", required=True, help="the run's name in the state and results")
    rollback.add_argument("--expect", choices=drill.EXPECTATIONS, default="success")
    rollback.add_argument("--load-rate", type=float, default=30.0, help="requests/s during the run (0: no load)")
    rollback.add_argument("--flag-fault", type=int, choices=(500, 503, 401), help="the flag API answers writes so")
    rollback.add_argument(
        "--blocker", help="hold | release-when-queued | release-after=SECONDS: a transaction locking documents"
    )
    rollback.add_argument("--kill", action="store_true", help="SIGKILL the controller once the schema revert runs")
    rollback.add_argument("--parallel", type=int, default=1, help="rollbacks launched at the same moment")
    rollback.add_argument("-e", dest="extra_vars", action="append", default=[], help="extra var for rollback.yml")

    fix = commands.add_parser("dba-fix", help="record the failed downgrade's state, then remove 0003 by hand")
    fix.add_argument("scenario")

    show = commands.add_parser("report", help="what the scenario's drill did, readable")
    show.add_argument("scenario")

    snap = commands.add_parser("snapshot", help="checksums of transformation_jobs and documents.transform_version")
    snap.add_argument("scenario")
    snap.add_argument("--label", required=True)

    again = commands.add_parser("deploy", help="run deploy.yml under load and check what it restored")
    again.add_argument("scenario")
    again.add_argument("--label", required=True)
    again.add_argument("--expect", choices=drill.EXPECTATIONS, default="success")
    again.add_argument("--load-rate", type=float, default=30.0, help="requests/s during the run (0: no load)")
    again.add_argument("-e", dest="extra_vars", action="append", default=[], help="extra var for deploy.yml")

    third = commands.add_parser("instance", help="a third app instance, scraped by Prometheus, not in the list")
    third.add_argument("scenario")
    third.add_argument("action", choices=stale.ACTIONS)
    third.add_argument("--count", type=int, default=5, help="documents written by `write` (default 5)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "prepare":
            drill.prepare(args.scenario, writes=args.writes, faulty=args.faulty)
        elif args.command == "rollback":
            request = drill.Request(
                expect=args.expect,
                load_rate=args.load_rate,
                extra_vars=args.extra_vars,
                flag_fault=args.flag_fault,
                blocker=args.blocker,
                kill=args.kill,
                parallel=args.parallel,
            )
            records = drill.rollback(args.scenario, args.label, request)
            runs = [
                {
                    "label": r["label"],
                    "rc": r["rc"],
                    "changed": r["changed"],
                    "outcome": (r["audit"]["end"] or {}).get("outcome"),
                }
                for r in records
            ]
            print(json.dumps({"drill": "rollback", "runs": runs, "changed": sum(r["changed"] for r in runs)}))
        elif args.command == "snapshot":
            forward.snapshot(args.scenario, args.label)
        elif args.command == "deploy":
            request = drill.Request(expect=args.expect, load_rate=args.load_rate, extra_vars=args.extra_vars)
            record = forward.deploy(args.scenario, args.label, request)
            run = {"label": record["label"], "rc": record["rc"], "changed": record["changed"]}
            print(json.dumps({"drill": "deploy", "runs": [run], "changed": record["changed"]}))
        elif args.command == "dba-fix":
            print(json.dumps({"drill": "dba-fix", "after_failure": drill.dba_fix(args.scenario)}))
        elif args.command == "instance":
            stale.act(args.scenario, args.action, args.count)
        else:
            print(report.render(args.scenario))
    except DrillError as exc:
        print(f"drill {args.command}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
