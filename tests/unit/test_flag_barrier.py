"""The propagation barrier against a tiny stand-in of the instances' /status (docs/interfaces.md)."""

import time

import pytest
from ansible.module_utils.flag_barrier import BarrierConfigError, BarrierTimeout, wait_for_path
from ansible.module_utils.http_client import HttpClient

from rehearsal.postgres import free_port
from tests.fakes.fixtures import status_fake  # noqa: F401 - fixture


def client(**kwargs):
    return HttpClient(**{"timeout": 2, "max_wait": 0, **kwargs})


def test_passes_at_once_when_every_instance_is_legacy(status_fake):  # noqa: F811
    urls = [status_fake.add(f"app-{i}", path="legacy") for i in (1, 2)]
    result = wait_for_path(client(), urls, timeout=5, interval=0.1)
    assert result["rounds"] == 1
    assert [i["path"] for i in result["instances"]] == ["legacy", "legacy"]
    assert [i["instance"] for i in result["instances"]] == ["app-1", "app-2"]
    assert all(i["last_refresh"] for i in result["instances"])
    assert result["elapsed_seconds"] >= 0


def test_waits_until_the_last_instance_switches(status_fake):  # noqa: F811
    urls = [status_fake.add("app-1", path="legacy"), status_fake.add("app-2")]
    status_fake.switch_after("app-2", 0.6)
    result = wait_for_path(client(), urls, timeout=10, interval=0.1)
    assert result["elapsed_seconds"] >= 0.6
    assert result["rounds"] > 1
    assert {i["path"] for i in result["instances"]} == {"legacy"}


def test_timeout_names_the_instances_still_on_the_new_path(status_fake):  # noqa: F811
    urls = [status_fake.add("app-1", path="legacy"), status_fake.add("app-2")]
    with pytest.raises(BarrierTimeout) as caught:
        wait_for_path(client(), urls, timeout=0.5, interval=0.1)
    message = str(caught.value)
    assert "still on another path: app-2" in message
    assert "path=new" in message
    assert "app-1" not in message
    assert "\n" not in message
    assert caught.value.result["elapsed_seconds"] >= 0.5


def test_unreachable_and_broken_instances_are_named(status_fake):  # noqa: F811
    dead = f"http://127.0.0.1:{free_port()}/status"
    sick = status_fake.add("app-2", path="legacy")
    status_fake.instances["app-2"].status = 500
    mute = status_fake.add("app-3", path="legacy")
    status_fake.instances["app-3"].omit_path = True
    with pytest.raises(BarrierTimeout) as caught:
        wait_for_path(client(), [dead, sick, mute], timeout=0.4, interval=0.1)
    message = str(caught.value)
    assert dead in message
    assert "unreadable" in message
    assert "could not connect" in message
    assert "answered 500" in message
    assert "reports no 'path'" in message


def test_a_custom_path_key_and_value(status_fake):  # noqa: F811
    url = status_fake.add("app-1", path="legacy")
    result = wait_for_path(client(), [url], expected_path="legacy", path_key="path", timeout=2, interval=0.1)
    assert result["instances"][0]["path"] == "legacy"
    with pytest.raises(BarrierTimeout, match="reports no 'engine'"):
        wait_for_path(client(), [url], path_key="engine", timeout=0.3, interval=0.1)


def test_polls_instances_concurrently(status_fake):  # noqa: F811
    urls = [status_fake.add(f"app-{i}", path="legacy") for i in range(8)]
    for name in status_fake.instances:
        status_fake.instances[name].delay = 0.5
    started = time.monotonic()
    result = wait_for_path(client(), urls, timeout=20, interval=0.1)
    assert result["rounds"] == 1
    assert time.monotonic() - started < 3.5  # one after another would take 4 s or more


def test_cache_ttl_alone_waits_the_ttl():
    started = time.monotonic()
    result = wait_for_path(client(), [], cache_ttl=0.5, timeout=5, interval=0.1)
    assert time.monotonic() - started >= 0.5
    assert result["instances"] == []
    assert result["waited_for_cache_ttl"] == 0.5


def test_cache_ttl_and_status_urls_both_hold(status_fake):  # noqa: F811
    url = status_fake.add("app-1", path="legacy")
    result = wait_for_path(client(), [url], cache_ttl=0.4, timeout=5, interval=0.1)
    assert result["elapsed_seconds"] >= 0.4


def test_check_mode_polls_once_and_never_waits(status_fake):  # noqa: F811
    url = status_fake.add("app-1")
    result = wait_for_path(client(), [url], timeout=30, interval=5, cache_ttl=20, check_mode=True)
    assert result["rounds"] == 1
    assert result["instances"][0]["path"] == "new"
    assert result["elapsed_seconds"] < 5


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "Nothing to wait for"),
        ({"cache_ttl": 10, "timeout": 5}, "raise timeout above cache_ttl"),
        ({"cache_ttl": 1, "interval": 0}, "must be positive"),
    ],
)
def test_unusable_options_are_refused(kwargs, message):
    with pytest.raises(BarrierConfigError, match=message):
        wait_for_path(client(), [], **{"timeout": 5, **kwargs})
