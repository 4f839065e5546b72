"""The floor: the rollback of rollback.yml as one plain Python process, for the same environment.

It does the work the playbook does, in the playbook's order, with the same code the plugins run
(the `run_*` functions of our module_utils, imported as `ansible.module_utils.<name>`, each given
parameters validated against the plugin's own argument spec, as the action plugins do) and the
options the roles pass, but without Ansible: no playbook, no task, no worker process per task.
What is left is the irreducible cost of the rollback itself; `python -m bench` compares the
playbook with it.

1. preflight: the guard's checks of the request (audit_guard.check_request: the command line, the
   extra vars, the environment and its databases, reason, ticket and confirmation when
   production-like) and the audit session's start and request records, read back (audit_run, the
   callback's own logic: sealed with ROLLBACK_AUDIT_KEY when set), nothing contacted;
2. flag: run_feature_flag(state=disabled): read, write, read back, `confirmed_at`;
3. propagation: run_flag_propagation() over the status URLs and the instances Prometheus discovers,
   each confirmed legacy with a flag fetch made after `confirmed_at`; meanwhile, in a thread (as the
   playbook plans while the instances move): PagerDuty's start change event (run_notification),
   the audit chain check (run_audit_verify), every database's state (run_schema_state), the
   target, the plan (run_schema_migration in check mode), recorded at once as the `plan` record;
4. schema: run_schema_migration() pinned to the plan's sha256 per database, archive on;
5. verify: the flag read back, every database's revision and fingerprint, run_app_verify() (the
   instances' health and the 5xx ratio from Prometheus against the recorded baseline);
6. notify: run_notification(event=succeeded): Slack, e-mail, PagerDuty resolve and end event, as
   the rehearsal configures them; then the end record.

The environment is read from the variables `python -m rehearsal env` exports, the way
inventories/group_vars/local.yml reads them; the DSNs carry no password (libpq reads PGPASSWORD).

    python -m bench.floor --db transformation [--db tenant_001 ...] [--json-out result.json]
"""

from __future__ import annotations

import argparse
import gc
import getpass
import json
import os
import sys
import threading
import time
from collections.abc import Mapping
from typing import ClassVar
from urllib.parse import quote

from bench import use_module_utils

use_module_utils()

import yaml  # noqa: E402
from ansible.module_utils.audit_crosscheck import run_audit_verify  # noqa: E402
from ansible.module_utils.audit_facts import audit_databases  # noqa: E402
from ansible.module_utils.audit_guard import GuardInput, check_request  # noqa: E402
from ansible.module_utils.audit_options import audit_verify_spec  # noqa: E402
from ansible.module_utils.audit_run import AuditSession  # noqa: E402
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator  # noqa: E402
from ansible.module_utils.flag_barrier import run_flag_propagation  # noqa: E402
from ansible.module_utils.flag_options import feature_flag_spec, flag_propagation_spec  # noqa: E402
from ansible.module_utils.flag_switch import run_feature_flag  # noqa: E402
from ansible.module_utils.notify_core import run_notification  # noqa: E402
from ansible.module_utils.notify_options import notification_spec  # noqa: E402
from ansible.module_utils.pg_options import schema_migration_spec, schema_state_spec  # noqa: E402
from ansible.module_utils.verify_options import app_verify_spec  # noqa: E402

from bench import project  # noqa: E402

# alembic, SQLAlchemy, psycopg2 and pglast (schema_tasks) and app_verify are imported after the flag
# is off, when the plan and the verification need them, as Ansible loads those plugins only then.

