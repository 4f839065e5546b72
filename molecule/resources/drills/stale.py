"""The stale-instance drill's third app instance: scraped by Prometheus, absent from the configured status URLs,
and cut off from Unleash after it fetched the flag on, so that it keeps serving the cached "on" value.

    python -m drills instance SCENARIO start   # app-3 up on the new path, registered in Prometheus
    python -m drills instance SCENARIO cut     # its link to Unleash goes down: it keeps the cached "on"
    python -m drills instance SCENARIO write   # documents written through it (the new path, while it is stale)
    python -m drills instance SCENARIO fix     # the link is back: it fetches the flag again
    python -m drills instance SCENARIO stop    # deregistered from Prometheus and stopped

Its processes are services of the stack's run folder (`app-3`, `app-3-flag-link`): `rehearsal down`
finds them if a drill left them. What each step saw goes to the scenario's state (`third_instance`).
"""

from __future__ import annotations

import os
import sys
import time

import requests

from drills import context
from drills.context import DrillError, Scenario
from rehearsal import appdb, prometheus
from rehearsal.postgres import free_port

NAME = "app-3"
LINK = "app-3-flag-link"
HOST = "127.0.0.1"


def _say(text: str) -> None:
    print(f"drill: {text}", flush=True)


def _base_env() -> dict[str, str]:
    """The drill's environment without another instance's settings or the rollback's secrets (as the stack does)."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("TE_", "SINK_", "FF_", "ROLLBACK_"))}


def _config(the_stack):
    return the_stack.run_dir / "prometheus" / "prometheus.yml"


def _until(check, what: str, timeout: float = 60, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except (requests.RequestException, ValueError) as exc:
            last = f"{type(exc).__name__}"
        time.sleep(interval)
    raise DrillError(f"{NAME}: {what} within {timeout:.0f} s (last seen: {last})")


def status(the_stack, scenario: Scenario) -> dict:
    port = scenario.state["third_instance"]["port"]
    return requests.get(f"http://{HOST}:{port}/status", timeout=5).json()


def _record(scenario: Scenario, **changes) -> dict:
    third = {**scenario.state.get("third_instance", {}), **changes}
    scenario.update(third_instance=third)
    return third


def _start_link(the_stack, port: int) -> None:
    upstream = the_stack.unleash.url.split("://", 1)[1]
    link = the_stack.service(LINK)
    folder = the_stack.run_dir / NAME
    folder.mkdir(parents=True, exist_ok=True)
    env = {**_base_env(), "PYTHONPATH": f"{context.ROOT / 'molecule' / 'resources'}"}
    link.start(
        [sys.executable, "-m", "drills.link", "--listen", str(port), "--upstream", upstream], env=env, cwd=folder
    )
    _until(lambda: link.is_running() and _port_open(port), f"its link to Unleash did not listen on {port}", 15)


def _port_open(port: int) -> bool:
    import socket  # noqa: PLC0415

    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((HOST, port)) == 0


def start(the_stack, scenario: Scenario) -> dict:
    """app-3 on the new path (the flag is on after deploy), scraped by Prometheus as job transformation-engine."""
    stop(the_stack, scenario, quiet=True)
    port, link_port = free_port(HOST), free_port(HOST)
    _record(scenario, port=port, link_port=link_port, writes=[])
    _start_link(the_stack, link_port)
    argv = [
        sys.executable, "-m", "rehearsal.app", "--instance", NAME, "--port", str(port),
        "--unleash-url", f"http://{HOST}:{link_port}",
        "--refresh-interval", str(the_stack.state["refresh_interval"]),
        "--cache-dir", str(the_stack.run_dir / NAME / "unleash-cache"),
    ]  # fmt: skip
    env = {
        **_base_env(),
        "PYTHONPATH": str(context.ROOT),
        "TE_DB_DSN": the_stack.dsn(role=appdb.APP_RW),
        "TE_UNLEASH_TOKEN": the_stack.unleash.client_token,
    }
    the_stack.service(NAME).start(argv, env=env, cwd=context.ROOT)
    _until(lambda: status(the_stack, scenario).get("path") == "new", "did not come up on the new path", 60)
    prometheus.register(_config(the_stack), NAME, f"{HOST}:{port}")
    prom = the_stack.url("prometheus")
    _until(lambda: f"{HOST}:{port}" in prometheus.targets_up(prom), "Prometheus did not list it as a target", 60)
    seen = status(the_stack, scenario)
    _say(f"{NAME} on {HOST}:{port}: path {seen['path']}, registered in Prometheus, not in APP_STATUS_URLS")
    return _record(scenario, started=seen)


def cut(the_stack, scenario: Scenario) -> dict:
    """Its link to Unleash goes down: fetches fail, the SDK keeps the flag it has (on)."""
    the_stack.service(LINK).stop()
    interval = float(the_stack.state["refresh_interval"])
    first = status(the_stack, scenario)["last_refresh"]
    time.sleep(3 * interval + 0.5)
    seen = status(the_stack, scenario)
    if seen["last_refresh"] != first or seen["path"] != "new":
        raise DrillError(f"{NAME} still fetches the flag or left the new path after its link was cut: {seen}")
    _say(f"{NAME} cut off from Unleash: still {seen['path']}, last fetch {seen['last_refresh']}")
    return _record(scenario, cut_at=time.time(), cut=seen)


def write(the_stack, scenario: Scenario, count: int) -> dict:
    """Documents through the stale instance: it still takes the new path, and the schema is intact."""
    port = scenario.state["third_instance"]["port"]
    written = list(scenario.state["third_instance"].get("writes", []))
    for number in range(count):
        ref = f"drill-{scenario.name}-{NAME}-{time.time():.0f}-{number}"
        response = requests.post(
            f"http://{HOST}:{port}/transform", json={"external_ref": ref, "payload": {}}, timeout=15
        )
        body = response.json()
        if response.status_code != 200 or body.get("path") != "new":
            raise DrillError(f"{NAME} did not write through the new path: {response.status_code} {body}")
        written.append({"external_ref": ref, "document_id": body["document_id"]})
    _say(f"{NAME} wrote {count} documents through the new path while stale")
    return _record(scenario, writes=written)


def fix(the_stack, scenario: Scenario) -> dict:
    """The link is back: the SDK's next fetch brings the flag as it is now."""
    third = scenario.state["third_instance"]
    fixed_at = time.time()
    _start_link(the_stack, third["link_port"])

    def fetched_again():
        seen = status(the_stack, scenario)
        fetched = context.parse_utc(seen["last_refresh"]) if seen.get("last_refresh") else 0
        return seen if fetched > fixed_at else None

    seen = _until(fetched_again, "did not fetch the flag again after its link came back", 60)
    _say(f"{NAME} fetched the flag again: path {seen['path']}, last fetch {seen['last_refresh']}")
    return _record(scenario, fixed_at=fixed_at, fixed=seen)


def stop(the_stack, scenario: Scenario | None = None, quiet: bool = False) -> dict:
    """Deregister and stop app-3 (also what every drill's prepare does, in case a drill left it running)."""
    if NAME in prometheus.read_targets(_config(the_stack)):
        prometheus.deregister(_config(the_stack), NAME)
    for name in (NAME, LINK):
        the_stack.service(name).stop()
    if not quiet:
        _say(f"{NAME} stopped and removed from Prometheus' targets")
    return scenario.state.get("third_instance", {}) if scenario and scenario.state_file.exists() else {}


ACTIONS = ("start", "cut", "write", "fix", "stop")


def act(name: str, action: str, count: int = 5) -> dict:
    scenario = Scenario(name)
    the_stack = context.stack()
    if action == "start":
        return start(the_stack, scenario)
    if action == "cut":
        return cut(the_stack, scenario)
    if action == "write":
        return write(the_stack, scenario, count)
    if action == "fix":
        return fix(the_stack, scenario)
    if action == "stop":
        return stop(the_stack, scenario)
    raise DrillError(f"action is one of {', '.join(ACTIONS)}")
