"""The drills: prepare a scenario (deploy the feature, write through the new path), then roll back under load
with a fault in the way, and record everything the verifier and the benchmark need."""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from drills import context, results, stale
from drills.context import DrillError, Scenario
from drills.faults import FlagFaultProxy, LockBlocker
from drills.runner import (
    PlaybookRun,
    audit_of,
    run_playbook,
    sink_counts,
    sink_messages,
    slowest,
    step_window,
    window_summary,
)
from rehearsal import lockwaits

OPERATOR = "drill-operator"
LOAD_LEAD_IN = 1.0  # seconds of load before and after a rollback, so the window is fully covered
EXPECTATIONS = ("success", "failure", "killed", "any")
BLOCKERS = ("hold", "release-when-queued")


def _say(text: str) -> None:
    print(f"drill: {text}", flush=True)


# -- prepare -------------------------------------------------------------------------------------
def reset_database(the_stack) -> None:
    """Back to the baseline: flag off, instances on legacy, 0001_legacy, no archive left by another drill.

    The test-only revision 0003_faulty_downgrade cannot be downgraded (its downgrade fails by design), so
    what it added is removed by hand and the database is stamped back at 0002 before the usual reset.
    """
    if context.revision(the_stack) == context.FAULTY_REVISION:
        the_stack.set_flag(False)
        the_stack.wait_for_path("legacy")
        _remove_faulty_revision(the_stack)
    the_stack.reset()
    with context.connect(the_stack) as conn, conn.cursor() as cur:
        cur.execute("DROP SCHEMA IF EXISTS rollback_archive CASCADE")


def _remove_faulty_revision(the_stack) -> None:
    """Take away by hand what the test-only 0003_faulty_downgrade added, and stamp the database at 0002."""
    with context.connect(the_stack) as conn, conn.cursor() as cur:
        cur.execute("BEGIN")
        cur.execute("DROP TABLE transformation_audit")
        cur.execute("ALTER TABLE transformation_jobs DROP COLUMN retries")
        cur.execute("UPDATE alembic_version SET version_num = '0002_data_transformation'")
        cur.execute("COMMIT")


def dba_fix(name: str) -> dict:
    """What the DBA does after a failed down migration (RUNBOOK.md section 4), so that a re-run can finish.

    First records the state the failed run left (what the verifier checks of it), then removes the
    faulty revision's additions by hand and stamps the database at 0002_data_transformation.
    """
    scenario = Scenario(name)
    the_stack = context.stack()
    if context.revision(the_stack) != context.FAULTY_REVISION:
        raise DrillError(
            f"the database is at {context.revision(the_stack)}, not {context.FAULTY_REVISION}: nothing to fix"
        )
    left = {
        "revision": context.revision(the_stack),
        "fingerprint": context.fingerprint(the_stack),
        "audit_rows": context.query(the_stack, "SELECT count(*) FROM transformation_audit")[0][0],
        "jobs_with_retries": context.query(the_stack, "SELECT count(*) FROM transformation_jobs WHERE retries = 1")[0][
            0
        ],
        "archive_tables": context.archive_tables(the_stack),
        "manifest_exists": context.table_exists(the_stack, "rollback_archive.manifest"),
        "flag_enabled": the_stack.unleash.flag_enabled(context.FLAG, "default", "production"),
    }
    _remove_faulty_revision(the_stack)
    scenario.update(after_failure=left, dba_fix={"at": time.time(), "revision": context.revision(the_stack)})
    _say(f"{name}: the DBA removed {context.FAULTY_REVISION} by hand; the database is at {context.revision(the_stack)}")
    return left


