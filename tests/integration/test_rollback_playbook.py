"""rollback.yml end to end, as AWX runs it (ansible-runner), against the real rehearsal stack.

Each test starts from the stack's baseline (flag off, instances on legacy, database at 0001_legacy)
and, where it needs one, a real deployment by deploy.yml. The stack's own secrets (the Unleash
admin token, the migrator's password, the webhook path) serve as canaries: none may appear in
stdout, the event stream, the audit file or the notifications.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import psycopg2
import pytest
from alembic import command
from alembic.config import Config
from ansible.module_utils.schema_fingerprint import fingerprint

from rehearsal.postgres import free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
FEATURE, LEGACY = "0002_data_transformation", "0001_legacy"
FAULTY_DIR = ROOT / "tests" / "data" / "faulty_versions"


# -- helpers ---------------------------------------------------------------------------------------
def query(stack, sql: str, params=None):
    conn = psycopg2.connect(stack.dsn())
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall()
    finally:
        conn.close()


def revision(stack) -> str:
    return query(stack, "SELECT version_num FROM alembic_version")[0][0]


def migrate_faulty(stack, target: str, direction: str = "upgrade") -> None:
    """Move the app database with the test-only revisions' alembic.ini (migrations + faulty_versions)."""
    config = Config(str(FAULTY_DIR / "alembic.ini"))
    config.set_main_option("sqlalchemy.url", stack.dsn())
    getattr(command, direction)(config, target)


def schema_fingerprint(stack) -> str:
    conn = psycopg2.connect(stack.dsn())
    try:
        with conn.cursor() as cur:
            return fingerprint(cur)
    finally:
        conn.close()


def archive_tables(stack) -> list:
    return query(stack, "SELECT tablename FROM pg_tables WHERE schemaname = 'rollback_archive' ORDER BY 1")


def undo_faulty(stack) -> None:
    """Take the test-only revision 0003 away by hand: its downgrade always fails, by design."""
    conn = psycopg2.connect(stack.dsn())
    try:
        with conn, conn.cursor() as cur:
            cur.execute("DROP TABLE IF EXISTS transformation_audit")
            cur.execute("ALTER TABLE transformation_jobs DROP COLUMN IF EXISTS retries")
            cur.execute("UPDATE alembic_version SET version_num = %s", (FEATURE,))
    finally:
        conn.close()


def flag_enabled(stack) -> bool:
    return stack.unleash.flag_enabled("DataTransformationFeature", "default", "production")


def secrets_of(stack) -> list[str]:
    env = stack.env()
    return [
        env["FF_API_KEY"],
        env["PGPASSWORD"],
        env["SLACK_WEBHOOK_URL"].rsplit("/", 3)[-1],
        env["SMTP_PASSWORD"],
        env["PAGERDUTY_ROUTING_KEY"],
    ]


def assert_no_secret(stack, run) -> None:
    blob = run.everything() + json.dumps(stack.mails()) + json.dumps(stack.webhook_posts())
    blob += json.dumps(stack.pagerduty_events())
    for secret in secrets_of(stack):
        assert secret not in blob, "a secret of the stack reached the output, the audit or a notification"


def end_record(run) -> dict:
    ends = [r for r in run.audit_records() if r.get("kind") == "end"]
    assert ends, f"no audit end record\n{run}"
    return ends[-1]


@pytest.fixture
def deployed(stack_baseline, playbook):
    """The stack with DataTransformationFeature deployed by deploy.yml, and steady traffic (10 req/s) on both
    instances for the whole test, as in production: the verification judges the 5xx ratio on real requests
    and calls a rollback without traffic inconclusive."""
    stack = stack_baseline
    run = playbook("playbooks/deploy.yml", extravars={"env": "local", "reason": "release 2.3"}, envvars=stack.env())
    assert run.rc == 0, run
    assert revision(stack) == FEATURE
    for i in range(5):
        assert stack.transform("app-1", external_ref=f"deployed-{i}").json()["path"] == "new"
    stack.jobs_before_traffic = query(stack, "SELECT count(*) FROM transformation_jobs")[0][0]
    stack.traffic = stack.load(rate=10).start()
    yield stack
    stack.traffic.stop()


def new_path_writes(stack) -> int:
    """Jobs the new path wrote: before the traffic, and each successful new-path request of the traffic."""
    traffic = [s for s in list(stack.traffic.samples) if s.path == "new" and 200 <= s.status < 300]
    return stack.jobs_before_traffic + len(traffic)


