"""The propagation barrier against a stand-in of the instances' /status (docs/interfaces.md).

The barrier's clock and sleep are injected (tests/fakes/clock.py): waits and timeouts are exact and
take no wall-clock time; instances change state per poll, never by the wall clock.
"""

import threading
from datetime import UTC, datetime, timedelta

import pytest
from ansible.module_utils.flag_barrier import BarrierConfigError, BarrierTimeout, wait_for_path
from ansible.module_utils.http_client import HttpClient

from rehearsal.postgres import free_port
from tests.fakes.clock import FakeClock
from tests.fakes.fixtures import status_fake  # noqa: F401 - fixture


@pytest.fixture
def clock():
    return FakeClock()


def barrier(clock, urls, **kwargs):
    client = HttpClient(timeout=2, max_wait=0, clock=clock, sleep=clock.sleep)
    return wait_for_path(client, urls, sleep=clock.sleep, wall_clock=clock, **kwargs)


def iso(delta_seconds: float) -> str:
    """A UTC time relative to the real now (the fake instances report real fetch times)."""
    return (datetime.now(UTC) + timedelta(seconds=delta_seconds)).isoformat()


def test_passes_at_once_when_every_instance_is_legacy(status_fake, clock):  # noqa: F811
    urls = [status_fake.add(f"app-{i}", path="legacy") for i in (1, 2)]
    result = barrier(clock, urls, timeout=5, interval=0.1)
    assert (result["rounds"], result["elapsed_seconds"]) == (1, 0)
    assert clock.sleeps == []
    assert [i["path"] for i in result["instances"]] == ["legacy", "legacy"]
    assert [i["instance"] for i in result["instances"]] == ["app-1", "app-2"]
    assert all(i["last_refresh"] and i["config_version"] == "v1" for i in result["instances"])
    assert result["discovery"] is None and result["not_configured"] == []


def test_waits_until_the_last_instance_switches(status_fake, clock):  # noqa: F811
    urls = [status_fake.add("app-1", path="legacy"), status_fake.add("app-2")]
    status_fake.switch_after_polls("app-2", 3)  # "new" on three polls, then "legacy"
    result = barrier(clock, urls, timeout=10, interval=0.25)
    assert result["rounds"] == 4
    assert clock.sleeps == [0.25, 0.25, 0.25]
    assert result["elapsed_seconds"] == 0.75
    assert {i["path"] for i in result["instances"]} == {"legacy"}


def test_an_instance_that_flips_back_is_caught(status_fake, clock):  # noqa: F811
    urls = [status_fake.add("app-1", path="legacy"), status_fake.add("app-2", path="legacy")]
    status_fake.instances["app-1"].status = 500  # first round: app-1 unreadable
    original = status_fake.handle

    def heal_after_first_round(request):
        answer = original(request)
        if len(status_fake.requests) == 2:
            status_fake.instances["app-1"].status = 200
        return answer

    status_fake.handle = heal_after_first_round
    result = barrier(clock, urls, timeout=5, interval=0.5)
    assert result["rounds"] == 2  # one round saw every instance on legacy only the second time


def test_timeout_names_the_instances_still_on_the_new_path(status_fake, clock):  # noqa: F811
    urls = [status_fake.add("app-1", path="legacy"), status_fake.add("app-2")]
    with pytest.raises(BarrierTimeout) as caught:
        barrier(clock, urls, timeout=0.5, interval=0.1)
    message = str(caught.value)
    assert "still on another path: app-2 (" in message
    assert "path=new" in message and "config_version=v1" in message
    assert "configured" in message
    assert "app-1" not in message
    assert "\n" not in message
    assert caught.value.result["elapsed_seconds"] == 0.5
    assert caught.value.result["rounds"] == 6
    assert sum(clock.sleeps) == pytest.approx(0.5)


def test_unreachable_and_broken_instances_are_named(status_fake, clock):  # noqa: F811
    dead = f"http://127.0.0.1:{free_port()}/status"
    sick = status_fake.add("app-2", path="legacy", status=500)
    mute = status_fake.add("app-3", path="legacy", omit_path=True)
    with pytest.raises(BarrierTimeout) as caught:
        barrier(clock, [dead, sick, mute], timeout=0.4, interval=0.1)
    message = str(caught.value)
    assert dead in message
    assert "unreadable" in message
    assert "could not connect" in message
    assert f"{sick} answered 500" in message
    assert "reports no 'path'" in message


def test_a_custom_path_key_and_value(status_fake, clock):  # noqa: F811
    url = status_fake.add("app-1", path="legacy")
    result = barrier(clock, [url], expected_path="legacy", path_key="path", timeout=2, interval=0.1)
    assert result["instances"][0]["path"] == "legacy"
    with pytest.raises(BarrierTimeout, match="reports no 'engine'"):
        barrier(clock, [url], path_key="engine", timeout=0.3, interval=0.1)