def prepare(name: str, writes: int = 8, faulty: bool = False) -> dict:
    """Reset the shared stack, run deploy.yml (rollback point, upgrade, flag on, new path) and write rows
    through the new path; with `faulty`, also upgrade to the test-only 0003 whose downgrade fails halfway."""
    began = time.time()
    scenario = Scenario(name)
    the_stack = context.stack()
    _say(f"{name}: resetting the shared stack to the baseline (flag off, legacy path, 0001_legacy)")
    stale.stop(the_stack, quiet=True)  # the stale-instance drill's third instance, if a run left it behind
    reset_database(the_stack)
    scenario.clean()
    baseline = context.fingerprint(the_stack)

    _say(f"{name}: deploying the feature with playbooks/deploy.yml")
    env = context.playbook_env(the_stack, scenario.dir / "deploy-audit.jsonl")
    deploy = run_playbook(
        "deploy",
        "playbooks/deploy.yml",
        ["-e", json.dumps({"env": "local", "reason": f"drill {name}: cut over to the new path", "operator": OPERATOR})],
        env,
        scenario.dir / "deploy.log",
    )
    if deploy.rc != 0:
        raise DrillError(f"deploy.yml failed (rc {deploy.rc}): see {deploy.log}")

    written = []
    for number in range(writes):
        instance = ("app-1", "app-2")[number % 2]
        ref = f"drill-{name}-{began:.0f}-{number}"
        response = the_stack.transform(instance, external_ref=ref, payload={"drill": name, "n": number})
        body = response.json()
        if response.status_code != 200 or body.get("path") != "new":
            raise DrillError(f"{instance} did not write through the new path: {response.status_code} {body}")
        written.append({"instance": instance, "external_ref": ref, "document_id": body["document_id"]})
    _say(f"{name}: {writes} documents written through the new path")

    state = {
        "scenario": name,
        "prepared_at": began,
        "deploy": {"rc": deploy.rc, "seconds": round(deploy.ended - deploy.started, 2), "log": str(deploy.log)},
        "new_path_writes": written,
        "fingerprints": {"baseline": baseline, "deployed": context.fingerprint(the_stack)},
        "revision_deployed": context.revision(the_stack),
        "faulty": faulty,
        "runs": [],
    }
    if faulty:
        state.update(_add_faulty_revision(the_stack))
    state["prepare_seconds"] = round(time.time() - began, 2)
    scenario.save(state)
    results.write(scenario)
    _say(f"{name}: prepared in {state['prepare_seconds']} s (revision {context.revision(the_stack)})")
    return state