def rollback(playbook, stack, envvars=None, **extravars):
    extravars = {"env": "local", "reason": "go/no-go failed: 5xx above 2%", **extravars}
    return playbook("rollback.yml", extravars=extravars, envvars={**stack.env(), **(envvars or {})})


# -- the happy path ----------------------------------------------------------------------------------
def test_rollback_reverts_verifies_notifies_and_audits(deployed, playbook):
    stack = deployed
    assert stack.jobs_before_traffic >= 5
    fingerprint_before = query(
        stack, "SELECT fingerprint FROM runbook.rollback_points ORDER BY recorded_at DESC LIMIT 1"
    )[0][0]
    mails_before, posts_before = len(stack.mails()), len(stack.webhook_posts(accepted_only=True))

    run = rollback(
        playbook,
        stack,
        awx_user_name="alice",
        awx_job_id="4242",
        awx_job_template_name="Rollback-DataTransformation-Feature",
    )

    assert run.rc == 0, run
    assert not flag_enabled(stack)
    assert {s["path"] for s in stack.app_statuses()} == {"legacy"}
    assert revision(stack) == LEGACY
    assert stack.transform("app-2", external_ref="after-rollback").json()["path"] == "legacy"
    # Nothing the feature wrote is lost: the jobs are in the archive.
    # This run's archive: the newest of the manifest (other tests of the session archived theirs too).
    archived = query(
        stack,
        "SELECT archive_table FROM rollback_archive.manifest WHERE source_table = 'transformation_jobs' "
        "AND source_column IS NULL ORDER BY archived_at DESC LIMIT 1",
    )
    assert archived, "the feature's rows were not archived"
    archived_rows = query(stack, f'SELECT count(*) FROM rollback_archive."{archived[0][0]}"')[0][0]  # noqa: S608
    assert archived_rows == new_path_writes(stack)

    record = end_record(run)
    assert record["outcome"] == "succeeded"
    verification = record["verification"]
    assert verification["verdict"] == "verified" and verification["error_rate"]["state"] == "ok", verification
    assert {c["verdict"] for c in verification["checks"]} == {"verified"}
    assert [c["name"] for c in verification["checks"]][:2] == ["flag", "database local-app"]
    assert (record["operator"], record["operator_source"]) == ("alice", "awx")
    assert str(record["awx_job_id"]) == "4242"
    assert record["environment"] == "local"
    assert record["flag"]["previous_state"] == "enabled" and record["flag"]["state"] == "disabled"
    # Every instance Prometheus scrapes was confirmed on legacy, each with a flag fetch after the flag went off.
    assert record["propagation"]["discovered_in"] == "Prometheus job transformation-engine"
    assert sorted(record["propagation"]["instances"]) == ["app-1", "app-2"]
    assert float(record["propagation"]["last_confirmed_after_flag_seconds"]) >= 1.0  # the clock skew allowance
    db = record["databases"]["local-app"]
    assert (db["revision_before"], db["revision_after"]) == (FEATURE, LEGACY)
    assert db["sql_sha256"] == record["plan"]["local-app"]["sql_sha256"]
    assert list(dict.fromkeys(s["name"] for s in record["steps"])) == [
        "preflight",
        "flag",
        "notify",  # the start change event, once the flag is off (and the summary at the end)
        "propagation",
        "schema",
        "verify",
    ]
    # The schema is the one recorded before the deployment.
    status = playbook("playbooks/status.yml", extravars={"env": "local"}, envvars=stack.env())
    assert status.rc == 0 and "at the rollback point, schema as recorded" in status.stdout, status
    assert fingerprint_before in json.dumps(query(stack, "SELECT fingerprint FROM runbook.rollback_points"))

    # Success notifications, with the operator and the per-database result.
    new_mails = stack.mails()[mails_before:]
    new_posts = stack.webhook_posts(accepted_only=True)[posts_before:]
    assert len(new_mails) == 1 and len(new_posts) == 1
    for text in (json.dumps(new_mails[0]), json.dumps(new_posts[0])):
        assert "succeeded" in text and "alice" in text and "local-app" in text
    assert_no_secret(stack, run)

    again = rollback(playbook, stack)
    assert again.rc == 0, again
    assert again.changed_tasks() == [], f"a second rollback changed {again.changed_tasks()}"
    assert end_record(again)["outcome"] == "succeeded"
    assert len(stack.mails()) == len(new_mails) + mails_before, "a no-op re-run must not notify"


