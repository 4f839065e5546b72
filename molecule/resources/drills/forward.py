"""The way forward in a drill: table checksums before the rollback, deploy.yml again under load, and the proof
that what came back is what the rollback archived, identical, and that the application serves it.

Checksums are md5 of the ordered rows, each row rendered by PostgreSQL as text (format('%s|%s|...'),
ENUMs as their label), in one session of the migration role: the same rendering before and after.
"""

from __future__ import annotations

import contextlib
import json
import time

import requests
from psycopg2 import sql as pgsql

from drills import context, results
from drills.context import DrillError, Scenario
from drills.drill import OPERATOR, Request, _check, _Load, _record, _say, _slug, observe
from drills.runner import PlaybookRun, sink_counts, sink_messages
from rehearsal import lockwaits

# One row of transformation_jobs (or of its archive, whose stage is text) as text.
JOB_ROW = (
    "format('%s|%s|%s|%s|%s|%s', {t}.id, {t}.document_id, {t}.stage::text, {t}.pipeline_version, {t}.output::text,"
    " {t}.created_at)"
)
VERSION_ROW = "format('%s|%s', {t}.id, {t}.transform_version)"
SERVED_SAMPLE = 40  # documents read back through each instance


def _one(cur, statement) -> dict:
    cur.execute(statement)
    count, highest, digest = cur.fetchone()
    return {"rows": count, "max_id": highest, "md5": digest}


def _sum(row: str, relation, alias: str, where=None) -> pgsql.Composable:
    statement = pgsql.SQL(
        "SELECT count(*), max({a}.id), md5(string_agg({row}, ',' ORDER BY {a}.id)) FROM {rel} {a}"
    ).format(a=pgsql.Identifier(alias), row=pgsql.SQL(row.format(t=alias)), rel=relation)
    return statement if where is None else statement + pgsql.SQL(" WHERE ") + where


def snapshot(name: str, label: str) -> dict:
    """Checksums of transformation_jobs and documents.transform_version now, kept in the scenario's state."""
    scenario, the_stack = Scenario(name), context.stack()
    with context.connect(the_stack) as conn, conn.cursor() as cur:
        taken = {
            "taken_at": time.time(),
            "jobs": _one(cur, _sum(JOB_ROW, pgsql.Identifier("transformation_jobs"), "t")),
            "versions": _one(cur, _sum(VERSION_ROW, pgsql.Identifier("documents"), "t")),
        }
    snapshots = scenario.state.get("snapshots", {})
    snapshots[label] = taken
    scenario.update(snapshots=snapshots)
    _say(f"{name}: snapshot {label}: {taken['jobs']['rows']} jobs (md5 {taken['jobs']['md5']}), "
         f"{taken['versions']['rows']} documents")  # fmt: skip
    return taken


def compare(the_stack, run_id: str, before: dict | None) -> dict:
    """What the rollback run `run_id` archived against what the tables hold now, by checksum; and every job
    row that existed at the `before` snapshot against the same rows now."""
    manifest = {
        (m["source_table"], m["source_column"]): m for m in context.archive_tables(the_stack) if m["run_id"] == run_id
    }
    jobs = pgsql.Identifier("rollback_archive", manifest[("transformation_jobs", None)]["archive_table"])
    versions = pgsql.Identifier("rollback_archive", manifest[("documents", "transform_version")]["archive_table"])
    with context.connect(the_stack) as conn, conn.cursor() as cur:
        found = {
            "jobs": {
                "archived": _one(cur, _sum(JOB_ROW, jobs, "a")),
                "now": _one(
                    cur,
                    _sum(JOB_ROW, pgsql.Identifier("transformation_jobs"), "t",
                         pgsql.SQL("t.id IN (SELECT id FROM {})").format(jobs)),
                ),
            },
            "versions": {
                "archived": _one(cur, _sum(VERSION_ROW, versions, "a")),
                "now": _one(
                    cur,
                    _sum(VERSION_ROW, pgsql.Identifier("documents"), "t",
                         pgsql.SQL("t.id IN (SELECT id FROM {})").format(versions)),
                ),
            },
        }  # fmt: skip
        if before:
            found["jobs_before_rollback"] = {
                "then": before["jobs"],
                "now": _one(
                    cur,
                    _sum(JOB_ROW, pgsql.Identifier("transformation_jobs"), "t",
                         pgsql.SQL("t.id <= {}").format(pgsql.Literal(before["jobs"]["max_id"] or 0))),
                ),
            }  # fmt: skip
    found["identical"] = all(
        {k: v for k, v in pair["archived" if "archived" in pair else "then"].items() if k != "max_id"}
        == {k: v for k, v in pair["now"].items() if k != "max_id"}
        for key, pair in found.items()
        if key != "identical"
    )
    return found


