"""The filters of plugins/filter/rollback_report.py: the audit's facts per database and the lines the playbooks show.

Tests and drills read these facts and lines (tests/integration/test_way_forward.py, test_rollback_playbook.py,
molecule/round-trip): the words here are the ones they match. The last tests ask ansible-doc, through the
repository's ansible.cfg, for every filter: the plugin is found and each documents its options.
"""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from ansible.errors import AnsibleFilterError
from ansible.module_utils.audit_facts import KINDS, UnknownAuditKind, audit_databases
from ansible.module_utils.report_lines import (
    archive_lines,
    audit_warnings,
    plan_lines,
    purge_lines,
    restore_refusals,
    revision_lines,
)

ROOT = Path(__file__).resolve().parents[2]
FILTERS = ROOT / "plugins" / "filter"
NOW = datetime(2026, 11, 30, 12, 0, 0, tzinfo=UTC).timestamp()


def load_filters() -> dict:
    return runpy.run_path(str(FILTERS / "rollback_report.py"))["FilterModule"]().filters()


# --- audit facts ------------------------------------------------------------------------------------------


def test_revert_facts_keep_every_key_and_default_what_a_refused_database_lacks():
    done = {
        "name": "app",
        "from_revision": "0002",
        "to_revision": "0001",
        "changed": True,
        "failed": False,
        "sql_sha256": "ab" * 32,
        "archive": {"rows": 3},
        "attempts": 2,
        "lock_wait_seconds": 0.4,
        "msg": "reverted",
        "data_statements": [{"revision": "0002"}],
        "accepted_data_statements": ["0002:ff"],
        "accepted_effects": ["x"],
        "run_id": "not kept",
    }
    refused = {"name": "other", "changed": False, "failed": True, "msg": "plan changed"}
    facts = audit_databases([done, refused], "revert")
    assert facts["app"] == {
        "revision_before": "0002",
        "revision_after": "0001",
        "changed": True,
        "failed": False,
        "sql_sha256": "ab" * 32,
        "archive": {"rows": 3},
        "attempts": 2,
        "lock_wait_seconds": 0.4,
        "msg": "reverted",
        "data_statements": [{"revision": "0002"}],
        "accepted_data_statements": ["0002:ff"],
        "accepted_effects": ["x"],
    }
    assert facts["other"] == {
        "revision_before": None,
        "revision_after": None,
        "changed": False,
        "failed": True,
        "sql_sha256": "",
        "archive": None,
        "attempts": 0,
        "lock_wait_seconds": 0,
        "msg": "plan changed",
        "data_statements": [],
        "accepted_data_statements": [],
        "accepted_effects": [],
    }


def test_a_failed_upgrade_is_recorded_where_it_stayed():
    facts = audit_databases(
        [
            {
                "name": "a",
                "from_revision": "0001",
                "to_revision": "0002",
                "changed": True,
                "failed": False,
                "msg": "ok",
            },
            {"name": "b", "from_revision": "0001", "to_revision": "0002", "changed": False, "failed": True, "msg": "x"},
        ],
        "upgrade",
    )
    assert facts["a"]["revision_after"] == "0002"
    assert facts["b"]["revision_after"] == "0001"
    assert set(facts["a"]) == {
        "revision_before",
        "revision_after",
        "changed",
        "failed",
        "attempts",
        "lock_wait_seconds",
        "duration_seconds",
        "restore",
        "msg",
    }


def test_plan_restore_plan_and_purge_facts():
    plan = audit_databases(
        [{"name": "a", "from_revision": "0002", "sql_sha256": "s", "drops": [{"rows": 1}], "changed": True}], "plan"
    )
    assert plan == {"a": {"from_revision": "0002", "sql_sha256": "s", "drops": [{"rows": 1}], "data_statements": []}}
    steps = audit_databases(
        [{"name": "a", "steps": [{"revision": "0002", "sql": "..."}, {"revision": "0003"}], "restore": None}],
        "restore_plan",
    )
    assert steps == {"a": {"steps": ["0002", "0003"], "restore": None}}
    purge = audit_databases([{"name": "a", "failed": True, "msg": "no"}], "purge")
    assert purge == {"a": {"failed": True, "would_purge": [], "purged": [], "msg": "no"}}