def test_check_mode_prints_the_plan_and_changes_nothing(deployed, playbook):
    stack = deployed
    run = playbook(
        "rollback.yml",
        extravars={"env": "local", "reason": "look first"},
        envvars=stack.env(),
        cmdline="--check",
    )
    assert run.rc == 0, run
    assert f"{FEATURE} -> {LEGACY}, sql sha256" in run.stdout
    assert flag_enabled(stack) and revision(stack) == FEATURE
    record = end_record(run)
    assert record["check_mode"] is True and record["plan"]["local-app"]["from_revision"] == FEATURE


# -- bad input: one sentence, nothing changed ---------------------------------------------------------
@pytest.mark.parametrize(
    ("extravars", "expected"),
    [
        ({"reason": "x"}, "env is missing: give -e env=<one of"),
        ({"env": "qa", "reason": "x"}, "env=qa is not an environment of the inventory: give -e env=<one of"),
        ({"env": "local"}, "missing required arguments: reason"),
        ({"env": "local", "reason": "  "}, 'reason is empty: say why with -e reason="..."'),
        (
            {"env": "prod", "reason": "x"},
            "prod is production-like: give the incident ticket and confirm the environment",
        ),
        ({"env": "prod", "reason": "x", "ticket": "INC-1", "confirm": "staging"}, "prod is production-like"),
    ],
)
def test_bad_request_is_refused_with_one_sentence(stack, playbook, extravars, expected):
    run = playbook("rollback.yml", extravars=extravars, envvars=stack.env())
    assert run.rc != 0
    assert expected in run.stdout, run
    assert "nothing was changed" in run.stdout or "missing required arguments" in run.stdout


@pytest.mark.parametrize("cmdline", ["--skip-tags never", "--tags flag", "--tags all,flag"])
def test_partial_runs_by_tag_are_refused(stack, playbook, cmdline):
    """Any --tags/--skip-tags, even one that would skip nothing today, is refused before any step."""
    run = playbook("rollback.yml", extravars={"env": "local", "reason": "x"}, envvars=stack.env(), cmdline=cmdline)
    assert run.rc != 0 and "The rollback runs whole: drop --tags/--skip-tags" in run.stdout, run
    assert "nothing was changed" in run.stdout and "Check the request" not in run.stdout


@pytest.mark.parametrize(
    ("envvars", "expected"),
    [
        ({"FF_API_KEY": ""}, "FF_API_KEY"),
        ({"FF_API_KEY": "*:*.0123456789abcdef0123456789abcdef"}, "rejected"),
        ({"FF_API_URL": "http://127.0.0.1:{port}"}, "Cannot"),
        ({"ROLLBACK_DB_PORT": "{port}"}, "local-app"),
    ],
    ids=["missing-api-key", "wrong-api-key", "flag-api-down", "database-unreachable"],
)
def test_unreachable_or_unauthorised_services_stop_the_rollback_before_any_change(
    deployed, playbook, envvars, expected
):
    stack = deployed
    envvars = {k: v.format(port=free_port()) for k, v in envvars.items()}
    mails_before = len(stack.mails())
    run = rollback(playbook, stack, envvars=envvars, rollback_flag_max_wait=2)
    assert run.rc != 0
    assert expected in run.stdout, run
    assert flag_enabled(stack) and revision(stack) == FEATURE, "a refused rollback changed something"
    record = end_record(run)
    assert record["outcome"] == "failed at preflight"
    alerts = stack.mails()[mails_before:]
    assert (
        alerts
        and "ROLLBACK FAILED at step preflight" in alerts[-1]["text"]
        and "Nothing was changed" in alerts[-1]["text"]
    )
    assert_no_secret(stack, run)


@pytest.mark.parametrize(
    ("target", "expected"),
    [("0099_nonexistent", "0099_nonexistent"), (FEATURE, "that would be an upgrade")],
    ids=["unknown-revision", "not-an-ancestor"],
)
def test_a_target_that_is_not_a_rollback_is_refused(stack_baseline, playbook, target, expected):
    stack = stack_baseline
    run = rollback(playbook, stack, rollback_revision=target)
    assert run.rc != 0
    assert expected in run.stdout, run
    assert revision(stack) == LEGACY
    assert end_record(run)["outcome"] == "failed at preflight"


