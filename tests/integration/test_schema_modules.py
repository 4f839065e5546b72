"""The schema_migration and schema_state modules as Ansible runs them: through ansible-runner (as AWX).

One playbook walks the deploy/rollback cycle on a single database (DSN from ROLLBACK_DB_DSN),
many databases in one task, a downgrade failing halfway via version_locations, and a failing
DSN; every password (the real one and a canary) must appear nowhere in the output or events.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import ansible_runner
import pytest
from ansible.module_utils.schema_rollback_points import read_state

from tests.fixtures.schema import FAULTY_VERSIONS, HEAD, LEGACY, ROOT, clone_app_db, revert

pytestmark = pytest.mark.integration

CANARY = "Canary-Module-51c9"
BIN = Path(sys.executable).parent

PLAYBOOK = """
- name: Schema modules, end to end
  hosts: localhost
  gather_facts: false
  vars:
    ansible_python_interpreter: "{{ ansible_playbook_python }}"
  module_defaults:
    schema_migration:
      script_location: "{{ repo }}/migrations"
      lock_timeout: 1
      lock_attempts: 2
    schema_state:
      script_location: "{{ repo }}/migrations"
  tasks:
    - name: Record the rollback point (deploy.yml, before its upgrade)
      schema_state:
        record_rollback_point: true
        recorded_by: tester
        run_id: deploy-1
        error_rate_baseline: 0.01
      register: recorded

    - name: Upgrade (as deploy.yml does)
      ansible.builtin.command:
        argv: ["{{ alembic }}", -c, "{{ repo }}/migrations/alembic.ini", upgrade, heads]
      changed_when: true

    - name: Plan the revert
      schema_migration:
        revision: "{{ recorded.rollback_point.revision }}"
      check_mode: true
      register: plan

    - name: Revert, pinned to the approved plan
      schema_migration:
        revision: "{{ recorded.rollback_point.revision }}"
        expected_sql_sha256: "{{ plan.sql_sha256 }}"
        run_id: rollback-1
      register: applied

    - name: Revert again
      schema_migration:
        revision: "{{ recorded.rollback_point.revision }}"
      register: again

    - name: Read the state after the revert
      schema_state: {}
      register: after

    - name: Verify against the rollback point
      ansible.builtin.assert:
        that:
          - after.revision == after.rollback_point.revision
          - after.fingerprint == after.rollback_point.fingerprint
          - after.heads == ['0002_data_transformation']

    - name: Plan many databases
      schema_migration:
        databases: "{{ tenants }}"
        revision: 0001_legacy
        parallel: 2
      check_mode: true
      register: many_plan

    - name: Revert many databases
      schema_migration:
        databases: "{{ tenants }}"
        revision: 0001_legacy
        parallel: 2
        expected_sql_sha256: "{{ dict(many_plan.databases | map(attribute='name')
          | zip(many_plan.databases | map(attribute='sql_sha256'))) }}"
      register: many

    - name: Read many databases
      schema_state:
        databases: "{{ tenants }}"
      register: many_state

    - name: A downgrade failing halfway
      schema_migration:
        dsn: "{{ faulty_dsn }}"
        version_locations: ["{{ repo }}/migrations/versions", "{{ repo }}/tests/data/faulty_versions"]
        revision: 0001_legacy
      register: faulty
      ignore_errors: true

    - name: A DSN that does not connect
      schema_migration:
        dsn: "{{ bad_dsn }}"
        revision: 0001_legacy
      register: bad
      ignore_errors: true

    - name: One bad database among many
      schema_migration:
        databases: "{{ tenants + [{'name': 'bad-tenant', 'dsn': bad_dsn}] }}"
        revision: 0001_legacy
      register: many_bad
      ignore_errors: true
