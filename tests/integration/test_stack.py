"""The rehearsal stack behaves like the production picture the rollback is rehearsed against."""

import json
import os
import shlex
import smtplib
import ssl
import stat
import subprocess
import sys
import time
from datetime import datetime
from email.message import EmailMessage

import psycopg2
import pytest
import requests

from rehearsal import appdb
from rehearsal.stack import ROOT, SECRET_KEYS

pytestmark = pytest.mark.integration

FEATURE = "0002_data_transformation"
ENV_KEYS = {
    "FF_PROVIDER",
    "FF_API_URL",
    "FF_API_KEY",
    "FF_PROJECT",
    "FF_ENVIRONMENT",
    "FF_FLAG",
    "ROLLBACK_DB_HOST",
    "ROLLBACK_DB_PORT",
    "ROLLBACK_DB_SSLMODE",
    "ROLLBACK_DB_SSLROOTCERT",
    "ROLLBACK_DB_NAME",
    "ROLLBACK_DB_USER",
    "PGPASSWORD",
    "ROLLBACK_DB_DSN",
    "ROLLBACK_TENANT_DBS",
    "APP_URLS",
    "APP_STATUS_URLS",
    "PROMETHEUS_URL",
    "SMTP_HOST",
    "SMTP_PORT",
    "SMTP_SECURE",
    "SMTPS_PORT",
    "SMTP_CA_FILE",
    "SLACK_WEBHOOK_URL",
    "PAGERDUTY_EVENTS_URL",
    "PAGERDUTY_ROUTING_KEY",
    "SINK_PAGERDUTY_FILE",
    "SINK_MAIL_FILE",
    "SINK_WEBHOOK_FILE",
    "REHEARSAL_RUN_DIR",
}


