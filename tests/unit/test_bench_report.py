"""The benchmark's report and profile parsing, without services (no time is asserted anywhere)."""

from bench.common import summary
from bench.report import write_report
from bench.scenarios import STEPS, parse_profile, task_actions, timeline

RECAP = """\
PLAY RECAP *********************************************************************
local-app                  : ok=35   changed=5    unreachable=0    failed=0

TASKS RECAP ********************************************************************
Saturday 28 November 2026  00:59:15 +0000 (0:00:00.093)       0:00:28.401 *****
===============================================================================
rollback_preflight : Validating arguments against arg spec 'main' - Validate the rollback request --- 0.08s
rollback_preflight : Read the flag's state (changes nothing) ------------ 2.38s
rollback_schema : Revert the schema of every database ------------------- 1.83s
rollback_flag : Record the flag change in the audit --------------------- 0.10s
rollback_verify : Judge the flag, the schema, the instances' health and the 5xx ratio --- 2.40s
"""


def test_task_actions_reads_the_roles():
    actions = task_actions()
    assert actions["Turn the flag off"] == "feature_flag"
    assert actions["Revert the schema of every database"] == "schema_migration"
    assert actions["Wait until every application instance is on the legacy path"] == "flag_propagation"
    assert actions["Record the flag change in the audit"] == "set_stats"
    assert actions["Send the summary to every channel"] == "notification"


def test_parse_profile_keeps_order_and_names_the_modules():
    tasks = parse_profile(RECAP, task_actions())
    assert [t["action"] for t in tasks] == [
        "validate_argument_spec",
        "feature_flag",
        "schema_migration",
        "set_stats",
        "app_verify",
    ]
    assert tasks[1] == {
        "task": "rollback_preflight : Read the flag's state (changes nothing)",
        "action": "feature_flag",
        "seconds": 2.38,
    }
    assert parse_profile("no recap here", {}) == []


def test_summary_and_timeline():
    assert summary([3.0, 1.0, 2.0, None]) == {"median": 2.0, "min": 1.0, "max": 3.0, "n": 3}
    assert summary([])["median"] is None
    samples = [
        {"t": 100.0 + i * 0.05, "status": 200 if i != 3 else 503, "latency_ms": float(i), "path": "new"}
        for i in range(10)
    ]
    tl = timeline(samples, [(100.1, True, True, 2)], origin=100.0, width=0.25)
    assert tl["t"] == [0.0, 0.25]
    assert sum(tl["failed"]) == 1
    assert tl["locked"] == [True, False]
    assert tl["queued"] == [2, 0]


def _stat(value):
    return {"median": value, "min": value * 0.9, "max": value * 1.1, "n": 3}


def _side(wall, with_step_keys=True):
    side = {
        key: _stat(wall * f)
        for key, f in (
            ("wall", 1),
            ("cpu", 0.4),
            ("propagation_wait", 0.05),
            ("propagation_step", 0.1),
            ("excl_wait", 0.95),
            ("excl_step", 0.9),
            ("launch_to_first_step", 0.05),
            ("in_process", 0.7),
        )
    }
    side["steps"] = {name: _stat(wall / 8) for name in STEPS} if with_step_keys else {}
    return side