def test_polls_instances_concurrently(status_fake, clock):  # noqa: F811
    urls = [status_fake.add(f"app-{i}", path="legacy") for i in range(8)]
    # Every answer waits until all eight polls are in flight; polls one after another would break the gate.
    status_fake.gate = threading.Barrier(8, timeout=10)
    result = barrier(clock, urls, timeout=20, interval=0.1)
    assert result["rounds"] == 1
    assert status_fake.max_in_flight == 8


def test_cache_ttl_alone_waits_the_ttl(clock):
    result = barrier(clock, [], cache_ttl=0.5, timeout=5, interval=0.1)
    assert clock.sleeps == [0.5]
    assert result["elapsed_seconds"] == 0.5
    assert result["instances"] == []
    assert result["waited_for_cache_ttl"] == 0.5


def test_cache_ttl_and_status_urls_both_hold(status_fake, clock):  # noqa: F811
    url = status_fake.add("app-1", path="legacy")
    result = barrier(clock, [url], cache_ttl=0.4, timeout=5, interval=0.1)
    assert result["elapsed_seconds"] == 0.4
    assert result["rounds"] == 2


def test_check_mode_polls_once_and_never_waits(status_fake, clock):  # noqa: F811
    url = status_fake.add("app-1")
    result = barrier(clock, [url], timeout=30, interval=5, cache_ttl=20, check_mode=True)
    assert result["rounds"] == 1
    assert result["instances"][0]["path"] == "new"
    assert clock.sleeps == []


# -- "legacy because it has not fetched yet" is not "legacy because it saw the flag off" -----------------
def test_a_legacy_instance_counts_only_with_a_fetch_after_the_flag_change(status_fake, clock):  # noqa: F811
    fresh = status_fake.add("app-1", path="legacy")
    stale = status_fake.add("app-2", path="legacy", stale=True, last_refresh=iso(-60))
    never = status_fake.add("app-3", path="legacy", stale=True, last_refresh=None)
    flag_off = iso(-5)
    with pytest.raises(BarrierTimeout) as caught:
        barrier(clock, [fresh, stale, never], fetched_after=flag_off, timeout=1, interval=0.5)
    message = str(caught.value)
    assert f"without a fetch of the flag since it was turned off at {flag_off}" in message
    assert "app-2 (" in message and "app-3 (" in message and "last_refresh=None" in message
    assert "app-1" not in message
    by_name = {i["instance"]: i for i in caught.value.result["instances"]}
    assert by_name["app-1"]["fetched_after_flag_change"] is True
    assert by_name["app-2"]["fetched_after_flag_change"] is False
    # Without the requirement, the path alone would have passed all three: the old barrier's blind spot.
    assert barrier(clock, [fresh, stale, never], timeout=1, interval=0.5)["rounds"] == 1


def test_a_fetch_within_the_clock_skew_does_not_count(status_fake, clock):  # noqa: F811
    url = status_fake.add("app-1", path="legacy", stale=True, last_refresh=iso(-4.5))
    with pytest.raises(BarrierTimeout, match="without a fetch"):
        barrier(clock, [url], fetched_after=iso(-5), clock_skew=1, timeout=0.2, interval=0.1)
    result = barrier(clock, [url], fetched_after=iso(-5), clock_skew=0, timeout=0.2, interval=0.1)
    assert result["instances"][0]["fetched_after_flag_change"] is True


def test_time_from_the_flag_change_to_the_last_instance_confirmed(status_fake, clock):  # noqa: F811
    urls = [status_fake.add("app-1", path="legacy"), status_fake.add("app-2")]
    status_fake.switch_after_polls("app-2", 2)
    flag_off = datetime.fromtimestamp(clock.now - 3, UTC).isoformat()  # 3 s before the barrier starts
    result = barrier(clock, urls, fetched_after=flag_off, clock_skew=0, timeout=10, interval=0.5)
    assert result["rounds"] == 3
    assert result["last_confirmed_after_flag_seconds"] == 4.0  # 3 s before + two pauses of 0.5 s


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "Nothing to wait for"),
        ({"cache_ttl": 10, "timeout": 5}, "raise timeout above cache_ttl"),
        ({"cache_ttl": 1, "interval": 0}, "must be positive"),
        ({"cache_ttl": 1, "clock_skew": -1}, "must be positive"),
        ({"cache_ttl": 1, "fetched_after": "yesterday"}, "not an ISO 8601 time"),
        ({"cache_ttl": 1, "fetched_after": "2026-11-28T00:00:00"}, "with a UTC offset"),
    ],
)
def test_unusable_options_are_refused(clock, kwargs, message):
    with pytest.raises(BarrierConfigError, match=message):
        barrier(clock, [], **{"timeout": 5, **kwargs})
    assert clock.sleeps == []