def test_a_database_not_under_alembic_is_refused(stack_baseline, playbook):
    stack = stack_baseline
    stack.cluster.create_database("not_migrated", owner="migrator")
    try:
        run = rollback(playbook, stack, envvars={"ROLLBACK_DB_NAME": "not_migrated"}, rollback_revision=LEGACY)
        assert run.rc != 0
        assert "alembic_version" in run.stdout, run
    finally:
        stack.cluster.drop_database("not_migrated")


# -- faults during the rollback: a stated, safe state ---------------------------------------------------
def test_propagation_timeout_leaves_flag_off_and_schema_untouched(deployed, playbook, status_fake):
    stack = deployed
    stuck = status_fake.add("app-stuck", path="new")
    run = rollback(playbook, stack, envvars={"APP_STATUS_URLS": stuck}, rollback_propagation_timeout=2)
    assert run.rc != 0
    assert "app-stuck" in run.stdout, run
    assert not flag_enabled(stack), "the flag must stay off (the legacy path is the safe one)"
    assert revision(stack) == FEATURE, "the schema must not be touched while an instance may use it"
    assert end_record(run)["outcome"] == "failed at propagation"


def test_an_unreachable_discovery_source_stops_before_the_schema(deployed, playbook):
    """Prometheus lists the live instances: when it cannot be asked, nothing proves that every instance
    switched, so the schema step does not start (the flag stays off)."""
    stack = deployed
    run = rollback(
        playbook, stack, envvars={"PROMETHEUS_URL": f"http://127.0.0.1:{free_port()}"}, rollback_propagation_timeout=2
    )
    assert run.rc != 0
    assert "the instances could not be discovered: cannot ask Prometheus job transformation-engine" in run.stdout, run
    assert not flag_enabled(stack)
    assert revision(stack) == FEATURE
    assert end_record(run)["outcome"] == "failed at propagation"


def test_a_plan_that_changed_after_preflight_is_refused(deployed, playbook, status_fake, tmp_path):
    """Someone moves the database while the rollback waits for propagation: the approved plan no longer holds."""
    stack = deployed
    held = status_fake.add("app-held", path="new")
    versions = [str(ROOT / "migrations" / "versions"), str(FAULTY_DIR)]

    def move_database_then_release():
        migrate_faulty(stack, "0003_faulty_downgrade")
        status_fake.set_path("app-held", "legacy")

    timer = threading.Timer(4.0, move_database_then_release)
    timer.start()
    try:
        run = rollback(
            playbook,
            stack,
            envvars={"APP_STATUS_URLS": held},
            rollback_migrations_version_locations=versions,
            rollback_propagation_timeout=30,
        )
        assert run.rc != 0
        assert "sha256" in run.stdout, run
        assert revision(stack) == "0003_faulty_downgrade", "a refused plan must leave the database as it was"
        assert end_record(run)["outcome"] == "failed at schema"
    finally:
        timer.join()
        undo_faulty(stack)


def test_a_failing_down_migration_leaves_the_database_exactly_as_before(stack_baseline, playbook):
    stack = stack_baseline
    versions = [str(ROOT / "migrations" / "versions"), str(FAULTY_DIR)]
    extra = {
        "rollback_migrations_version_locations": versions,
        "rollback_migrations_ini": str(FAULTY_DIR / "alembic.ini"),
    }
    try:
        deploy = playbook(
            "playbooks/deploy.yml", extravars={"env": "local", "reason": "faulty", **extra}, envvars=stack.env()
        )
        assert deploy.rc == 0, deploy
        assert revision(stack) == "0003_faulty_downgrade"
        before = (schema_fingerprint(stack), archive_tables(stack))
        mails_before, pages_before = len(stack.mails()), len(stack.pagerduty_events())

        run = rollback(playbook, stack, **extra)

        assert run.rc != 0
        assert revision(stack) == "0003_faulty_downgrade"
        assert (schema_fingerprint(stack), archive_tables(stack)) == before, "a failed downgrade left something behind"
        assert not flag_enabled(stack), "the flag stays off: the legacy path is the safe one"
        assert end_record(run)["outcome"] == "failed at schema"
        alert = stack.mails()[mails_before:][-1]["text"]
        assert "ROLLBACK FAILED at step schema" in alert
        assert "revision 0003_faulty_downgrade" in alert and "flag DataTransformationFeature: disabled" in alert
        assert "When the down migration fails" in alert
        [page] = [e for e in stack.pagerduty_events()[pages_before:] if e["endpoint"] == "alert"]
        assert page["accepted"] and page["event"]["event_action"] == "trigger"
        assert page["event"]["payload"]["severity"] == "critical"
        assert page["event"]["payload"]["custom_details"]["database_revisions"] == {
            "local-app": "0003_faulty_downgrade"
        }
        assert page["event"]["payload"]["custom_details"]["summary"] == alert.splitlines()
        assert_no_secret(stack, run)
    finally:
        undo_faulty(stack)


