"""The floor: the rollback of rollback.yml as one plain Python process, for the same environment.

It does the work the playbook does, step by step, with the same code the modules run (our
module_utils, imported as `ansible.module_utils.<name>`) and the same options the roles pass, but
without Ansible: no task, no module packaging, no worker process per task. What is left is the
irreducible cost of the rollback itself; `python -m bench` compares the playbook with it.

1. preflight: read the flag (Unleash admin API, no write), every database's revision, fingerprint
   and rollback point (one REPEATABLE READ snapshot each, 4 threads as schema_state), the target
   (the one recorded rollback point), each database's downgrade plan (alembic offline SQL, its
   sha256, the rows of what it drops), as rollback_preflight does;
2. flag: switch_flag(disabled): read, write, read back (as feature_flag);
3. propagation: wait_for_path(legacy) over every /status, with the role's interval and timeout;
4. schema: revert_databases(): advisory lock, one transaction with SET LOCAL lock_timeout and
   statement_timeout, archive of the dropped rows, the downgrade, pinned to the plan's sha256,
   `parallel` worker processes (as schema_migration with the role's defaults);
5. verify: the flag read back, revision and fingerprint of every database against the rollback
   point, every instance's /healthz, the 5xx ratio from Prometheus against the baseline (as
   rollback_verify);
6. notify: the Slack webhook and the e-mail (as rollback_notify), and a start and an end record
   appended to a hash-chained audit file (as the audit callback), when `audit_file` is given.

The environment is read from the variables `python -m rehearsal env` exports, the way
inventories/group_vars/local.yml reads them; the DSNs carry no password (libpq reads PGPASSWORD).

    python -m bench.floor --db transformation [--db tenant_001 ...] [--json-out result.json]
"""

from __future__ import annotations

import argparse
import json
import os
import smtplib
import ssl
import sys
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import ClassVar
from urllib.parse import quote

from bench import use_module_utils

use_module_utils()

import requests  # noqa: E402
import yaml  # noqa: E402
from ansible.module_utils.alembic_runner import revert_databases  # noqa: E402
from ansible.module_utils.audit_chain import append_record  # noqa: E402
from ansible.module_utils.flag_barrier import wait_for_path  # noqa: E402
from ansible.module_utils.flag_providers import make_provider  # noqa: E402
from ansible.module_utils.flag_switch import switch_flag  # noqa: E402
from ansible.module_utils.http_client import HttpClient  # noqa: E402
from ansible.module_utils.schema_rollback_points import read_states  # noqa: E402

from bench import project  # noqa: E402

SECRET_KEYS = (
    "FF_API_KEY",
    "PGPASSWORD",
    "ROLLBACK_DB_DSN",
    "SLACK_WEBHOOK_URL",
    "SMTP_PASSWORD",
    "PAGERDUTY_ROUTING_KEY",
)
STEPS = ("preflight", "flag", "propagation", "schema", "verify", "notify")
ERROR_RATE_QUERY = (
    'sum(rate(http_requests_total{{job="transformation-engine",status=~"5.."}}[{range}]))'
    ' / clamp_min(sum(rate(http_requests_total{{job="transformation-engine"}}[{range}])), 1e-9)'
)


class FloorError(RuntimeError):
    """The floor could not do what the playbook does (one line; never a secret)."""


def database_dsn(env: Mapping[str, str], name: str) -> str:
    """The DSN group_vars/all.yml builds: postgresql://user@host:port/name?sslmode=..., no password (PGPASSWORD)."""
    user = env.get("ROLLBACK_DB_USER", "migrator")
    host, port = env["ROLLBACK_DB_HOST"], env["ROLLBACK_DB_PORT"]
    tls = f"?sslmode={quote(env.get('ROLLBACK_DB_SSLMODE', 'verify-full'), safe='')}"
    if env.get("ROLLBACK_DB_SSLROOTCERT"):
        tls += f"&sslrootcert={quote(env['ROLLBACK_DB_SSLROOTCERT'], safe='')}"
    return f"postgresql://{quote(user, safe='')}@{host}:{port}/{quote(name, safe='')}{tls}"


def role_defaults() -> dict:
    """The plain values of the project's roles/*/defaults/main.yml (a templated value is left out)."""
    values: dict = {}
    for path in sorted((project() / "roles").glob("*/defaults/main.yml")):
        for key, value in (yaml.safe_load(path.read_text()) or {}).items():
            if isinstance(value, (int, float, str)) and not (isinstance(value, str) and "{{" in value):
                values[key] = value
    return values