def _add_faulty_revision(the_stack) -> dict:
    """Upgrade to the test-only 0003 (tests/data/faulty_versions) and give its table rows to lose."""
    done = subprocess.run(
        [str(context.VENV_BIN / "alembic"), "-c", str(context.FAULTY_INI), "upgrade", context.FAULTY_REVISION],
        cwd=context.ROOT,
        env={**context.playbook_env(the_stack, Path("/dev/null")), "ROLLBACK_DB_DSN": the_stack.dsn()},
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise DrillError(f"alembic upgrade {context.FAULTY_REVISION} failed: {done.stderr.strip().splitlines()[-1:]}")
    with context.connect(the_stack) as conn, conn.cursor() as cur:
        cur.execute(
            """INSERT INTO transformation_audit (job_id, detail)
               SELECT id, jsonb_build_object('drill', 'failed-downgrade', 'job', id) FROM transformation_jobs"""
        )
        cur.execute("UPDATE transformation_jobs SET retries = 1")
        cur.execute("SELECT count(*) FROM transformation_audit")
        audit_rows = cur.fetchone()[0]
    _say(f"upgraded to {context.FAULTY_REVISION} (test-only), {audit_rows} rows in transformation_audit")
    return {"fingerprints_faulty": context.fingerprint(the_stack), "faulty_rows": audit_rows}


# -- rollbacks -----------------------------------------------------------------------------------
def _rollback_args(name: str, label: str, extra_vars: list[str], faulty: bool) -> list[str]:
    request = {
        "env": "local",
        "reason": f"drill {name} ({label}): go/no-go failed",
        "ticket": f"DRILL-{name}",
        "operator": OPERATOR,
    }
    if faulty:
        request["rollback_migrations_version_locations"] = context.VERSION_LOCATIONS
    args = ["-e", json.dumps(request)]
    for item in extra_vars:
        args += ["-e", item]
    return args


def _check(expect: str, rc: int) -> str | None:
    if expect == "success" and rc != 0:
        return f"expected the rollback to succeed, it exited {rc}"
    if expect == "failure" and rc <= 0:
        return f"expected the rollback to fail with a non-zero exit code, it exited {rc}"
    if expect == "killed" and rc != -9:
        return f"expected the controller to die of SIGKILL, it exited {rc}"
    return None


_ADVISORY = "l.locktype = 'advisory' AND l.classid = 1650483701 AND l.objid = 3462870558"


def _wait_for_revert_in_progress(the_stack, run: PlaybookRun, timeout: float = 180) -> dict:
    """Block until the flag is off in Unleash and a schema revert, holding the runbook's advisory lock, waits
    for a table lock inside its downgrade transaction (the middle of the revert)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not run.running():
            raise DrillError(f"the rollback ended (rc {run.process.returncode}) before its schema revert started")
        if not the_stack.unleash.flag_enabled(context.FLAG, "default", "production"):
            reverting = context.query(
                the_stack,
                f"""SELECT a.pid, a.application_name, a.wait_event_type, a.state, a.xact_start IS NOT NULL
                    FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
                    WHERE {_ADVISORY} AND l.granted AND a.wait_event_type = 'Lock'""",  # noqa: S608 - constants
            )
            if reverting:
                pid, application_name, wait, session_state, in_transaction = reverting[0]
                return {
                    "flag_enabled": False,
                    "revert_session": {
                        "pid": pid,
                        "application_name": application_name,
                        "wait_event_type": wait,
                        "state": session_state,
                        "in_transaction": in_transaction,
                    },
                }
        time.sleep(0.1)
    raise DrillError(f"the schema revert did not start waiting for a lock within {timeout:.0f} s")


def _after_kill(the_stack, run: PlaybookRun) -> dict:
    """What the kill left: processes of the killed tree, and when the database released the advisory lock."""
    lock_released_after = None
    began = time.monotonic()
    while time.monotonic() - began < 15:
        held = context.query(the_stack, f"SELECT count(*) FROM pg_locks l WHERE {_ADVISORY}")[0][0]  # noqa: S608
        if not held:
            lock_released_after = round(time.monotonic() - began, 2)
            break
        time.sleep(0.1)
    return {"processes_left": run.tree_alive(), "advisory_lock_released_after": lock_released_after}


def observe(the_stack) -> dict:
    """The state a run leaves behind: revision, schema fingerprint, archive, flag, the instances' paths."""
    return {
        "revision": context.revision(the_stack),
        "fingerprint": context.fingerprint(the_stack),
        "archive_tables": context.archive_tables(the_stack),
        "flag_enabled": the_stack.unleash.flag_enabled(context.FLAG, "default", "production"),
        "paths": [status["path"] for status in the_stack.app_statuses()],
    }


def _record(
    run: PlaybookRun, *, scenario: Scenario, request: Request, load: _Load, sinks: dict, fault: dict, lock_waits: list
) -> dict:
    audit = audit_of(scenario.audit_file, run.pid)
    samples, rate = load.samples, request.load_rate
    end = audit["end"]
    record = {
        "label": run.label,
        "expect": request.expect,
        "rc": run.rc,
        "pid": run.pid,
        "started": run.started,
        "ended": run.ended,
        "seconds": round(run.ended - run.started, 2),
        "log": str(run.log),
        "recap": run.recap(),
        "changed": sum(host["changed"] for host in run.recap().values()),
        "audit": audit,
        "sinks": sinks,
        "fault": fault,
        # Every lock wait longer than deadlock_timeout while the run(s) ran, as PostgreSQL measured it.
        "lock_waits": lock_waits,
    }
    if samples is not None:
        record["load"] = {
            "during_rollback": window_summary(samples, run.started, run.ended, rate),
            "slowest_during_rollback": slowest(samples, run.started, run.ended),
            "whole_series": load.generator.summary(),
            "series": str(load.generator.out),
        }
        schema = step_window(end, "schema")
        if schema:
            record["load"]["during_schema_step"] = window_summary(samples, *schema, rate)
            record["load"]["slowest_during_schema_step"] = slowest(samples, *schema)
    return record


def _print_run(record: dict) -> None:
    end = record["audit"]["end"] or {}
    steps = ", ".join(f"{s['name']} {s['outcome']} {s['duration_seconds']:.1f}s" for s in end.get("steps", []))
    _say(
        f"{record['label']}: exit {record['rc']}, audit outcome {end.get('outcome', 'NO END RECORD')}"
        f" in {record['seconds']} s; steps: {steps or '-'}"
    )
    load = record.get("load", {}).get("during_rollback")
    if load:
        _say(
            f"{record['label']}: load during the rollback: {load['requests']} requests, {load['failed']} failed,"
            f" p50 {load['p50_ms']} ms, p99 {load['p99_ms']} ms, max {load['max_ms']} ms, by path {load['by_path']}"
        )


@dataclass
class Request:
    """What one drill run asks for (see rollback())."""

    expect: str = "success"
    load_rate: float = 30.0
    extra_vars: list[str] = field(default_factory=list)
    flag_fault: int | None = None
    blocker: str | None = None
    kill: bool = False
    parallel: int = 1

    def check(self) -> None:
        if self.expect not in EXPECTATIONS:
            raise DrillError(f"expect must be one of {', '.join(EXPECTATIONS)}")
        if self.blocker and self.blocker not in BLOCKERS and not self.blocker.startswith("release-after="):
            raise DrillError("blocker is hold, release-when-queued or release-after=SECONDS")
        if self.parallel < 1 or (self.kill and self.parallel != 1):
            raise DrillError("parallel is 1 or more, and a kill drill runs one rollback")


class _Load:
    """The load generator for the length of a `with` block, plus a lead-in and lead-out of steady traffic."""

    def __init__(self, the_stack, rate: float, out: Path):
        self.generator = the_stack.load(rate, out=out) if rate > 0 else None
        self.samples = None

    def __enter__(self) -> _Load:
        if self.generator:
            self.generator.start()
            time.sleep(LOAD_LEAD_IN)
        return self

    def __exit__(self, *exc) -> None:
        if self.generator:
            time.sleep(LOAD_LEAD_IN)
            self.generator.stop()
            self.samples = list(self.generator.samples)


def _reap(runs: list[PlaybookRun]) -> None:
    for run in runs:
        if run.running():
            run.kill_group()
            run.wait()


def _drive(the_stack, runs: list[PlaybookRun], request: Request, fault: dict) -> None:
    """Start every run at once; with `kill`, SIGKILL the first once its schema revert holds the advisory lock."""
    for run in runs:
        run.start()
    if request.kill:
        fault["kill"] = _wait_for_revert_in_progress(the_stack, runs[0])
        fault["kill"]["killed"] = runs[0].kill_tree()
        fault["kill"]["killed_at"] = time.time()
        _say(
            f"SIGKILL sent to the controller {runs[0].pid} "
            f"and the {len(fault['kill']['killed']) - 1} processes it started"
        )
    for run in runs:
        run.wait(timeout=600)
    if request.kill:
        fault["kill"]["after"] = _after_kill(the_stack, runs[0])


def rollback(name: str, label: str, request: Request) -> list[dict]:
    """Run rollback.yml (`request.parallel` copies at once) under load, with the fault asked for; record each run.

    blocker: None, "hold" (held until the rollback ends) or "release-after=<s>" (released <s> seconds
    after the rollback first waits for it). kill: SIGKILL the controller's process group once the flag
    is off and the schema revert holds the advisory lock. flag_fault: the flag API answers every write so.
    """
    request.check()
    scenario = Scenario(name)
    the_stack = context.stack()
    label = scenario.unique_label(label)
    since = sink_counts(the_stack)
    fault: dict = {}
    overrides: dict[str, str] = {}
    labels = [label] if request.parallel == 1 else [f"{label}-{chr(65 + n)}" for n in range(request.parallel)]
    lockwaits.enable(the_stack.cluster)
    waits = lockwaits.LockWaitLog(the_stack.cluster)
    with contextlib.ExitStack() as scope:
        load = scope.enter_context(_Load(the_stack, request.load_rate, scenario.dir / f"load-{_slug(label)}.jsonl"))
        proxy = None
        if request.flag_fault:
            proxy = scope.enter_context(FlagFaultProxy(the_stack.env()["FF_API_URL"], request.flag_fault))
            overrides["FF_API_URL"] = proxy.url
        blocker = None
        if request.blocker:
            release_after = float(request.blocker.split("=", 1)[1]) if "=" in request.blocker else None
            blocker = LockBlocker(the_stack.dsn(role="app_rw"), release_after, request.blocker == "release-when-queued")
            scope.enter_context(blocker)
        env = context.playbook_env(the_stack, scenario.audit_file, overrides)
        args = _rollback_args(name, label, request.extra_vars, scenario.state.get("faulty", False))
        runs = [
            PlaybookRun(lab, "rollback.yml", args, env, scenario.dir / f"{_slug(lab)}.log", _prefix(lab, request))
            for lab in labels
        ]
        scope.callback(_reap, runs)
        _say(f"{name}: running rollback.yml ({', '.join(labels)}) with load at {request.load_rate}/s")
        _drive(the_stack, runs, request, fault)
    after = observe(the_stack)
    if blocker:
        fault["blocker"] = blocker.report()
    if proxy:
        fault["flag_api"] = {
            "status": request.flag_fault,
            "writes_answered": proxy.hits,
            "passed_through": proxy.passed,
        }

    sinks = sink_messages(the_stack, since)
    lock_waits = [wait.as_dict() for wait in waits.read()]
    records = [
        _record(run, scenario=scenario, request=request, load=load, sinks=sinks, fault=fault, lock_waits=lock_waits)
        for run in runs
    ]
    for record in records:
        record["after"] = after
    scenario.add_runs(records)
    results.write(scenario)
    problems = []
    for record in records:
        _print_run(record)
        if request.expect != "any" and (problem := _check(request.expect, record["rc"])):
            problems.append(f"{record['label']}: {problem} (log: {record['log']})")
    if problems:
        raise DrillError("; ".join(problems))
    return records


def _slug(label: str) -> str:
    return label.replace("#", "-")


def _prefix(label: str, request: Request) -> str:
    return "" if request.parallel == 1 else f"[{label[-1]}] "
