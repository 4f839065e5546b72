"""`up` names the service that failed, recovers what died, makes tenants; `down` leaves no process behind.

This module brings up a second, private stack (the shared `stack` fixture must stay up for the
other tests), through the command line as an operator would.
"""

import contextlib
import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from rehearsal import appdb
from rehearsal.postgres import free_port
from rehearsal.stack import DEFAULT_PORTS, ROOT, Stack, StackError
from tests.fixtures.stack import private_run_dir

pytestmark = pytest.mark.integration


def cli(run_dir, *args):
    return subprocess.run(
        [sys.executable, "-m", "rehearsal", "--run-dir", str(run_dir), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=180,
        check=False,
    )


def listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture
def run_dir():
    path = Path(private_run_dir())
    yield path
    Stack(path).down()
    shutil.rmtree(path, ignore_errors=True)


def test_up_failure_recovery_tenants_and_down(run_dir):
    stack = Stack(run_dir)
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    ports = {name: free_port() for name in DEFAULT_PORTS}
    ports["app-1"] = blocker.getsockname()[1]
    pids = {}
    bystander = None
    try:
        # Someone else holds app-1's port: up fails naming app-1 and quoting its log.
        with pytest.raises(StackError) as failure:
            stack.up(ports=ports, timeout=30)
        assert failure.value.service == "app-1"
        assert "app-1 did not come up" in str(failure.value)
        assert "address already in use" in str(failure.value).lower()
        blocker.close()

        # The port is free again: the same run folder comes up on its recorded ports, with 2 tenants.
        proc = cli(run_dir, "up", "--tenants", "2")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert stack.ports == ports
        env = json.loads(cli(run_dir, "env", "--format", "json").stdout)
        assert env["ROLLBACK_TENANT_DBS"] == "tenant_001,tenant_002"
        for tenant in ("tenant_001", "tenant_002"):
            dsn = stack.dsn(tenant)
            assert appdb.current_revision(dsn) == "0001_legacy"
            conn = stack.cluster.execute("SELECT count(*) FROM documents", dbname=tenant)
            assert conn == [(appdb.SEED_ROWS,)]

        # A crashed instance is started again by up; what runs is left alone.
        pids = {name: item["pid"] for name, item in stack.status().items()}
        psutil.Process(pids["app-2"]).send_signal(signal.SIGKILL)
        while not gone(pids["app-2"]):
            time.sleep(0.05)
        timings = stack.up(tenants=1)
        assert timings["app-2"] > 0
        assert all(timings[name] == 0.0 for name in ("postgres", "unleash", "prometheus", "sinks", "app-1"))
        assert stack.env()["ROLLBACK_TENANT_DBS"] == "tenant_001"
        pids["app-2-again"] = stack.status()["app-2"]["pid"]
        # Someone follows a log of the stack: `down` must not touch that process.
        bystander = subprocess.Popen(["sh", "-c", f"tail -f {run_dir}/logs/app-1.log > /dev/null"])
    finally:
        blocker.close()
        proc = cli(run_dir, "down")
        bystander_survived = bystander is not None and bystander.poll() is None
        if bystander is not None:
            bystander.terminate()
            bystander.wait(5)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "no process left" in proc.stdout
    assert stack.leftover_processes() == []
    assert all(gone(pid) for pid in pids.values() if pid), pids
    assert not any(listening(port) for port in ports.values()), ports
    assert bystander_survived, "down killed a process that only mentions the run folder"
    status = cli(run_dir, "status")
    assert status.returncode == 1
    assert "DOWN" in status.stdout
    # down twice is fine
    assert cli(run_dir, "down").returncode == 0


def test_env_before_up_says_what_to_do(tmp_path):
    proc = cli(tmp_path / "nothing-here", "env")
    assert proc.returncode == 1
    assert "run `python -m rehearsal up` first" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["up", "--tenants", "-1"], "tenants must be 0 or more"),
        (["up", "--refresh-interval", "0"], "refresh_interval must be a positive number"),
        (["load", "--rate", "0", "--urls", "http://127.0.0.1:9"], "rate must be a positive number"),
        (["load", "--urls", "ftp://127.0.0.1:9"], "is not an http:// base URL"),
    ],
)
def test_bad_input_fails_in_one_line_and_changes_nothing(tmp_path, args, message):
    run_dir = tmp_path / "run"
    proc = cli(run_dir, *args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (run_dir / "state.json").exists()