SECRET_KEYS = (
    "FF_API_KEY",
    "PGPASSWORD",
    "ROLLBACK_DB_DSN",
    "SLACK_WEBHOOK_URL",
    "SMTP_PASSWORD",
    "PAGERDUTY_ROUTING_KEY",
    "ROLLBACK_AUDIT_KEY",
    "ROLLBACK_AUDIT_PG_DSN",
)
STEPS = ("preflight", "flag", "propagation", "schema", "verify", "notify")
HOST = "local-app"  # the inventory host of the application database (inventories/hosts.yml)
# group_vars/all.yml's preset `rehearsal` (local.yml chooses it): the app's metrics and health contract.
CONTRACT = {
    "metric": "http_requests_total",
    "status_label": "status",
    "selector": 'job="{job}",path="/transform"',
    "health_path": "/healthz",
    "health": {"status_codes": [200], "json_key": "status", "json_value": "ok"},
}


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


def inventory_groups(extra_hosts: list[str]) -> dict[str, list[str]]:
    """Every group of inventories/hosts.yml with its hosts (children's included), plus `extra_hosts`
    in `local` (the tenants the bench adds with an extra inventory)."""
    groups: dict[str, list[str]] = {}

    def walk(name: str, body: dict | None) -> list[str]:
        body = body or {}
        hosts = list(body.get("hosts") or {})
        for child, child_body in (body.get("children") or {}).items():
            hosts += walk(child, child_body)
        if name == "local":
            hosts += [h for h in extra_hosts if h not in hosts]
        groups[name] = list(dict.fromkeys(groups.get(name, []) + hosts))
        return hosts

    inventory = yaml.safe_load((project() / "inventories" / "hosts.yml").read_text())
    walk("all", inventory["all"])
    return groups


def validated(spec_of, params: dict) -> dict:
    """`params` checked against a plugin's argument spec, its defaults filled (what the action does)."""
    spec = dict(spec_of())
    argument_spec = spec.pop("argument_spec")
    spec = {k: v for k, v in spec.items() if k != "supports_check_mode"}
    result = ArgumentSpecValidator(argument_spec, **spec).validate(params)
    if result.error_messages:
        raise FloorError(f"{spec_of.__name__}: {result.error_messages[0]}")
    return result.validated_parameters


def ok(result: dict, what: str) -> dict:
    if result.get("failed"):
        raise FloorError(f"{what}: {result.get('msg')}")
    return result


