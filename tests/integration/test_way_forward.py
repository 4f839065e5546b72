"""The way forward end to end, as AWX runs it (ansible-runner), against the real rehearsal stack.

deploy.yml -> traffic on the new path -> rollback.yml -> deploy.yml again: the archived rows come back
(table checksums), the audit of the second deployment says what was restored, status.yml shows the
archive, archive_purge.yml keeps the retention. Conflicts stop the deployment before the flag is
turned on until the operator accepts them.
"""

from __future__ import annotations

import re
import secrets

import psycopg2
import pytest

pytestmark = pytest.mark.integration

FEATURE, LEGACY = "0002_data_transformation", "0001_legacy"
# md5 of the ordered rows (`%%`: these queries take parameters), rows up to an id.
JOBS = (
    "SELECT count(*), md5(string_agg(format('%%s|%%s|%%s|%%s|%%s|%%s', id, document_id, stage, pipeline_version,"
    " output, created_at), ',' ORDER BY id)) FROM transformation_jobs WHERE id <= %s"
)
VERSIONS = (
    "SELECT md5(string_agg(format('%%s|%%s', id, transform_version), ',' ORDER BY id)) FROM documents WHERE id <= %s"
)


def query(stack, sql: str, params=None) -> list:
    conn = psycopg2.connect(stack.dsn())
    try:
        with conn, conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


def revision(stack) -> str:
    return query(stack, "SELECT version_num FROM alembic_version")[0][0]


def flag_enabled(stack) -> bool:
    return stack.unleash.flag_enabled("DataTransformationFeature", "default", "production")


def end_record(run) -> dict:
    ends = [r for r in run.audit_records() if r.get("kind") == "end"]
    assert ends, f"no audit end record\n{run}"
    return ends[-1]


def deploy(playbook, stack, cmdline: str | None = None, **extravars):
    return playbook(
        "playbooks/deploy.yml",
        extravars={"env": "local", "reason": "release 2.4", "operator": "dana", **extravars},
        envvars=stack.env(),
        cmdline=cmdline,
    )


def debug_lines(run, task: str) -> list[str]:
    """The `msg` of a debug task, from the event stream."""
    for event in run.events:
        data = event.get("event_data", {})
        if event["event"] == "runner_on_ok" and data.get("task") == task:
            msg = data["res"]["msg"]
            return msg if isinstance(msg, list) else [msg]
    raise AssertionError(f"no output of task {task!r}\n{run}")


@pytest.fixture
def rolled_back(stack_baseline, playbook):
    """deploy.yml, six documents through the new path, rollback.yml: (stack, checksums before, the archive's run id)."""
    stack = stack_baseline
    query(stack, "DROP SCHEMA IF EXISTS rollback_archive CASCADE")
    first = deploy(playbook, stack)
    assert first.rc == 0, first
    suffix = secrets.token_hex(4)
    for number in range(6):
        response = stack.transform(("app-1", "app-2")[number % 2], external_ref=f"forward-{number}-{suffix}")
        assert response.status_code == 200 and response.json()["path"] == "new", response.text
    highest = query(stack, "SELECT (SELECT max(id) FROM transformation_jobs), (SELECT max(id) FROM documents)")[0]
    before = {
        "upto": highest,
        "jobs": query(stack, JOBS, (highest[0],))[0],
        "versions": query(stack, VERSIONS, (highest[1],))[0][0],
    }
    # Steady traffic during the rollback, as in production: the verification needs real requests to judge.
    traffic = stack.load(rate=10).start()
    try:
        rollback = playbook(
            "rollback.yml", extravars={"env": "local", "reason": "go/no-go failed: 5xx above 2%"}, envvars=stack.env()
        )
    finally:
        traffic.stop()
    assert rollback.rc == 0, rollback
    assert revision(stack) == LEGACY and before["jobs"][0] >= 6
    run_id = end_record(rollback)["run_id"]
    before["archived_rows"] = query(
        stack, "SELECT sum(row_count)::int FROM rollback_archive.manifest WHERE run_id = %s", (run_id,)
    )[0][0]
    before["refs"] = f"forward-%-{suffix}"
    return stack, before, run_id


