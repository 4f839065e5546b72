"""The way forward's plain logic: which archives a purge takes or refuses, how runs are grouped, what a conflict
report says (and never says). The SQL side is tested against PostgreSQL in tests/integration/test_schema_restore.py
and test_archive_retention.py."""

from __future__ import annotations

import pytest
from ansible.module_utils.archive_retention import MIN_RETENTION_DAYS, _check_params, group_archives, purge_selection
from ansible.module_utils.pg_options import rollback_archive_spec, schema_upgrade_spec
from ansible.module_utils.restore_manifest import describe_conflicts, outcome_of
from ansible.module_utils.restore_transaction import conflicts_message, restore_summary

DAY = 86400.0


def entry(run_id: str, table: str, column: str | None = None, *, rows: int = 10, age_days: float = 1.0, **extra):
    return {
        "id": extra.pop("id", 1),
        "run_id": run_id,
        "archived_at": f"2026-11-{int(28 - age_days):02d}T00:00:00+00:00",
        "age_seconds": age_days * DAY,
        "from_revision": "0002",
        "to_revision": "0001",
        "source_schema": "public",
        "source_table": table,
        "source_column": column,
        "archive_table": f"{run_id}__{table}" + (f"__{column}" if column else ""),
        "key_columns": ["id"],
        "row_count": rows,
        "restored_at": None,
        "restore_run_id": None,
        "restored_rows": None,
        "restore_conflict_rows": None,
        "restore_outcome": None,
        "purged_at": None,
        "purge_run_id": None,
        **extra,
    }


def test_archives_are_grouped_by_run_with_rows_and_whether_restored():
    runs = group_archives(
        [
            entry("rb-1", "transformation_jobs", rows=20, age_days=3),
            entry(
                "rb-1",
                "documents",
                "transform_version",
                rows=40,
                age_days=3,
                restored_at="2026-11-27",
                restored_rows=40,
            ),
            entry(
                "rb-2",
                "transformation_jobs",
                rows=5,
                age_days=1,
                restored_at="x",
                restore_run_id="d-2",
                restored_rows=5,
            ),
        ]
    )
    assert [(r["run_id"], r["rows"], r["restored"], r["age_days"]) for r in runs] == [
        ("rb-1", 60, "partly", 3.0),
        ("rb-2", 5, "yes", 1.0),
    ]
    assert runs[1]["restore_run_ids"] == ["d-2"]
    assert [t["source"] for t in runs[0]["tables"]] == [
        "public.transformation_jobs",
        "public.documents.transform_version",
    ]


@pytest.mark.parametrize(
    ("restored", "age", "named", "purged", "refused"),
    [
        (False, 31, False, True, False),  # older than the retention: purged by age, restored or not
        (True, 31, False, True, False),
        (False, 3, False, False, False),  # younger: not selected by age
        (True, 3, False, False, False),
        (True, 3, True, True, False),  # named and restored: purged at any age
        (False, 3, True, False, True),  # named, unrestored and young: refused
        (False, 31, True, True, False),  # named, unrestored but old: purged
    ],
)
def test_purge_selection(restored, age, named, purged, refused):
    run = group_archives([entry("rb-1", "t", age_days=age, restored_at="2026-11-27" if restored else None)])
    chosen, refusals = purge_selection(run, retention_days=30, run_ids=["rb-1"] if named else [])
    assert bool(refusals) is refused
    assert bool(chosen) is (purged or refused)
    if refused:
        assert refusals == [
            "the archive of rollback run rb-1 is not restored and only 3 day(s) old (retention 30 days): restore "
            "it with deploy.yml, or purge it after 30 days"
        ]


def test_an_already_purged_run_is_not_selected_again():
    run = group_archives([entry("rb-1", "t", age_days=40, purged_at="2026-11-01")])
    assert purge_selection(run, retention_days=30, run_ids=[]) == ([], [])
    assert purge_selection(run, retention_days=30, run_ids=["rb-1"]) == ([], [])


def params(**options) -> dict:
    values = {name: spec.get("default") for name, spec in rollback_archive_spec()["argument_spec"].items()}
    return {**values, **options}


def test_the_retention_has_a_floor_and_run_ids_need_purge():
    assert _check_params(params()) is None
    assert MIN_RETENTION_DAYS == 7
    assert "below the minimum of 7" in _check_params(params(retention_days=6))
    assert "set purge true" in _check_params(params(run_ids=["rb-1"]))
    assert "not a rollback run id" in _check_params(params(purge=True, run_ids=["x" * 41]))


def report(source: str, run_id: str = "rb-1", **values) -> dict:
    return {
        "id": 1,
        "run_id": run_id,
        "source": source,
        "restored": 0,
        "already_present": 0,
        "conflict_rows": 0,
        "conflicts": [],
        "predicted": False,
        "column": None,
        **values,
    }


def test_a_conflict_report_names_table_kind_count_and_a_few_keys_only():
    reports = [
        report(
            "public.transformation_jobs",
            restored=19,
            conflict_rows=12,
            conflicts=[{"kind": "different", "rows": 12, "keys": [f"id={n}" for n in range(10)]}],
        ),
        report(
            "public.documents.priority",
            column="priority",
            conflict_rows=1,
            conflicts=[{"kind": "invalid_value", "rows": 1, "keys": ["id=7"], "column": "priority"}],
        ),
    ]
    assert describe_conflicts(reports) == (
        "public.transformation_jobs: 12 different (id=0, id=1, id=2, ...); "
        "public.documents.priority: 1 invalid_value (id=7)"
    )
    summary = restore_summary(reports, [], set())
    assert (summary["conflict_rows"], summary["conflicting_runs"], summary["accepted"]) == (13, ["rb-1"], [])
    message = conflicts_message(summary, ["rb-1"])
    assert message.startswith("13 archived row(s) of rollback run rb-1 cannot be restored")
    assert "accept_conflicts [rb-1]" in message and "nothing was changed" in message
    assert outcome_of(reports[0], accepted=True) == (
        "restored 19 row(s); 12 conflicting row(s) left in the archive, accepted"
    )
    assert (
        outcome_of(report("t", restored=5, already_present=2), accepted=False) == "restored 5 row(s), 2 already present"
    )


def test_the_new_specs_import_nothing_optional_and_default_safely():
    upgrade = schema_upgrade_spec()["argument_spec"]
    assert upgrade["revision"]["default"] == "heads" and upgrade["restore"]["default"] is True
    assert upgrade["accept_conflicts"]["default"] == [] and upgrade["dsn"]["no_log"] is True
    assert rollback_archive_spec()["argument_spec"]["purge"]["default"] is False