def cli(stack, *args, check=True):
    proc = subprocess.run(
        [sys.executable, "-m", "rehearsal", "--run-dir", str(stack.run_dir), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def query(dsn, statement, params=None):
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(statement, params)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


def secret_values(stack):
    env = stack.env()
    values = [env[key] for key in SECRET_KEYS]
    values += [*list(stack.secrets.values()), stack.unleash.client_token]
    return [v for v in values if v]


# -- the contract ---------------------------------------------------------------------------------
def test_env_has_the_contract_keys_and_reaches_every_service(stack):
    env = stack.env()
    assert ENV_KEYS <= set(env)
    assert env["FF_PROVIDER"] == "unleash"
    assert (env["FF_PROJECT"], env["FF_ENVIRONMENT"], env["FF_FLAG"]) == (
        "default",
        "production",
        "DataTransformationFeature",
    )
    assert (env["ROLLBACK_DB_NAME"], env["ROLLBACK_DB_USER"], env["ROLLBACK_TENANT_DBS"]) == (
        "transformation",
        "migrator",
        "",
    )
    # The migrator's DSN (no password in it: TLS verified with the stack's CA) with PGPASSWORD, and
    # host/port/user + PGPASSWORD, reach the same database.
    assert "@" in env["ROLLBACK_DB_DSN"] and ":" not in env["ROLLBACK_DB_DSN"].split("@")[0].split("//")[1]
    assert "sslmode=verify-full" in env["ROLLBACK_DB_DSN"]
    dsn_with_password = env["ROLLBACK_DB_DSN"] + "&password=" + env["PGPASSWORD"]  # libpq's own check, not ours
    assert query(dsn_with_password, "SELECT current_user, current_database()") == [("migrator", "transformation")]
    libpq = (
        f"host={env['ROLLBACK_DB_HOST']} port={env['ROLLBACK_DB_PORT']} dbname={env['ROLLBACK_DB_NAME']} "
        f"user={env['ROLLBACK_DB_USER']} password={env['PGPASSWORD']}"
    )
    assert query(libpq, "SELECT 1") == [(1,)]
    # The admin key is accepted by Unleash's admin API, and the flag is there.
    feature = requests.get(
        f"{env['FF_API_URL']}/api/admin/projects/default/features/DataTransformationFeature",
        headers={"Authorization": env["FF_API_KEY"]},
        timeout=10,
    )
    assert feature.status_code == 200, feature.text
    assert "production" in [e["name"] for e in feature.json()["environments"]]
    assert len(env["APP_URLS"].split(",")) == 2
    assert env["APP_STATUS_URLS"].split(",") == [url + "/status" for url in env["APP_URLS"].split(",")]
    assert requests.get(env["PROMETHEUS_URL"] + "/-/ready", timeout=5).status_code == 200
    ports = [stack.ports[name] for name in stack.ports]
    assert len(set(ports)) == len(ports)


def test_env_cli_prints_shell_and_json(stack):
    as_json = json.loads(cli(stack, "env", "--format", "json").stdout)
    assert as_json == stack.env()
    shell = cli(stack, "env").stdout
    parsed = {}
    for line in shell.splitlines():
        word, assignment = line.split(" ", 1)
        assert word == "export"
        key, value = shlex.split(assignment)[0].split("=", 1)
        parsed[key] = value
    assert parsed == as_json


def test_secrets_are_0600_and_never_printed_by_up_status_down_or_logged(stack):
    for path in (stack.secrets_file, stack.unleash.workdir / "admin.token"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    outputs = cli(stack, "up").stdout + cli(stack, "status").stdout
    logs = "".join(p.read_text(errors="replace") for p in (stack.run_dir / "logs").glob("*.log"))
    logs += (stack.run_dir / "state.json").read_text()
    for value in secret_values(stack):
        assert value not in outputs
        assert value not in logs


def test_up_is_idempotent_and_status_is_healthy(stack):
    pids = {name: item["pid"] for name, item in stack.status().items()}
    timings = stack.up()
    for name in ("postgres", "unleash", "prometheus", "sinks", "app-1", "app-2"):
        assert timings[name] == 0.0, f"{name} was started again: {timings}"
    status = stack.status()
    assert {name: item["pid"] for name, item in status.items()} == pids
    assert all(item["healthy"] for item in status.values()), status
    assert cli(stack, "status").returncode == 0


# -- the application and the flag ---------------------------------------------------------------
def test_both_instances_switch_path_after_the_toggle(stack_baseline, record_property):
    """Each instance takes the toggle, from a flag fetch made after it (its SDK refreshes every second).

    How long that takes is recorded, not bounded (a loaded machine delays any timer): bench/ measures
    the time to legacy (P3). The wait below only stops a test that would otherwise hang."""
    stack = stack_baseline
    for enabled, path in ((True, "new"), (False, "legacy")):
        stack.set_flag(enabled)
        toggled = time.time()
        switched = {}
        deadline = time.monotonic() + 30
        while len(switched) < 2 and time.monotonic() < deadline:
            for status in stack.app_statuses():
                if status["path"] == path and status["instance"] not in switched:
                    # When the instance fetched the flag state it now runs on: its own clock, no polling lag.
                    switched[status["instance"]] = datetime.fromisoformat(status["last_refresh"]).timestamp() - toggled
            time.sleep(0.02)
        assert set(switched) == {"app-1", "app-2"}, f"not every instance took path {path}: {switched}"
        for instance, seconds in switched.items():
            # The fetch that switched it came after the toggle, by the instance's own clock (1 s of skew allowed).
            assert seconds > -1.0, f"{instance} reports path {path} from a fetch {-seconds:.2f} s before the toggle"
            record_property(f"{instance}_{path}_switch_seconds", round(seconds, 3))


def test_status_reports_flag_path_refresh(stack_baseline):
    first = {}
    for status in stack_baseline.app_statuses():
        assert status["flag"] == "DataTransformationFeature"
        assert (status["flag_enabled"], status["path"], status["refresh_interval"]) == (False, "legacy", 1.0)
        first[status["instance"]] = status["last_refresh"]
    # Each instance keeps refreshing its flags: last_refresh moves on (no bound on how soon: the wait
    # only stops a test that would otherwise hang).
    refreshed = set()
    deadline = time.monotonic() + 30
    while refreshed != set(first) and time.monotonic() < deadline:
        refreshed |= {s["instance"] for s in stack_baseline.app_statuses() if s["last_refresh"] != first[s["instance"]]}
        time.sleep(0.1)
    assert refreshed == set(first), f"instances that never refreshed their flags: {sorted(set(first) - refreshed)}"


def test_legacy_path_works_with_the_feature_schema_absent(stack_baseline):
    stack = stack_baseline
    dsn = stack.dsn()
    assert appdb.current_revision(dsn) == "0001_legacy"
    assert query(dsn, "SELECT to_regclass('transformation_jobs')") == [(None,)]
    for instance in ("app-1", "app-2"):
        response = stack.transform(instance, external_ref=f"legacy-{instance}-{time.time_ns()}", payload={"a": 1})
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["path"], body["instance"]) == ("legacy", instance)
        rows = query(dsn, "SELECT engine FROM transformation_results WHERE document_id = %s", (body["document_id"],))
        assert rows == [("legacy",)]


def test_new_path_writes_the_feature_tables_and_legacy_still_works_beside_them(stack_baseline):
    stack = stack_baseline
    dsn = stack.dsn()
    appdb.migrate(dsn, FEATURE)
    stack.set_flag(True)
    stack.wait_for_path("new", timeout=10)
    for instance in ("app-1", "app-2"):
        response = stack.transform(instance, external_ref=f"new-{instance}-{time.time_ns()}", payload={"b": 2})
        assert response.status_code == 200, response.text
        document_id = response.json()["document_id"]
        assert response.json()["path"] == "new"
        assert query(dsn, "SELECT transform_version FROM documents WHERE id = %s", (document_id,)) == [(2,)]
        jobs = query(
            dsn, "SELECT stage::text, pipeline_version FROM transformation_jobs WHERE document_id = %s", (document_id,)
        )
        assert jobs == [("succeeded", 2)]
        assert query(dsn, "SELECT count(*) FROM transformation_results WHERE document_id = %s", (document_id,)) == [
            (0,)
        ]
    stack.set_flag(False)
    stack.wait_for_path("legacy", timeout=10)
    response = stack.transform("app-1", external_ref=f"legacy-beside-{time.time_ns()}")
    assert response.status_code == 200, response.text
    document_id = response.json()["document_id"]
    assert query(dsn, "SELECT transform_version FROM documents WHERE id = %s", (document_id,)) == [(1,)]


def test_new_path_fails_with_5xx_when_the_feature_schema_is_gone_and_prometheus_sees_it(stack_baseline):
    """Flag on with the schema reverted: what a wrong rollback order looks like, seen by monitoring."""
    stack = stack_baseline
    stack.set_flag(True)
    stack.wait_for_path("new", timeout=10)
    for number in range(10):
        response = stack.transform(f"app-{number % 2 + 1}", external_ref=f"broken-{number}-{time.time_ns()}")
        assert response.status_code == 503, response.text
        assert response.json()["error"] in ("UndefinedColumn", "UndefinedTable")
        assert response.json()["path"] == "new"
    stack.set_flag(False)
    deadline = time.monotonic() + 20
    rate = None
    while time.monotonic() < deadline:
        rate = stack.error_rate("30s")
        per_instance = stack.prometheus_query(
            'sum by (app_instance) (increase(http_requests_total{job="transformation-engine",status="503"}[1m]))'
        )
        seen = {r["metric"]["app_instance"] for r in per_instance if float(r["value"][1]) > 0}
        if rate and rate > 0 and seen == {"app-1", "app-2"}:
            break
        time.sleep(0.5)
    assert rate is not None and rate > 0, f"Prometheus does not report the 5xx rate: {rate}"
    assert seen == {"app-1", "app-2"}, per_instance


def test_the_application_role_has_dml_only_and_reaches_feature_tables_by_default_privileges(stack_baseline):
    stack = stack_baseline
    app_dsn = stack.dsn(role="app_rw")
    with pytest.raises(psycopg2.errors.InsufficientPrivilege):
        query(app_dsn, "CREATE TABLE sneaky (id int)")
    with pytest.raises(psycopg2.errors.InsufficientPrivilege):
        query(app_dsn, "DROP TABLE transformation_results")
    owners = query(stack.dsn(), "SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public'")
    assert owners == [("migrator",)]
    appdb.migrate(stack.dsn(), FEATURE)
    query(app_dsn, "SELECT count(*) FROM transformation_jobs")  # raises InsufficientPrivilege if not granted
    assert query(app_dsn, "SELECT has_table_privilege('transformation_jobs', 'INSERT')") == [(True,)]


# -- the sinks ------------------------------------------------------------------------------------
def test_smtp_sink_stores_messages_and_checks_credentials(stack):
    env = stack.env()
    marker = f"rollback-{time.time_ns()}"
    message = EmailMessage()
    message["Subject"], message["From"], message["To"] = marker, "runbook@localhost", "oncall@localhost"
    message.set_content("the rollback finished")
    verified = ssl.create_default_context(cafile=env["SMTP_CA_FILE"])  # the test CA the sink made at start
    with smtplib.SMTP(env["SMTP_HOST"], int(env["SMTP_PORT"]), timeout=10) as smtp:
        with pytest.raises(smtplib.SMTPException):  # no login before STARTTLS
            smtp.login(env["SMTP_USERNAME"], env["SMTP_PASSWORD"])
    with smtplib.SMTP(env["SMTP_HOST"], int(env["SMTP_PORT"]), timeout=10) as smtp:
        smtp.starttls(context=verified)
        smtp.login(env["SMTP_USERNAME"], env["SMTP_PASSWORD"])
        smtp.send_message(message)
    with smtplib.SMTP_SSL(env["SMTP_HOST"], int(env["SMTPS_PORT"]), timeout=10, context=verified) as smtp:
        with pytest.raises(smtplib.SMTPAuthenticationError):
            smtp.login(env["SMTP_USERNAME"], "not-the-password")
    stored = [m for m in stack.mails() if m["subject"] == marker]
    assert len(stored) == 1
    assert stored[0]["rcpt_tos"] == ["oncall@localhost"]
    assert stored[0]["authenticated_as"] == env["SMTP_USERNAME"] and stored[0]["tls"] is True
    assert "the rollback finished" in stored[0]["text"]
    readback = requests.get(env["SINK_READBACK_URL"] + "/mail", timeout=5).json()
    assert marker in [m["subject"] for m in readback]
    assert env["SMTP_PASSWORD"] not in open(env["SINK_MAIL_FILE"]).read()


@pytest.mark.parametrize(
    ("kwargs", "status", "answer"),
    [
        ({"json": {"text": "rollback done"}}, 200, "ok"),
        ({"json": {"blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": "*done*"}}]}}, 200, "ok"),
        ({"data": {"payload": json.dumps({"text": "as a form"})}}, 200, "ok"),
        ({"data": "not json", "headers": {"Content-Type": "application/json"}}, 400, "invalid_payload"),
        ({"json": ["a", "list"]}, 400, "invalid_payload"),
        ({"json": {"channel": "#incidents"}}, 400, "no_text"),
        ({"json": {"text": "   "}}, 400, "no_text"),
        ({"json": {"text": "x", "blocks": "not a list"}}, 400, "invalid_blocks"),
        ({"json": {"attachments": [{}] * 101}}, 400, "too_many_attachments"),
    ],
)
def test_webhook_sink_answers_like_slack_and_stores_every_post(stack, kwargs, status, answer):
    url = stack.env()["SLACK_WEBHOOK_URL"]
    before = len(stack.webhook_posts())
    response = requests.post(url, timeout=5, **kwargs)
    assert (response.status_code, response.text) == (status, answer)
    posts = stack.webhook_posts()
    assert len(posts) == before + 1
    assert (posts[-1]["status"], posts[-1]["response"], posts[-1]["accepted"]) == (status, answer, status == 200)