def test_a_result_that_does_not_say_failed_is_recorded_as_not_failed():
    for kind in ("revert", "upgrade", "purge"):
        assert audit_databases([{"name": "x"}], kind)["x"]["failed"] is False, kind


def test_no_result_gives_no_facts_and_an_unknown_kind_names_the_valid_ones():
    assert audit_databases(None, "revert") == {}
    with pytest.raises(UnknownAuditKind, match="use one of plan, revert, restore_plan, upgrade, purge"):
        audit_databases([], "reverts")
    with pytest.raises(AnsibleFilterError, match="has no kind 'reverts'"):
        load_filters()["rollback_audit_databases"]([], "reverts")


# --- lines ------------------------------------------------------------------------------------------------


def test_audit_warnings_name_a_broken_chain_and_runs_aborted_within_a_day_of_the_clock_given():
    audit = {
        "ok": True,
        "aborted_runs": [
            {"run_id": "recent", "started_at": "2026-11-29T12:00:00+00:00"},  # exactly one day before NOW: kept
            {"run_id": "old", "started_at": "2026-11-29T11:59:59+00:00"},
        ],
    }
    assert audit_warnings(audit, NOW) == [
        "earlier run recent (2026-11-29T12:00:00+00:00) never finished, killed?"
        " The state read below says what it left; rows it archived carry its run id."
    ]
    assert audit_warnings(audit, NOW + 1) == []
    assert audit_warnings({"ok": False, "msg": "record 3 resealed"}, NOW) == [
        "the audit chain is broken: record 3 resealed"
    ]
    assert audit_warnings(None, NOW) == ["the audit chain is broken: the audit file cannot be read"]


def test_plan_lines():
    assert plan_lines(
        [
            {
                "name": "a",
                "from_revision": "0002",
                "to_revision": "0001",
                "changed": True,
                "sql_sha256": "0123456789abcdef",
                "drops": [{"rows": 3}, {"rows": None}, {}],
            },
            {"name": "b", "from_revision": "0001", "to_revision": "0001", "changed": False},
        ]
    ) == ["a: 0002 -> 0001, sql sha256 0123456789ab, 3 rows to archive", "b: 0001 -> 0001 (already there)"]


def test_revision_lines_say_where_each_database_stands_against_its_rollback_point():
    point = {"revision": "0001", "fingerprint": "f1", "recorded_at": "2026-11-01T00:00:00Z", "recorded_by": "ana (os)"}
    state = {
        "heads": ["0002"],
        "databases": [
            {"name": "a", "revision": "0001", "fingerprint": "f1", "rollback_point": point},
            {"name": "b", "revision": "0001", "fingerprint": "f2", "rollback_point": point},
            {"name": "c", "revision": "0002", "fingerprint": "f2", "rollback_point": point},
            {"name": "d", "revision": "0002", "fingerprint": "f2", "rollback_point": None},
        ],
    }
    assert revision_lines(state) == [
        "a: revision 0001 (heads 0002); at the rollback point, schema as recorded",
        "b: revision 0001 (heads 0002); at the rollback point, schema DRIFTED from the recorded fingerprint",
        "c: revision 0002 (heads 0002); rollback point 0001 recorded 2026-11-01T00:00:00Z by ana (os)",
        "d: revision 0002 (heads 0002); no rollback point recorded",
    ]


