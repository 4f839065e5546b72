"""rehearsal/unleash.py: the launcher of the real Unleash that the tests and the rehearsal stack share."""

import os
import subprocess
import sys
import textwrap

import pytest
import requests

from rehearsal.unleash import UnleashError, UnleashServer

pytestmark = pytest.mark.integration


def _alive(pid: int) -> bool:
    """A process that exists and is not a zombie (an orphan's zombie waits for init to reap it)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_tokens_are_private_and_rejected_when_wrong(unleash_server):
    for name in ("admin.token", "client.token"):
        assert (unleash_server.workdir / name).stat().st_mode & 0o777 == 0o600
    assert unleash_server.admin_token.startswith("*:*.")
    assert unleash_server.client_token.startswith("default:production.")
    features = unleash_server.url + "/api/admin/projects/default/features"
    assert requests.get(features, headers={"Authorization": unleash_server.admin_token}, timeout=10).status_code == 200
    assert requests.get(features, headers={"Authorization": "*:*.wrong"}, timeout=10).status_code == 401
    # The client token reads the client API (what the Python SDK polls) but not the admin API.
    client = {"Authorization": unleash_server.client_token}
    assert requests.get(unleash_server.url + "/api/client/features", headers=client, timeout=10).status_code == 200
    assert requests.get(features, headers=client, timeout=10).status_code in (401, 403)


def test_a_new_object_on_the_workdir_reads_state_back(unleash_server):
    other = UnleashServer(unleash_server.workdir, "")
    assert other.is_running()
    assert other.url == unleash_server.url
    assert other.admin_token == unleash_server.admin_token
    other.set_flag(True)
    assert unleash_server.flag_enabled() is True
    other.set_flag(False)
    assert unleash_server.flag_enabled() is False


def test_detached_server_outlives_its_starter_and_stops_by_pid(pg_cluster, tmp_path):
    """Started by a process that exits, stopped from a fresh object: no node process left behind."""
    pg_cluster.create_database("unleash_detached")
    workdir = tmp_path / "unleash"
    starter = textwrap.dedent(
        f"""
        from pathlib import Path
        from rehearsal.unleash import UnleashError, UnleashServer
        UnleashServer(Path({str(workdir)!r}), {pg_cluster.store_url("unleash_detached")!r}).start()
        """
    )
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    subprocess.run([sys.executable, "-c", starter], cwd=root, check=True, timeout=120)
    server = UnleashServer(workdir, "")
    pid = server.pid()
    try:
        assert server.is_running()
        assert requests.get(server.url + "/health", timeout=5).json() == {"health": "GOOD"}
    finally:
        server.stop()
    assert not server.is_running()
    assert not _alive(pid)
    assert not server.pidfile.exists()
    server.stop()  # a second stop is a no-op
    # A restart on the same workdir keeps its URL (when the port is free) and its tokens.
    again = UnleashServer(workdir, pg_cluster.store_url("unleash_detached"))
    again.start()
    try:
        assert again.url == server.url
        assert requests.get(
            again.url + "/api/admin/projects", headers={"Authorization": again.admin_token}, timeout=5
        ).ok
    finally:
        again.stop()
    assert not again.is_running()


def test_a_database_of_another_workdir_is_refused_clearly(unleash_server, pg_cluster, tmp_path):
    # Unleash creates start-up tokens only in a database without tokens: ours would be refused.
    stranger = UnleashServer(tmp_path / "other", pg_cluster.store_url("unleash"))
    with pytest.raises(UnleashError, match="already holds API tokens"):
        stranger.start()
    assert not stranger.is_running()
    assert unleash_server.is_running()