def test_webhook_sink_knows_only_its_secret_url(stack):
    url = stack.env()["SLACK_WEBHOOK_URL"]
    wrong = url.rsplit("/", 1)[0] + "/not-the-token"
    response = requests.post(wrong, json={"text": "hello"}, timeout=5)
    assert (response.status_code, response.text) == (404, "no_service")
    stored = open(stack.env()["SINK_WEBHOOK_FILE"]).read()
    assert url.rsplit("/", 1)[1] not in stored  # the credential part of the URL is never stored


# -- the load generator ---------------------------------------------------------------------------
def test_load_generator_in_process_records_every_response(stack_baseline, tmp_path):
    out = tmp_path / "series.jsonl"
    summary = stack_baseline.load(rate=40, duration=2, out=out).run()
    assert summary["requests"] == 80
    assert summary["failed"] == 0, summary
    assert summary["by_path"] == {"legacy": 80}
    assert summary["p50_ms"] is not None and summary["p99_ms"] >= summary["p50_ms"]
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 80
    assert {line["instance"] for line in lines} == set(stack_baseline.env()["APP_URLS"].split(","))
    assert json.loads(out.with_name("series.summary.json").read_text())["requests"] == 80


def test_load_cli_stops_on_sigterm_and_still_writes_its_summary(stack_baseline, tmp_path):
    out = tmp_path / "sigterm.jsonl"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rehearsal",
            "--run-dir",
            str(stack_baseline.run_dir),
            "load",
            "--rate",
            "20",
            "--out",
            str(out),
            "--format",
            "json",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    time.sleep(2)
    proc.terminate()
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    summary = json.loads(stdout)
    assert summary["requests"] > 0 and summary["failed"] == 0, summary
    assert len(out.read_text().splitlines()) == summary["requests"]
    assert out.with_name("sigterm.summary.json").exists()