def test_undeliverable_notifications_are_warnings_not_failures(deployed, playbook):
    stack = deployed
    closed = free_port()
    run = rollback(
        playbook,
        stack,
        envvars={
            "SLACK_WEBHOOK_URL": f"http://127.0.0.1:{closed}/services/T0/B0/x",
            "SMTP_PORT": str(free_port()),
            "PAGERDUTY_EVENTS_URL": f"http://127.0.0.1:{free_port()}",
        },
        rollback_notify_max_wait=2,
    )
    assert run.rc == 0, run
    assert revision(stack) == LEGACY
    for channel in ("Slack notification", "e-mail notification", "PagerDuty resolve", "PagerDuty change event (end)"):
        assert f"[WARNING]: {channel} not delivered:" in run.stdout, channel
    record = end_record(run)
    assert record["outcome"] == "succeeded"
    assert record["notifications"]["slack"].startswith("not delivered: the Slack webhook could not connect")
    assert record["notifications"]["mail"].startswith("not delivered: the SMTP server 127.0.0.1:")
    warnings = record["warnings"]
    assert [w.split(" not delivered")[0] for w in warnings] == [
        "PagerDuty change event (start)",
        "Slack notification",
        "e-mail notification",
        "PagerDuty resolve",
        "PagerDuty change event (end)",
    ], warnings
    assert "\\1" not in json.dumps(record), "the audit names the channel, not a regex back-reference"
    assert_no_secret(stack, run)


def test_prometheus_down_at_verify_fails_clearly_and_undoes_nothing(deployed, playbook):
    stack = deployed
    run = rollback(
        playbook,
        stack,
        envvars={"PROMETHEUS_URL": f"http://127.0.0.1:{free_port()}"},
        rollback_verify_error_rate_wait=2,
        rollback_verify_error_rate_interval=1,
        # The barrier would stop at Prometheus first (its discovery source): ask only the configured list here.
        rollback_propagation_discovery={},
    )
    assert run.rc != 0
    assert "Verification inconclusive after" in run.stdout and "did not answer" in run.stdout, run
    assert "nothing is undone, but this run is not a success" in run.stdout
    assert revision(stack) == LEGACY and not flag_enabled(stack)
    record = end_record(run)
    assert record["outcome"] == "failed at verify"
    assert record["verification"]["verdict"] == "inconclusive"


def test_unwritable_audit_file_refuses_to_start(stack, playbook, tmp_path):
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the audit directory should be")
    run = playbook(
        "rollback.yml",
        extravars={"env": "local", "reason": "x"},
        envvars=stack.env(),
        audit_file=blocked / "audit.jsonl",
    )
    assert run.rc != 0
    assert "The audit record cannot be written" in run.stdout, run


# -- runner parity: what AWX injects ------------------------------------------------------------------
def test_awx_tower_aliases_name_the_operator_and_job(deployed, playbook):
    """Older AWX/Tower inject tower_* extra vars; credentials arrive as environment variables only."""
    stack = deployed
    run = playbook(
        "rollback.yml",
        extravars={
            "env": "local",
            "reason": "runner parity",
            "tower_user_name": "bob",
            "tower_job_id": 77,
            "tower_job_template_name": "Rollback-DataTransformation-Feature",
            "rollback_awx_url": "https://awx.example.internal",
        },
        envvars=stack.env(),
        cmdline="--check",
    )
    assert run.rc == 0, run
    record = end_record(run)
    assert (record["operator"], record["operator_source"]) == ("bob", "awx")
    assert str(record["awx_job_id"]) == "77"
    assert record["awx_job_template"] == "Rollback-DataTransformation-Feature"
    assert record["awx_job_url"] == "https://awx.example.internal/#/jobs/playbook/77"
    assert_no_secret(stack, run)