def test_deploying_again_restores_every_row_shows_it_and_audits_it(rolled_back, playbook):
    stack, before, run_id = rolled_back

    run = deploy(playbook, stack)

    assert run.rc == 0, run
    assert revision(stack) == FEATURE and flag_enabled(stack)
    assert query(stack, JOBS, (before["upto"][0],))[0] == before["jobs"], "every job row back, identical"
    assert query(stack, VERSIONS, (before["upto"][1],))[0][0] == before["versions"]
    rows = before["archived_rows"]
    end = end_record(run)
    assert end["outcome"] == "succeeded" and end["playbook"] == "deploy.yml"
    assert (end["operator"], end["operator_source"], end["environment"]) == ("dana", "extra_var", "local")
    assert end["restored_rows"] == rows
    database = end["databases"]["local-app"]
    assert (database["revision_before"], database["revision_after"], database["changed"]) == (LEGACY, FEATURE, True)
    assert database["restore"]["runs"] == [run_id] and database["restore"]["conflict_rows"] == 0
    assert end["restore_plan"]["local-app"]["restore"]["rows_restored"] == rows
    assert any(f"restore {rows} archived row(s) of rollback run {run_id}" in line for line in
               debug_lines(run, "Show what the upgrade would restore"))  # fmt: skip
    # The manifest says who restored it and in which run.
    assert query(
        stack, "SELECT DISTINCT restore_run_id, restored_by FROM rollback_archive.manifest WHERE run_id = %s", (run_id,)
    ) == [(end["run_id"], "dana (extra_var)")]

    status = playbook("playbooks/status.yml", extravars={"env": "local"}, envvars=stack.env())
    assert status.rc == 0, status
    [line] = [
        line
        for line in debug_lines(
            status, 'Show the rollback archives (rows rollbacks removed; RUNBOOK.md, "The way forward")'
        )
        if run_id in line
    ]
    assert re.fullmatch(
        rf"local-app: archive of rollback run {re.escape(run_id)}, [0-9.]+ day\(s\) old, {rows} row\(s\) in 2 "
        r"table\(s\)/column\(s\) \(public\.documents\.transform_version, public\.transformation_jobs\), restored \S+ "
        rf"by run {re.escape(end['run_id'])}",
        line,
    ), line

    again = deploy(playbook, stack)
    assert again.rc == 0, again
    assert again.changed_tasks() == [], "re-running deploy changes nothing"
    assert end_record(again)["restored_rows"] == 0
    assert query(stack, JOBS, (before["upto"][0],))[0] == before["jobs"]


def test_check_mode_shows_what_would_be_restored_and_changes_nothing(rolled_back, playbook):
    stack, before, run_id = rolled_back
    run = deploy(playbook, stack, cmdline="--check")
    assert run.rc == 0, run
    [plan] = debug_lines(run, "Show what the upgrade would restore")
    rows = before["archived_rows"]
    assert plan == (
        f"local-app: Would upgrade {LEGACY} -> {FEATURE} (1 step(s)); would restore {rows} archived row(s) of "
        f"rollback run {run_id} (2 table(s)/column(s))."
    )
    assert revision(stack) == LEGACY and not flag_enabled(stack)
    assert query(stack, "SELECT count(*) FROM rollback_archive.manifest") == [(2,)]
    assert not query(
        stack, "SELECT 1 FROM information_schema.columns WHERE table_name = 'manifest' AND column_name = 'restored_at'"
    )