def test_report_renders_every_part(tmp_path):
    phase = {
        "start": 0.0,
        "end": 10.0,
        "requests": 2000,
        "failed": 0,
        "p50_ms": 3.0,
        "p99_ms": 20.0,
        "max_ms": 40.0,
        "by_path": {"new": 1000, "legacy": 1000},
    }
    points = [
        {"databases": n, "runs": 3, "playbook": _side(20 + n), "floor": _side(4 + n / 10), "ratio": {"wall": 2.0}}
        for n in (1, 10, 100)
    ]
    results = {
        "machine": {
            "nproc": 2,
            "cpu_model": "AMD EPYC",
            "load_average_start": [1, 2, 3],
            "memory_gb": 23.5,
            "kernel": "6",
            "python": "3.11",
            "ansible_core": "2.19",
            "commit": "abc",
            "started_at": "now",
            "load_average_end": [1, 1, 1],
        },
        "options": {"runs": 3},
        "p1": {
            "runs": 3,
            "playbook": _side(20),
            "floor": _side(4),
            "ratio": {"wall": 5.0, "cpu": 6.0, "excl_wait": 5.2},
        },
        "p2": {
            "points": points,
            "fit": {
                "playbook": {"slope": 1.0, "intercept": 19.0, "endpoints_slope": 1.0},
                "floor": {"slope": 0.1, "intercept": 4.0, "endpoints_slope": 0.1},
            },
        },
        "p3": {
            "poll_seconds": 0.02,
            "points": [
                {
                    "refresh": 1.0,
                    "target": 2.0,
                    "last": _stat(1.4),
                    "first": _stat(1.2),
                    "write": _stat(0.01),
                    "within_target": 5,
                    "runs": 5,
                    "samples": [1.4] * 5,
                }
            ],
        },
        "p4": {
            "rate": 200.0,
            "target_increase_ms": 2100.0,
            "phases": {"before": phase, "schema step": phase},
            "lock_window": {**phase, "lock_seconds": 0.01, "max_queued_sessions": 1},
            "during_rollback": phase,
            "p99_increase_ms": 5.0,
            "failed_total": 0,
            "requests_total": 5000,
            "late_over_50ms": 0,
            "rollback": {
                "launched": 0.0,
                "exited": 20.0,
                "wall": 20.0,
                "propagation_wait": 0.1,
                "schema_db_seconds": [0.1],
                "steps": {name: {"start": i * 3.0, "end": i * 3.0 + 2.5} for i, name in enumerate(STEPS)},
            },
            "timeline": {
                "width": 0.25,
                "t": [0.0, 0.25],
                "rate": [200.0, 200.0],
                "failed": [0, 0],
                "p99_ms": [20.0, None],
                "legacy_share": [0.0, 1.0],
                "queued": [0, 1],
                "locked": [False, True],
            },
        },
        "profile": {
            "runs": 1,
            "wall": _stat(20.0),
            "launch_to_first_step": _stat(1.0),
            "last_step_to_exit": _stat(0.1),
            "total_task_seconds": 18.0,
            "tasks": [{"task": "a : b", "action": "uri", "seconds": 1.0}],
            "slowest": [{"task": "a : b", "action": "uri", "seconds": 1.0}],
            "in_process_actions": ["feature_flag"],
        },
        "overhead": {
            "pipelining_false": {"wall": 5.0, "cpu": 3.0, "module_task": _stat(0.5), "controller_task": _stat(0.02)}
        },
        "stress": {
            "databases": 100,
            "runs": 3,
            "ok": 1,
            "hung": 1,
            "failed": 1,
            "wall": _stat(20.0),
            "schema": _stat(8.0),
            "raw": [
                {"run": 1, "outcome": "ok", "wall": 20.0, "schema": 8.0},
                {"run": 2, "outcome": "hung", "error": "rollback.yml did not end within 150 s"},
                {"run": 3, "outcome": "failed", "error": "rollback.yml failed (rc 2)"},
            ],
        },
    }
    write_report(results, tmp_path)
    text = (tmp_path / "RESULTS.md").read_text()
    for heading in ("## Summary", "## P1", "## P2", "## P3", "## P4", "## Profile", "## Stress"):
        assert heading in text
    assert "**1 run(s) hung**; 1 failed; 1 succeeded" in text
    assert "- run 2: hung: rollback.yml did not end within 150 s" in text
    assert "2 x AMD EPYC" in text
    for plot in ("fanout.png", "timeline.png", "p1_steps.png"):
        assert (tmp_path / plot).read_bytes().startswith(b"\x89PNG")