def served(the_stack, run_id: str, document_ids: list[int]) -> dict:
    """Each document read back through both instances (GET /documents/<id>, the new path) against the archive."""
    manifest = {
        (m["source_table"], m["source_column"]): m for m in context.archive_tables(the_stack) if m["run_id"] == run_id
    }
    jobs = pgsql.Identifier("rollback_archive", manifest[("transformation_jobs", None)]["archive_table"])
    with context.connect(the_stack) as conn, conn.cursor() as cur:
        cur.execute(
            pgsql.SQL(
                "SELECT document_id, id, stage, pipeline_version, output FROM {} WHERE document_id = ANY(%s)"
            ).format(jobs),
            (document_ids,),
        )
        archived = {}
        for document_id, job_id, stage, version, output in cur.fetchall():
            archived.setdefault(document_id, []).append(
                {"id": job_id, "stage": stage, "pipeline_version": version, "output": output}
            )
    checked, mismatches = 0, []
    for document_id in document_ids:
        for instance in ("app-1", "app-2"):
            response = requests.get(f"{the_stack.url(instance)}/documents/{document_id}", timeout=10)
            body = response.json()
            expected = sorted(archived.get(document_id, []), key=lambda j: j["id"])
            ok = (
                response.status_code == 200
                and body.get("path") == "new"
                and body["document"]["transform_version"] == 2
                and body["jobs"] == expected
                and bool(expected)
            )
            checked += 1
            if not ok:
                mismatches.append({"document_id": document_id, "instance": instance, "status": response.status_code})
    return {"reads": checked, "documents": len(document_ids), "mismatches": mismatches}


def _archived_documents(the_stack, run_id: str, limit: int) -> list[int]:
    """Documents whose jobs the run archived: every prepare write, then the load's, up to `limit`."""
    manifest = {
        (m["source_table"], m["source_column"]): m for m in context.archive_tables(the_stack) if m["run_id"] == run_id
    }
    jobs = pgsql.Identifier("rollback_archive", manifest[("transformation_jobs", None)]["archive_table"])
    with context.connect(the_stack) as conn, conn.cursor() as cur:
        cur.execute(
            pgsql.SQL("SELECT DISTINCT document_id FROM {} ORDER BY document_id LIMIT %s").format(jobs), (limit,)
        )
        return [row[0] for row in cur.fetchall()]


def deploy(name: str, label: str, request: Request) -> dict:
    """Run playbooks/deploy.yml under load, as the operator types it; record the run, and what it restored."""
    request.check()
    scenario, the_stack = Scenario(name), context.stack()
    label = scenario.unique_label(label)
    since = sink_counts(the_stack)
    lockwaits.enable(the_stack.cluster)
    waits = lockwaits.LockWaitLog(the_stack.cluster)
    with contextlib.ExitStack() as scope:
        load = scope.enter_context(_Load(the_stack, request.load_rate, scenario.dir / f"load-{_slug(label)}.jsonl"))
        env = context.playbook_env(the_stack, scenario.audit_file)
        args = [
            "-e",
            json.dumps({"env": "local", "reason": f"drill {name} ({label}): the way forward", "operator": OPERATOR}),
        ]
        for item in request.extra_vars:
            args += ["-e", item]
        run = PlaybookRun(label, "playbooks/deploy.yml", args, env, scenario.dir / f"{_slug(label)}.log")
        _say(f"{name}: running playbooks/deploy.yml ({label}) with load at {request.load_rate}/s")
        run.start()
        run.wait(timeout=600)
    record = _record(
        run,
        scenario=scenario,
        request=request,
        load=load,
        sinks=sink_messages(the_stack, since),
        fault={},
        lock_waits=[wait.as_dict() for wait in waits.read()],
    )
    record["kind"] = "deploy"
    record["after"] = observe(the_stack)
    end = record["audit"]["end"] or {}
    restore = ((end.get("databases") or {}).get("local-app") or {}).get("restore") or {}
    for run_id in restore.get("runs", []):
        before = scenario.state.get("snapshots", {}).get("before-rollback")
        record["restore_check"] = compare(the_stack, run_id, before)
        record["served"] = served(the_stack, run_id, _archived_documents(the_stack, run_id, SERVED_SAMPLE))
    scenario.add_runs([record])
    results.write(scenario)
    load_summary = (record.get("load") or {}).get("during_rollback") or {}
    _say(
        f"{label}: exit {record['rc']}, audit outcome {end.get('outcome', 'NO END RECORD')} in {record['seconds']} s; "
        f"{end.get('restored_rows', 0)} archived row(s) restored; load: {load_summary.get('requests')} requests, "
        f"{load_summary.get('failed')} failed"
    )
    if "restore_check" in record:
        check, reads = record["restore_check"], record["served"]
        _say(f"{label}: checksums identical: {check['identical']}; "
             f"served: {reads['reads']} reads, {len(reads['mismatches'])} mismatches")  # fmt: skip
    problem = _check(request.expect, record["rc"])
    if problem:
        raise DrillError(f"{label}: {problem} (log: {record['log']})")
    return record