class Floor:
    """One rollback of an environment's databases, step by step; `run()` returns the timings.

    The options are the ones the roles pass: their defaults are read from the project's
    roles/*/defaults/main.yml, so that tuning a role default moves the floor with it.
    """

    DEFAULTS: ClassVar[dict] = {
        "rollback_propagation_timeout": 60.0,
        "rollback_propagation_interval": 0.2,
        "rollback_propagation_cache_ttl": 0.0,
        "rollback_propagation_clock_skew": 1.0,
        "rollback_schema_lock_timeout": 2.0,
        "rollback_schema_lock_attempts": 5,
        "rollback_schema_statement_timeout": 60.0,
        "rollback_schema_parallel": 2,
        "rollback_verify_error_rate_tolerance": 0.01,
        "rollback_verify_error_rate_range": "1m",
        "rollback_verify_error_rate_wait": 120.0,
        "rollback_verify_error_rate_interval": 3.0,
        "rollback_verify_min_requests": 20,
        "rollback_notify_max_wait": 30,
        "rollback_notify_timeout": 10,
        "rollback_notify_mail_from": "emergency-rollback@localhost",
        "rollback_notify_pagerduty_url": "https://events.pagerduty.com",
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
        # The inventory's host names: the application database is local-app, a tenant its own name.
        self.databases = [
            {"name": HOST if i == 0 else name, "dsn": database_dsn(env, name)} for i, name in enumerate(databases)
        ]
        self.reason, self.notify, self.audit_file = reason, notify, audit_file
        d = {**self.DEFAULTS, **{k: v for k, v in role_defaults().items() if k in self.DEFAULTS}}
        if parallel:
            d["rollback_schema_parallel"] = parallel
        if propagation_interval:
            d["rollback_propagation_interval"] = propagation_interval
        self.d = d
        self.steps: dict[str, dict] = {}
        self.facts: dict = {}
        self.session: AuditSession | None = None

    # -- what the group_vars and module_defaults give every task ------------------------------------
    def _flag_params(self, **extra) -> dict:
        env = self.env
        return validated(
            feature_flag_spec,
            {
                "provider": env.get("FF_PROVIDER", "unleash"),
                "api_url": env["FF_API_URL"],
                "flag": env.get("FF_FLAG", "DataTransformationFeature"),
                "project": env.get("FF_PROJECT", "default"),
                "environment": env.get("FF_ENVIRONMENT", "production"),
                "timeout": 5,
                "max_wait": 30,
                **extra,
            },
        )

    def _schema_defaults(self) -> dict:
        migrations = project() / "migrations"
        return {
            "tool": "alembic",
            "script_location": str(migrations),
            "version_locations": [str(migrations / "versions")],
            "require_verified_tls": False,  # local is not production-like
        }

    def _notify(self, event: str, report: dict, **extra) -> dict:
        env, d = self.env, self.d
        params = validated(
            notification_spec,
            {
                "event": event,
                "report": report,
                "mail_to": ["sre-oncall@rehearsal.localhost"],
                "mail_from": d["rollback_notify_mail_from"],
                "smtp_host": env.get("SMTP_HOST", "127.0.0.1"),
                "smtp_port": int(env.get("SMTP_PORT", "52525")),
                "smtp_secure": env.get("SMTP_SECURE", "starttls"),
                "smtp_ca_file": env.get("SMTP_CA_FILE") or None,
                "pagerduty_url": env.get("PAGERDUTY_EVENTS_URL", d["rollback_notify_pagerduty_url"]),
                "max_wait": d["rollback_notify_max_wait"],
                "timeout": d["rollback_notify_timeout"],
                **extra,
            },
        )
        return run_notification(params)

    def report(self) -> dict:
        """What roles/rollback_notify/vars/main.yml tells the notification plugin."""
        f, request = self.facts, (self.session.request if self.session else None) or {}
        return {
            "feature": self.env.get("FF_FLAG", "DataTransformationFeature"),
            "environment": "local",
            "run_id": self.session.run_id if self.session else "",
            "audit_file": self.audit_file or "",
            "audit_status": self.session.status if self.session else "error: no audit",
            "job_url": "",
            "operator": request.get("operator", ""),
            "operator_source": request.get("operator_source", ""),
            "ticket": "",
            "reason": self.reason,
            "started_at": f.get("started_epoch", ""),
            "target_revision": f.get("target", ""),
            "flag_before": f.get("flag_result", {}).get("previous_state", ""),
            "runbook": "RUNBOOK.md, section 4 'When the down migration fails'",
            "runbook_url": "",
            "plan": f.get("plan_result", {}),
            "flag": f.get("flag_result", {}),
            "propagation": f.get("propagation_result", {}),
            "schema": f.get("schema_result", {}),
            "verification": f.get("verify_result", {}),
            "error_rate": "",
            "flag_left": {},
            "state_left": {},
        }

    def _publish(self, data: dict) -> None:
        """What a role's set_stats gives the audit callback."""
        if self.session is not None:
            self.session.facts(json.loads(json.dumps(data, default=str)))

    def _step(self, name: str, work) -> None:
        started_at, began = time.time(), time.perf_counter()
        if self.session is not None:
            step, _ = self.session.enter_step(name)
        work()
        if self.session is not None:
            self.session.steps.count(step, HOST, "ok")
        self.steps[name] = {
            "seconds": round(time.perf_counter() - began, 4),
            "started_at": started_at,
            "ended_at": time.time(),
        }

    # -- the steps -----------------------------------------------------------------------------
    def preflight(self) -> None:
        """The guard's checks and the request record, before anything is contacted."""
        groups = inventory_groups([db["name"] for db in self.databases[1:]])
        given = GuardInput(
            playbook="rollback",
            cliargs={"check": False, "subset": None, "tags": ("all",), "skip_tags": ()},
            extra_vars={"env": "local", "reason": self.reason},
            groups=groups,
            hosts_in_limit=lambda pattern: groups.get(pattern, ["localhost"] if pattern == "localhost" else []),
            environ=self.env,
            project_dir=str(project()),
            inventory_sources=[str(project() / "inventories")],
        )
        verdict = check_request(given)
        problem = verdict.refusal
        if self.session is not None:
            problem = self.session.record_request(verdict)
        if problem:
            raise FloorError(f"refused: {problem}")
        if verdict.request["targets"] != [db["name"] for db in self.databases]:
            raise FloorError(f"the guard's targets {verdict.request['targets']} are not the databases given")

    def flag(self) -> None:
        operator = (self.session.request or {}).get("operator") if self.session else getpass.getuser()
        result = ok(
            run_feature_flag(
                self._flag_params(
                    state="disabled", comment=f"Emergency rollback without ticket by {operator}: {self.reason}"
                )
            ),
            "flag",
        )
        self.facts["flag_result"] = result
        self.facts["flag_confirmed_at"] = result["confirmed_at"]
        keys = ("provider", "previous_state", "state", "changed", "attempts", "change_reference", "confirmed_at")
        self._publish({"flag": {k: result.get(k) for k in keys}})

    def plan(self) -> None:
        """What the playbook does between the flag and the barrier: start event, audit check, state, plan."""
        began = time.perf_counter()
        from ansible.module_utils.schema_tasks import run_schema_migration, run_schema_state  # noqa: PLC0415

        start = self._notify("start", self.report())
        self._publish({"notifications": start.get("deliveries", {}), "warnings": start.get("problems", [])})
        audit = {"ok": True, "msg": "not checked (no audit file)", "aborted_runs": []}
        if self.audit_file:
            run_id = self.session.run_id if self.session else ""
            audit = run_audit_verify(
                validated(audit_verify_spec, {"path": self.audit_file, "current_run_id": run_id, "pg_dsn": ""})
            )
        jobs = [dict(db) for db in self.databases]
        state = ok(
            run_schema_state(
                validated(schema_state_spec, {**self._schema_defaults(), "databases": jobs, "fingerprint": False})
            ),
            "preflight state",
        )
        points = {db["name"]: db.get("rollback_point") for db in state["databases"]}
        revisions = {(p or {}).get("revision") for p in points.values()}
        if None in revisions or len(revisions) != 1:
            raise FloorError(f"no single rollback point to return to: {sorted(map(str, revisions))}")
        target = revisions.pop()
        plan = ok(
            run_schema_migration(
                validated(schema_migration_spec, {**self._schema_defaults(), "databases": jobs, "revision": target}),
                check_mode=True,
            ),
            "plan",
        )
        self.facts.update(points=points, target=target, plan_result=plan)
        self._publish(
            {
                "target_revision": target,
                "audit_chain": audit.get("msg", "not checked"),
                "earlier_aborted_runs": [r["run_id"] for r in audit.get("aborted_runs") or []],
                "accepted_data_statements": plan.get("accepted_data_statements", []),
                "plan": audit_databases(plan["databases"], "plan"),  # the filter rollback_audit_databases('plan')
            }
        )
        self.facts["plan_seconds"] = round(time.perf_counter() - began, 4)

    def propagation(self) -> None:
        """The barrier, with the plan computed alongside (a thread) as the playbook does while it waits."""
        failure: list[BaseException] = []

        def planning() -> None:
            try:
                self.plan()
            except BaseException as exc:
                failure.append(exc)

        planner = threading.Thread(target=planning, name="plan")
        planner.start()
        d, env = self.d, self.env
        prometheus = env.get("PROMETHEUS_URL", "")
        params = {
            "status_urls": [u for u in env.get("APP_STATUS_URLS", "").split(",") if u],
            "fetched_after": self.facts["flag_confirmed_at"],
            "clock_skew": d["rollback_propagation_clock_skew"],
            "expected_path": "legacy",
            "timeout": d["rollback_propagation_timeout"],
            "interval": d["rollback_propagation_interval"],
            "cache_ttl": d["rollback_propagation_cache_ttl"],
        }
        if prometheus:  # group_vars/local.yml: every instance Prometheus scrapes for the application
            params["discovery"] = {
                "source": "prometheus",
                "url": prometheus,
                "job": "transformation-engine",
                "name_label": "app_instance",
            }
        try:
            result = ok(run_flag_propagation(validated(flag_propagation_spec, params)), "propagation")
        finally:
            planner.join()
        if failure:
            raise failure[0]
        self.facts["propagation_result"] = result
        self.facts["propagation_seconds"] = result["elapsed_seconds"]
        self._publish(
            {
                "propagation_seconds": result["elapsed_seconds"],
                "propagation": {
                    "instances": [i["instance"] for i in result["instances"]],
                    "discovered_in": (result.get("discovery") or {}).get("source", ""),
                    "not_configured": [i["url"] for i in result["not_configured"]],
                    "last_confirmed_after_flag_seconds": result.get("last_confirmed_after_flag_seconds"),
                },
            }
        )

    def schema(self) -> None:
        from ansible.module_utils.schema_tasks import run_schema_migration  # noqa: PLC0415

        d = self.d
        plan = self.facts["plan_result"]
        params = validated(
            schema_migration_spec,
            {
                **self._schema_defaults(),
                "databases": [dict(db) for db in self.databases],
                "revision": self.facts["target"],
                "expected_sql_sha256": {db["name"]: db["sql_sha256"] for db in plan["databases"]},
                "lock_timeout": d["rollback_schema_lock_timeout"],
                "lock_attempts": d["rollback_schema_lock_attempts"],
                "statement_timeout": d["rollback_schema_statement_timeout"],
                "archive": True,
                "parallel": d["rollback_schema_parallel"],
                "run_id": self.session.run_id if self.session else None,
            },
        )
        result = ok(run_schema_migration(params), "schema")
        self.facts["schema_result"] = result
        self.facts["databases"] = audit_databases(result["databases"], "revert")  # rollback_audit_databases('revert')
        self._publish({"databases": self.facts["databases"]})

    def verify(self) -> None:
        from ansible.module_utils.app_verify import run_app_verify  # noqa: PLC0415
        from ansible.module_utils.schema_tasks import run_schema_state  # noqa: PLC0415

        d, env = self.d, self.env
        flag = run_feature_flag(self._flag_params(state="disabled"), check_mode=True)
        state = run_schema_state(
            validated(schema_state_spec, {**self._schema_defaults(), "databases": [dict(db) for db in self.databases]})
        )
        points = self.facts["points"]
        baselines = [
            p["error_rate_baseline"] for p in points.values() if (p or {}).get("error_rate_baseline") is not None
        ]
        job = env.get("ROLLBACK_METRICS_JOB", "transformation-engine")
        params = {
            "flag": {"state": flag["previous_state"]} if "previous_state" in flag else {"error": flag.get("msg")},
            "databases": state.get("databases", []),
            "rollback_points": points,
            "target_revision": self.facts["target"],
            "health_urls": [u.rstrip("/") + CONTRACT["health_path"] for u in env.get("APP_URLS", "").split(",") if u],
            "health": CONTRACT["health"],
            "prometheus_url": env.get("PROMETHEUS_URL", ""),
            "metric": CONTRACT["metric"],
            "status_label": CONTRACT["status_label"],
            "selector": CONTRACT["selector"].format(job=job),
            "window": d["rollback_verify_error_rate_range"],
            "min_requests": d["rollback_verify_min_requests"],
            "tolerance": d["rollback_verify_error_rate_tolerance"],
            "wait": d["rollback_verify_error_rate_wait"],
            "interval": d["rollback_verify_error_rate_interval"],
        }
        if "databases" not in state:
            params["databases_error"] = state.get("msg", "no answer")
        if baselines:
            params["baseline"] = str(baselines[0])
        result = run_app_verify(validated(app_verify_spec, params))
        self.facts["verify_result"] = result
        self._publish(
            {
                "verification": {
                    "verdict": result.get("verdict"),
                    "summary": result.get("msg"),
                    "checks": result.get("checks"),
                    "flag": flag.get("previous_state", "unknown"),
                    "revisions": {db["name"]: db.get("revision") for db in state.get("databases", [])},
                    "error_rate": result.get("error_rate"),
                }
            }
        )
        if result.get("verdict") != "verified":
            raise FloorError(f"verification {result.get('verdict')}: {result.get('msg')}")

    def notify_step(self) -> None:
        result = self._notify("succeeded", self.report(), announce=True)
        self.facts["notifications"] = result.get("deliveries", {})
        self._publish({"notifications": result.get("deliveries", {}), "warnings": result.get("problems", [])})

    # -- the run -------------------------------------------------------------------------------
    def run(self, launched_at: float | None = None) -> dict:
        started_at, began = time.time(), time.perf_counter()
        self.facts["started_epoch"] = started_at
        if self.audit_file:
            self.session = AuditSession(
                path=self.audit_file,
                playbook_file="rollback.yml",  # the callback's only_playbooks names what it audits
                check_mode=False,
                ansible_version="none (bench floor)",
                environ=self.env,
            )
            self.session.start()
        try:
            self._step("preflight", self.preflight)
            self._step("flag", self.flag)
            flag_off_at = time.time()
            self._step("propagation", self.propagation)
            self._step("schema", self.schema)
            self._step("verify", self.verify)
            if self.notify:
                self._step("notify", self.notify_step)
        except BaseException as exc:
            if self.session is not None:
                self.session.finish(error=str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            raise
        if self.session is not None:
            problem = self.session.finish(recap={HOST: {"ok": len(self.steps), "failures": 0, "unreachable": 0}})
            if problem:
                raise FloorError(f"the end record was not written: {problem}")
        total = time.perf_counter() - began
        databases = self.facts["databases"]
        return {
            "total_seconds": round(total, 4),
            "started_at": started_at,
            "flag_confirmed_at": self.facts["flag_confirmed_at"],
            "flag_step_ended_at": flag_off_at,
            "propagation_seconds": self.facts["propagation_seconds"],
            "plan_seconds": self.facts.get("plan_seconds"),
            "steps": self.steps,
            "databases": len(self.databases),
            "changed": sum(db["changed"] for db in databases.values()),
            "target": self.facts["target"],
            "flag_before": self.facts["flag_result"]["previous_state"],
            "notifications": self.facts.get("notifications", {}),
            "audit_status": self.session.status if self.session else None,
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__.split("\n")[0])
    parser.add_argument("--db", action="append", required=True, help="a database to revert (repeat)")
    parser.add_argument("--parallel", type=int, help="worker processes of the schema revert (default: the role's)")
    parser.add_argument(
        "--propagation-interval", type=float, help="seconds between two polls of the barrier (default: the role's)"
    )
    parser.add_argument("--reason", default="bench floor")
    parser.add_argument(
        "--no-notify",
        action="store_true",
        help="skip the last notification (Slack, e-mail, PagerDuty's resolve and end event)",
    )
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
    # Exit without a last collection of every object the libraries made (what the action plugins'
    # gc.freeze() spares ansible-playbook: plugins/action/runbook_plugin.py).
    gc.freeze()
    text = json.dumps(result, indent=2)
    if args.json_out:
        with open(args.json_out, "w") as out:
            out.write(text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