"""


def _results(events: list[dict]) -> dict[str, dict]:
    """Each task's result, with `failed` from the event type (the event's copy of res lacks it)."""
    return {
        e["event_data"]["task"]: {**e["event_data"]["res"], "failed": e["event"] == "runner_on_failed"}
        for e in events
        if e["event"] in ("runner_on_ok", "runner_on_failed") and "res" in e["event_data"]
    }


def test_modules_through_ansible_runner(tmp_path, app_template, app_db, pg_cluster):
    revert(app_db)  # start at the legacy schema, as before a deployment
    tenants = [clone_app_db(app_template, f"{app_db.name}_t{i}") for i in range(3)]
    faulty = clone_app_db(app_template, f"{app_db.name}_faulty")
    try:
        upgrade = subprocess.run(
            [str(BIN / "alembic"), "-c", str(FAULTY_VERSIONS / "alembic.ini"), "upgrade", "heads"],
            env={**os.environ, "ROLLBACK_DB_DSN": faulty.dsn},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert upgrade.returncode == 0, upgrade.stderr
        faulty_fingerprint = faulty.fingerprint()
        (tmp_path / "project").mkdir()
        playbook = tmp_path / "project" / "schema_modules.yml"
        playbook.write_text(PLAYBOOK)
        bad_dsn = pg_cluster.dsn(app_db.name, password=CANARY)
        run = ansible_runner.run(
            private_data_dir=str(tmp_path),
            playbook=str(playbook),
            inventory={"all": {"hosts": {"localhost": {"ansible_connection": "local"}}}},
            extravars={
                "repo": str(ROOT),
                "alembic": str(BIN / "alembic"),
                "tenants": [{"name": t.name, "dsn": t.dsn} for t in tenants],
                "faulty_dsn": faulty.dsn,
                "bad_dsn": bad_dsn,
            },
            envvars={
                "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
                "ROLLBACK_DB_DSN": app_db.dsn,
                "ROLLBACK_AUDIT_FILE": str(tmp_path / "audit.jsonl"),
                "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
                "ANSIBLE_NOCOLOR": "1",
            },
            quiet=True,
            timeout=600,
        )
        stdout = run.stdout.read()
        events = list(run.events)
        for e in events:  # task durations, shown when an assertion fails
            if e["event"] in ("runner_on_ok", "runner_on_failed"):
                print(e["event_data"]["task"], e["event_data"].get("duration"))
        assert run.rc == 0, stdout[-6000:]
        res = _results(events)

        recorded = res["Record the rollback point (deploy.yml, before its upgrade)"]
        assert recorded["changed"] and recorded["rollback_point"]["revision"] == LEGACY
        assert recorded["rollback_point"]["error_rate_baseline"] == 0.01

        plan = res["Plan the revert"]
        assert plan["changed"] and plan["from_revision"] == HEAD and plan["to_revision"] == LEGACY
        assert "DROP TYPE transformation_stage" in plan["sql"] and len(plan["sql_sha256"]) == 64
        assert [d["rows"] for d in plan["drops"]] == [40, 0]  # the job table is new and empty

        applied = res["Revert, pinned to the approved plan"]
        assert applied["changed"] and applied["attempts"] == 1 and applied["sql_sha256"] == plan["sql_sha256"]
        assert applied["archive"]["rows"] == 40 and applied["run_id"] == "rollback-1"
        for key in ("from_revision", "to_revision", "lock_wait_seconds", "duration_seconds"):
            assert key in applied
        again = res["Revert again"]
        assert again["changed"] is False and again["attempts"] == 0
        assert app_db.revision() == LEGACY and app_db.fingerprint() == app_db.legacy_fingerprint

        many_plan, many = res["Plan many databases"], res["Revert many databases"]
        assert [d["name"] for d in many["databases"]] == [t.name for t in tenants]
        assert all(d["changed"] and not d["failed"] for d in many_plan["databases"] + many["databases"])
        for tenant in tenants:
            assert tenant.revision() == LEGACY
        assert [d["revision"] for d in res["Read many databases"]["databases"]] == [LEGACY] * 3

        faulty_res = res["A downgrade failing halfway"]
        assert faulty_res["failed"] and "simulated failure halfway" in faulty_res["msg"]
        assert faulty.fingerprint() == faulty_fingerprint and faulty.revision() == "0003_faulty_downgrade"

        bad = res["A DSN that does not connect"]
        assert bad["failed"] and "carries a password" in bad["msg"]  # refused before any contact
        many_bad = res["One bad database among many"]
        assert many_bad["failed"] and many_bad["msg"].startswith("Cannot revert 1 of 4 database(s): bad-tenant: ")
        assert [d["changed"] for d in many_bad["databases"]] == [False, False, False, False]

        everything = stdout + json.dumps(events)
        assert CANARY not in everything
        assert pg_cluster.password not in everything
    finally:
        for db in [*tenants, faulty]:
            pg_cluster.drop_database(db.name)


@pytest.mark.parametrize("path_args", [[], ["-M", "plugins/modules"]], ids=["ansible.cfg", "-M"])
def test_ansible_doc_works_from_the_repository_root(path_args):
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg")}
    modules = ["schema_migration", "schema_state"]
    proc = subprocess.run(
        [str(BIN / "ansible-doc"), "--json", *path_args, *modules],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    docs = json.loads(proc.stdout)
    for module in modules:
        doc = docs[module]
        assert doc["doc"]["attributes"]["check_mode"]["support"] == "full"
        assert doc["examples"] and doc["return"]
        for name, option in doc["doc"]["options"].items():
            assert option.get("description"), name


def test_state_without_fingerprint_reads_revision_and_rollback_point_only(app_db):
    """The rollback's preflight skips the catalog read; the revision and rollback point are still there."""
    full = read_state({"name": "db", "dsn": app_db.dsn})
    light = read_state({"name": "db", "dsn": app_db.dsn, "fingerprint": False})
    assert not full["failed"] and not light["failed"], (full["msg"], light["msg"])
    assert full["fingerprint"] and light["fingerprint"] is None
    assert (light["revision"], light["rollback_point"]) == (full["revision"], full["rollback_point"])
