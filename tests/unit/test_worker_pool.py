"""The fork-safe worker pool (plugins/module_utils/worker_pool.py): every job reported, hangs killed.

Workers are new interpreters, so these tests can run from pytest's own process, which has threads
(a fork pool started here could deadlock). The hung job really hangs (it waits on an Event forever);
the watchdog's budget is what the test sets, not a guess at the machine's speed.
"""

from __future__ import annotations

import threading

import pytest
from ansible.module_utils.worker_pool import run_jobs

TARGET = "tests.unit.pool_targets:work"


def failed(job: dict, reason: str) -> dict:
    return {"name": job["name"], "failed": True, "reason": reason}


def budget_of(job: dict) -> float:
    return job.get("budget", 60.0)


@pytest.fixture(autouse=True)
def a_thread_in_the_parent():
    """The caller has another thread, as Ansible's worker and pytest's fixtures do."""
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait, daemon=True)
    thread.start()
    yield
    stop.set()


def test_results_come_back_in_job_order_from_several_workers():
    jobs = [{"name": f"db{i}", "kind": "ok"} for i in range(7)]
    results = run_jobs(TARGET, jobs, 3, budget_of, failed)
    assert [r["name"] for r in results] == [j["name"] for j in jobs]
    assert len({r["pid"] for r in results}) == 3  # three workers took the seven jobs in turn


def test_what_a_job_prints_does_not_reach_the_results():
    results = run_jobs(TARGET, [{"name": "a", "kind": "print"}, {"name": "b", "kind": "ok"}], 2, budget_of, failed)
    assert [r["kind"] for r in results] == ["print", "ok"]


def test_a_hung_job_is_stopped_by_the_watchdog_and_every_other_job_is_still_reported():
    jobs = [
        {"name": "before", "kind": "ok"},
        {"name": "stuck", "kind": "hang", "budget": 1.0},
        *({"name": f"after{i}", "kind": "ok"} for i in range(4)),
    ]
    results = run_jobs(TARGET, jobs, 2, budget_of, failed)
    assert [r["name"] for r in results] == [j["name"] for j in jobs]
    assert results[1]["failed"] and "did not finish within 1 s" in results[1]["reason"]
    assert all(not r.get("failed") for i, r in enumerate(results) if i != 1)


def test_a_worker_that_dies_is_reported_and_replaced():
    jobs = [{"name": "first", "kind": "ok"}, {"name": "dies", "kind": "die"}, {"name": "last", "kind": "ok"}]
    results = run_jobs(TARGET, jobs, 1, budget_of, failed)
    assert results[1]["failed"] and "exit code 3" in results[1]["reason"]
    assert results[0]["kind"] == "ok" and results[2]["kind"] == "ok"


def test_workers_that_cannot_start_fail_every_job_without_trying_each():
    jobs = [{"name": f"db{i}", "kind": "ok"} for i in range(20)]
    results = run_jobs("tests.unit.pool_targets:no_such_function", jobs, 2, budget_of, failed)
    assert all(r["failed"] for r in results)
    assert "AttributeError" in results[0]["reason"]
    assert sum(r["reason"].startswith("not tried") for r in results) >= 16


def test_no_jobs_start_no_worker():
    assert run_jobs(TARGET, [], 4, budget_of, failed) == []