def test_conflicts_stop_the_deployment_before_the_flag_until_the_operator_accepts_them(rolled_back, playbook):
    stack, before, run_id = rolled_back
    # During the rollback window a document with a job in the archive is deleted (a customer's erasure).
    [(document,)] = query(stack, "SELECT min(id) FROM documents WHERE external_ref LIKE %s", (before["refs"],))
    query(stack, "DELETE FROM transformation_results WHERE document_id = %s", (document,))
    query(stack, "DELETE FROM documents WHERE id = %s", (document,))

    refused = deploy(playbook, stack)

    assert refused.rc != 0
    assert revision(stack) == LEGACY and not flag_enabled(stack), "the flag stays off, the database as it was"
    assert f"id={document}" in refused.stdout and "missing_row" in refused.stdout
    assert f"-e deploy_accept_restore_conflicts={run_id}" in refused.stdout
    assert end_record(refused)["outcome"].startswith("failed")
    assert "Turn the flag on" not in [e["event_data"].get("task") for e in refused.events]

    unknown = deploy(playbook, stack, deploy_accept_restore_conflicts="rb-typo")
    assert unknown.rc != 0 and "names rollback run rb-typo" in unknown.stdout
    assert revision(stack) == LEGACY and not flag_enabled(stack)

    accepted = deploy(playbook, stack, deploy_accept_restore_conflicts=run_id)

    assert accepted.rc == 0, accepted
    assert revision(stack) == FEATURE and flag_enabled(stack)
    end = end_record(accepted)
    assert end["restore_accepted_conflicts"] == [run_id]
    assert end["databases"]["local-app"]["restore"]["accepted"] == [run_id]
    assert end["databases"]["local-app"]["restore"]["conflict_rows"] == 2  # the job and the column value
    outcomes = query(stack, "SELECT restore_outcome FROM rollback_archive.manifest WHERE run_id = %s", (run_id,))
    assert all("accepted" in outcome for (outcome,) in outcomes), outcomes


def test_the_purge_keeps_the_retention_and_is_audited(rolled_back, playbook):
    stack, _before, run_id = rolled_back

    def purge(cmdline: str | None = None, **extravars):
        return playbook(
            "playbooks/archive_purge.yml",
            extravars={"env": "local", "reason": "archive retention", "operator": "erin", **extravars},
            envvars=stack.env(),
            cmdline=cmdline,
        )

    young = purge(archive_purge_run_ids=run_id)
    assert young.rc != 0
    assert f"the archive of rollback run {run_id} is not restored" in young.stdout
    assert query(stack, "SELECT count(*) FROM pg_tables WHERE schemaname = 'rollback_archive'") == [(3,)]
    refused_record = end_record(young)
    assert refused_record["playbook"] == "archive_purge.yml" and refused_record["outcome"].startswith("failed")
    assert refused_record["purge_run_ids"] == [run_id] and refused_record["operator"] == "erin"

    by_age = purge()
    assert by_age.rc == 0, by_age
    assert end_record(by_age)["purge"]["msg"] == "Purged 0 archive(s), 0 row(s) (retention 30 days)."

    assert deploy(playbook, stack).rc == 0
    plan = purge("--check", archive_purge_run_ids=run_id)
    assert plan.rc == 0, plan
    assert query(stack, "SELECT count(*) FROM pg_tables WHERE schemaname = 'rollback_archive'") == [(3,)]

    done = purge("-vvv", archive_purge_run_ids=run_id)

    assert done.rc == 0, done
    assert "task path:" in done.stdout and "postgresql://" not in done.everything(), "no DSN at any verbosity"
    assert query(stack, "SELECT count(*) FROM pg_tables WHERE schemaname = 'rollback_archive'") == [(1,)]
    record = end_record(done)
    purged = record["purge"]["databases"]["local-app"]["purged"]
    assert {(p["run_id"], p["restored"]) for p in purged} == {(run_id, True)}
    assert record["outcome"] == "succeeded" and record["purge_retention_days"] == 30
    assert query(
        stack, "SELECT DISTINCT purged_by, purge_run_id FROM rollback_archive.manifest WHERE run_id = %s", (run_id,)
    ) == [("erin (extra_var)", record["run_id"])]