def test_archive_lines_say_restored_or_when_purgeable_and_count_the_purged():
    def archive(run_id, restored, purged="no", age=2.5, **extra):
        tables = [{"source": "public.t"}, {"source": "public.u.c"}]
        return {
            "run_id": run_id,
            "age_days": age,
            "rows": 10,
            "tables": tables,
            "restored": restored,
            "purged": purged,
            **extra,
        }

    databases = [
        {"name": "a", "archives": []},
        {
            "name": "b",
            "archives": [
                archive("r1", "no"),
                archive("r2", "partly", age=40.25),
                archive("r3", "yes", restored_at="2026-11-30T00:00:00Z", restore_run_ids=["d1", "d2"]),
                archive("r4", "yes", purged="yes"),
            ],
        },
        {"name": "c", "archives": [archive("r5", "yes", purged="yes")]},
    ]
    assert archive_lines(databases, 30) == [
        "a: no rollback archive",
        "b: archive of rollback run r1, 2.5 day(s) old, 10 row(s) in 2 table(s)/column(s) (public.t, public.u.c),"
        " NOT restored; purgeable in 27.5 day(s) (retention 30 days)",
        "b: archive of rollback run r2, 40.25 day(s) old, 10 row(s) in 2 table(s)/column(s) (public.t, public.u.c),"
        " PARTLY restored; purgeable in 0 day(s) (retention 30 days)",
        "b: archive of rollback run r3, 2.5 day(s) old, 10 row(s) in 2 table(s)/column(s) (public.t, public.u.c),"
        " restored 2026-11-30T00:00:00Z by run d1,d2",
        "b: 1 purged archive(s) listed in the manifest",
        "c: no rollback archive",
        "c: 1 purged archive(s) listed in the manifest",
    ]


@pytest.mark.parametrize(("check_mode", "done"), [(True, "(would be purged)"), (False, "purged")])
def test_purge_lines(check_mode, done):
    databases = [
        {"name": "a", "would_purge": [{"run_id": "r1", "age_days": 31.5, "rows": 3, "restored": "no"}]},
        {"name": "b", "failed": True, "msg": "refused"},
    ]
    assert purge_lines(databases, check_mode) == [f"a: rollback run r1, 31.5 day(s) old, 3 row(s), restored: no {done}"]


def test_restore_refusals_keep_the_runs_not_accepted_in_order_once_each():
    databases = [
        {"name": "a", "msg": "m1", "restore": {"conflicting_runs": ["r1"]}},
        {"name": "b", "msg": "m2", "restore": None},
        {"name": "c", "msg": "m3", "restore": {"conflicting_runs": ["r2", "r1", "r3", "r2"]}},
    ]
    assert restore_refusals(databases, []) == [
        {"name": "a", "msg": "m1", "runs": ["r1"]},
        {"name": "c", "msg": "m3", "runs": ["r2", "r1", "r3"]},
    ]
    assert restore_refusals(databases, ["r1", "r3"]) == [{"name": "c", "msg": "m3", "runs": ["r2"]}]
    assert restore_refusals(databases, ["r1", "r2", "r3"]) == []


# --- the plugin and its documentation ---------------------------------------------------------------------


def test_every_filter_has_its_documentation_next_to_the_plugin():
    filters = load_filters()
    documented = {path.stem for path in FILTERS.glob("*.yml")}
    assert set(filters) == documented
    kinds = yaml.safe_load((FILTERS / "rollback_audit_databases.yml").read_text())["DOCUMENTATION"]["options"]["kind"]
    assert kinds["choices"] == list(KINDS)


def test_ansible_doc_finds_every_filter_through_ansible_cfg():
    names = sorted(load_filters())
    done = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-doc"), "-t", "filter", "--json", *names],
        cwd=ROOT,
        env={**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg")},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    docs = json.loads(done.stdout)
    assert sorted(docs) == names
    for name, doc in docs.items():
        assert doc["doc"]["name"] == name
        assert doc["doc"]["options"]["_input"]["required"] is True
        assert doc["examples"].strip() and doc["return"]["_value"]["description"]