class Floor:
    """One rollback of an environment's databases, step by step; `run()` returns the timings.

    The options are the ones the roles pass: their defaults are read from the project's
    roles/*/defaults/main.yml, so that tuning a role default moves the floor with it.
    """

    # The modules' defaults the roles rely on, and the roles' defaults if their files do not say.
    state_parallel, plan_parallel = 4, 2
    DEFAULTS: ClassVar[dict] = {
        "rollback_propagation_timeout": 60.0,
        "rollback_propagation_interval": 1.0,  # flag_propagation's default, when the role does not set one
        "rollback_schema_lock_timeout": 2.0,
        "rollback_schema_lock_attempts": 5,
        "rollback_schema_statement_timeout": 60.0,
        "rollback_schema_parallel": 2,
        "rollback_verify_error_rate_tolerance": 0.01,
        "rollback_verify_error_rate_range": "1m",
        "rollback_verify_error_rate_wait": 120.0,
        "rollback_verify_error_rate_interval": 3.0,
    }

    def __init__(
        self,
        env: Mapping[str, str],
        databases: list[str],
        *,
        parallel: int | None = None,
        reason: str = "floor",
        notify: bool = True,
        audit_file: str | None = None,
        propagation_interval: float | None = None,
    ):
        if not databases:
            raise FloorError("no database given: name at least one with --db")
        self.env = dict(env)
        self.databases = [{"name": name, "dsn": database_dsn(env, name)} for name in databases]
        self.reason, self.notify, self.audit_file = reason, notify, audit_file
        d = {**self.DEFAULTS, **{k: v for k, v in role_defaults().items() if k in self.DEFAULTS}}
        self.parallel = int(parallel or d["rollback_schema_parallel"])
        self.propagation_timeout = float(d["rollback_propagation_timeout"])
        self.propagation_interval = float(propagation_interval or d["rollback_propagation_interval"])
        self.lock_timeout = float(d["rollback_schema_lock_timeout"])
        self.lock_attempts = int(d["rollback_schema_lock_attempts"])
        self.statement_timeout = float(d["rollback_schema_statement_timeout"])
        self.error_rate_tolerance = float(d["rollback_verify_error_rate_tolerance"])
        self.error_rate_range = str(d["rollback_verify_error_rate_range"])
        self.error_rate_wait = float(d["rollback_verify_error_rate_wait"])
        self.error_rate_interval = float(d["rollback_verify_error_rate_interval"])
        self.script_location = str(project() / "migrations")
        self.status_urls = [u for u in env.get("APP_STATUS_URLS", "").split(",") if u]
        self.app_urls = [u for u in env.get("APP_URLS", "").split(",") if u]
        self.steps: dict[str, dict] = {}
        self.facts: dict = {}

    # -- helpers -------------------------------------------------------------------------------
    def _provider(self, max_wait: float = 30.0):
        key = self.env.get("FF_API_KEY", "")
        client = HttpClient(timeout=5.0, max_wait=max_wait, secrets=[key] if key else [])
        return make_provider(
            self.env.get("FF_PROVIDER", "unleash"),
            client,
            self.env["FF_API_URL"],
            key,
            self.env.get("FF_FLAG", "DataTransformationFeature"),
            project=self.env.get("FF_PROJECT", "default"),
            environment=self.env.get("FF_ENVIRONMENT", "production"),
        )

    def _step(self, name: str, work) -> None:
        started_at, began = time.time(), time.perf_counter()
        work()
        self.steps[name] = {
            "seconds": round(time.perf_counter() - began, 4),
            "started_at": started_at,
            "ended_at": time.time(),
        }

    def _jobs(self, **options) -> list[dict]:
        return [{"script_location": self.script_location, **options, **db} for db in self.databases]

    # -- the steps -----------------------------------------------------------------------------
    def preflight(self) -> None:
        self.facts["flag_before"] = switch_flag(self._provider(), "disabled", check_mode=True)["previous_state"]
        states = read_states([dict(db) for db in self.databases], self.state_parallel)
        failed = [s for s in states if s["failed"]]
        if failed:
            raise FloorError(f"cannot read {failed[0]['name']}: {failed[0]['msg']}")
        points = {s["name"]: s["rollback_point"] for s in states}
        revisions = {(p or {}).get("revision") for p in points.values()}
        if None in revisions or len(revisions) != 1:
            raise FloorError(f"no single rollback point to return to: {sorted(map(str, revisions))}")
        self.facts["points"], self.facts["target"] = points, revisions.pop()
        plans = revert_databases(self._jobs(revision=self.facts["target"], check_mode=True), self.plan_parallel)
        failed = [p for p in plans if p["failed"]]
        if failed:
            raise FloorError(f"cannot plan {failed[0]['name']}: {failed[0]['msg']}")
        self.facts["plan"] = {p["name"]: p["sql_sha256"] for p in plans}

    def flag(self) -> None:
        result = switch_flag(
            self._provider(), "disabled", comment=f"Emergency rollback without ticket by bench floor: {self.reason}"
        )
        self.facts["flag"] = {k: result[k] for k in ("previous_state", "state", "changed", "attempts")}

    def propagation(self) -> None:
        client = HttpClient(timeout=5.0, max_wait=0)
        result = wait_for_path(
            client,
            self.status_urls,
            expected_path="legacy",
            timeout=self.propagation_timeout,
            interval=self.propagation_interval,
        )
        self.facts["propagation_seconds"] = result["elapsed_seconds"]
        self.facts["propagation_rounds"] = result["rounds"]

    def schema(self) -> None:
        jobs = self._jobs(
            revision=self.facts["target"],
            lock_timeout=self.lock_timeout,
            lock_attempts=self.lock_attempts,
            statement_timeout=self.statement_timeout,
            archive=True,
        )
        for job in jobs:
            job["expected_sql_sha256"] = self.facts["plan"][job["name"]] or "none (nothing to do when approved)"
        results = revert_databases(jobs, self.parallel)
        failed = [r for r in results if r["failed"]]
        if failed:
            raise FloorError(f"cannot revert {failed[0]['name']}: {failed[0]['msg']}")
        self.facts["databases"] = {
            r["name"]: {
                "revision_before": r["from_revision"],
                "revision_after": r["to_revision"],
                "changed": r["changed"],
                "attempts": r["attempts"],
                "lock_wait_seconds": r["lock_wait_seconds"],
                "duration_seconds": r["duration_seconds"],
                "archive_rows": (r["archive"] or {}).get("rows", 0),
            }
            for r in results
        }

    def verify(self) -> None:
        if switch_flag(self._provider(), "disabled", check_mode=True)["previous_state"] != "disabled":
            raise FloorError("verification failed: the flag does not read disabled")
        target, points = self.facts["target"], self.facts["points"]
        for state in read_states([dict(db) for db in self.databases], self.state_parallel):
            point = points[state["name"]]
            if state["failed"] or state["revision"] != target:
                raise FloorError(f"verification failed: {state['name']} is at {state['revision']}, not {target}")
            if point["revision"] == target and state["fingerprint"] != point["fingerprint"]:
                raise FloorError(f"verification failed: {state['name']} fingerprint differs from before the deployment")
        with requests.Session() as session:
            for url in self.app_urls:
                response = session.get(url.rstrip("/") + "/healthz", timeout=5)
                if response.status_code != 200:
                    raise FloorError(f"verification failed: {url}/healthz answered {response.status_code}")
            prometheus = self.env.get("PROMETHEUS_URL", "")
            if prometheus:
                baseline = next(iter(points.values())).get("error_rate_baseline") or 0.0
                limit = float(baseline) + self.error_rate_tolerance
                query = ERROR_RATE_QUERY.format(range=self.error_rate_range)
                deadline = time.monotonic() + self.error_rate_wait
                while True:
                    response = session.post(prometheus.rstrip("/") + "/api/v1/query", data={"query": query}, timeout=5)
                    result = response.json()["data"]["result"]
                    ratio = float(result[0]["value"][1]) if result else 0.0
                    if ratio <= limit:
                        self.facts["error_rate"] = ratio
                        break
                    if time.monotonic() > deadline:
                        raise FloorError(f"verification failed: 5xx ratio {ratio} above {limit}")
                    time.sleep(self.error_rate_interval)

    def notify_step(self) -> None:
        summary = (
            f"Rollback of DataTransformationFeature in local: succeeded (bench floor). Reason: {self.reason}\n"
            + "\n".join(
                f"Database {name}: {d['revision_before']} -> {d['revision_after']}"
                for name, d in self.facts["databases"].items()
            )
        )
        subject = "Rollback of DataTransformationFeature in local succeeded"
        delivered = {}
        webhook = self.env.get("SLACK_WEBHOOK_URL", "")
        if webhook:
            response = requests.post(webhook, json={"text": f"{subject}\n{summary}"}, timeout=10)
            delivered["slack"] = response.status_code in (200, 204)
        if self.env.get("SMTP_HOST"):
            message = EmailMessage()
            message["From"], message["To"], message["Subject"] = (
                "emergency-rollback@localhost",
                "sre-oncall@rehearsal.localhost",
                subject,
            )
            message.set_content(summary)
            with smtplib.SMTP(self.env["SMTP_HOST"], int(self.env.get("SMTP_PORT", "25")), timeout=10) as smtp:
                if self.env.get("SMTP_CA_FILE"):  # verified STARTTLS, as rollback_notify does
                    smtp.starttls(context=ssl.create_default_context(cafile=self.env["SMTP_CA_FILE"]))
                if self.env.get("SMTP_USERNAME"):
                    smtp.login(self.env["SMTP_USERNAME"], self.env.get("SMTP_PASSWORD", ""))
                smtp.send_message(message)
            delivered["mail"] = True
        if self.env.get("PAGERDUTY_ROUTING_KEY"):  # the start and end change events and the resolve
            base, key = (
                self.env.get("PAGERDUTY_EVENTS_URL", "https://events.pagerduty.com"),
                self.env["PAGERDUTY_ROUTING_KEY"],
            )
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S+0000", time.gmtime())
            change = {"routing_key": key, "payload": {"summary": subject, "source": "bench.floor", "timestamp": stamp}}
            resolve = {"routing_key": key, "event_action": "resolve", "dedup_key": "emergency-rollback/local/bench"}
            for path, event in (
                ("/v2/change/enqueue", change),
                ("/v2/enqueue", resolve),
                ("/v2/change/enqueue", change),
            ):
                response = requests.post(base.rstrip("/") + path, json=event, timeout=10)
                delivered["pagerduty"] = delivered.get("pagerduty", True) and response.status_code == 202
        self.facts["notifications"] = delivered

    # -- the run -------------------------------------------------------------------------------
    def run(self) -> dict:
        started_at, began = time.time(), time.perf_counter()
        if self.audit_file:
            append_record(self.audit_file, {"kind": "start", "playbook": "bench.floor", "reason": self.reason})
        self._step("preflight", self.preflight)
        self._step("flag", self.flag)
        self._step("propagation", self.propagation)
        self._step("schema", self.schema)
        self._step("verify", self.verify)
        if self.notify:
            self._step("notify", self.notify_step)
        if self.audit_file:
            record = {
                "kind": "end",
                "outcome": "succeeded",
                "ended_at": datetime.now(UTC).isoformat(),
                "steps": [{"name": n, "duration_seconds": s["seconds"]} for n, s in self.steps.items()],
                **{k: v for k, v in self.facts.items() if k != "points"},
            }
            append_record(self.audit_file, json.loads(json.dumps(record, default=str)))
        total = time.perf_counter() - began
        return {
            "total_seconds": round(total, 4),
            "started_at": started_at,
            "propagation_seconds": self.facts["propagation_seconds"],
            "steps": self.steps,
            "databases": len(self.databases),
            "changed": sum(d["changed"] for d in self.facts["databases"].values()),
            "target": self.facts["target"],
            "flag_before": self.facts["flag_before"],
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__.split("\n")[0])
    parser.add_argument("--db", action="append", required=True, help="a database to revert (repeat)")
    parser.add_argument("--parallel", type=int, help="worker processes of the schema revert (default: the role's)")
    parser.add_argument(
        "--propagation-interval", type=float, help="seconds between two polls of the barrier (default: the role's)"
    )
    parser.add_argument("--reason", default="bench floor")
    parser.add_argument("--no-notify", action="store_true", help="skip the Slack and e-mail notifications")
    parser.add_argument("--audit-file", help="append start/end records to this hash-chained audit file")
    parser.add_argument("--json-out", help="write the result here (default: stdout)")
    args = parser.parse_args(argv)
    try:
        result = Floor(
            os.environ,
            args.db,
            parallel=args.parallel,
            reason=args.reason,
            notify=not args.no_notify,
            audit_file=args.audit_file,
            propagation_interval=args.propagation_interval,
        ).run()
    except Exception as exc:  # one line, without any secret of the environment
        message = f"{type(exc).__name__}: {exc}".splitlines()[0] if str(exc) else type(exc).__name__
        for key in SECRET_KEYS:
            if os.environ.get(key):
                message = message.replace(os.environ[key], "********")
        print(f"floor: {message}", file=sys.stderr)
        return 1
    text = json.dumps(result, indent=2)
    if args.json_out:
        with open(args.json_out, "w") as out:
            out.write(text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
