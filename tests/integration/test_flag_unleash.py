"""The kill switch against a REAL Unleash 8.2 (npm unleash-server on PostgreSQL 16), so 401 is a real 401."""

import time

import pytest
import requests
from ansible.module_utils.flag_providers import (
    FlagAuthError,
    FlagEnvironmentNotFound,
    FlagNotFound,
    make_provider,
)
from ansible.module_utils.flag_switch import switch_flag
from ansible.module_utils.http_client import HttpClient

from tests.fakes.fixtures import CANARY

pytestmark = pytest.mark.integration
FLAG = "DataTransformationFeature"
COMMENT = "Emergency rollback INC-123 by alice: go/no-go failed"


def provider(server, key=None, flag=FLAG, project="default", environment="production"):
    client = HttpClient(timeout=5, max_wait=10)
    key = server.admin_token if key is None else key
    return make_provider("unleash", client, server.url, key, flag, project=project, environment=environment)


def events(server, **filters):
    params = {"feature": f"IS:{FLAG}", "limit": "50", **filters}
    answer = requests.get(
        server.url + "/api/admin/search/events",
        params=params,
        headers={"Authorization": server.admin_token},
        timeout=10,
    )
    answer.raise_for_status()
    return answer.json()["events"]


def latest_event_id(server):
    return max((event["id"] for event in events(server)), default=0)


@pytest.fixture
def enabled_flag(unleash_server):
    unleash_server.set_flag(True)
    return unleash_server


def test_disable_an_enabled_flag_and_return_its_event_id(enabled_flag, record_property):
    started = time.monotonic()
    result = switch_flag(provider(enabled_flag), "disabled", comment=COMMENT)
    latency = time.monotonic() - started
    record_property("unleash_disable_seconds", round(latency, 4))
    assert result["changed"] is True
    assert (result["previous_state"], result["state"], result["provider"]) == ("enabled", "disabled", "unleash")
    assert result["attempts"] == 1
    assert enabled_flag.flag_enabled() is False
    assert result["change_reference_kind"] == "unleash_event_id"
    (event,) = [e for e in events(enabled_flag) if e["id"] == result["change_reference"]]
    assert event["type"] == "feature-environment-disabled"
    assert (event["environment"], event["project"], event["featureName"]) == ("production", "default", FLAG)
    # Only production was touched.
    assert enabled_flag.flag_enabled(environment="development") is False
    # The latency is recorded, not bounded: timing belongs in bench/ (P3, time to legacy).


def test_enable_again(unleash_server):
    unleash_server.set_flag(False)
    result = switch_flag(provider(unleash_server), "enabled")
    assert (result["changed"], result["previous_state"], result["state"]) == (True, "disabled", "enabled")
    assert unleash_server.flag_enabled() is True
    (event,) = [e for e in events(unleash_server) if e["id"] == result["change_reference"]]
    assert event["type"] == "feature-environment-enabled"


def test_idempotent_no_write_no_event(enabled_flag):
    switch_flag(provider(enabled_flag), "disabled")
    before = latest_event_id(enabled_flag)
    again = switch_flag(provider(enabled_flag), "disabled")
    assert (again["changed"], again["attempts"], again["change_reference"]) == (False, 0, None)
    assert (again["previous_state"], again["state"]) == ("disabled", "disabled")
    assert latest_event_id(enabled_flag) == before


def test_a_concurrent_toggle_between_read_and_write_is_not_claimed(enabled_flag):
    """Another run turns the flag off after this one read it on: this run changed nothing, and says whose it was."""
    racing = provider(enabled_flag)
    read = racing.read

    def read_then_lose_the_race():
        state = read()
        switch_flag(provider(enabled_flag), "disabled")  # the other run, between our read and our write
        return state

    racing.read = read_then_lose_the_race
    result = switch_flag(racing, "disabled")
    (other,) = [e for e in events(enabled_flag, type="IS:feature-environment-disabled")][:1]
    assert (result["changed"], result["previous_state"], result["state"]) == (False, "enabled", "disabled")
    assert result["change_reference"] == other["id"]
    assert any("by another change" in note and "changed nothing" in note for note in result["notes"])
    assert enabled_flag.flag_enabled() is False


def test_check_mode_reports_and_writes_nothing(enabled_flag):
    before = latest_event_id(enabled_flag)
    result = switch_flag(provider(enabled_flag), "disabled", check_mode=True)
    assert (result["changed"], result["previous_state"], result["state"]) == (True, "enabled", "disabled")
    assert result["diff"]["before"] == {"state": "enabled"} and result["diff"]["after"] == {"state": "disabled"}
    assert enabled_flag.flag_enabled() is True
    assert latest_event_id(enabled_flag) == before


def test_a_wrong_token_is_a_real_401_and_never_shown(enabled_flag):
    wrong = f"*:*.{CANARY}"
    with pytest.raises(FlagAuthError) as caught:
        switch_flag(provider(enabled_flag, key=wrong), "disabled")
    message = str(caught.value)
    assert "Unleash rejected the API key (401)" in message
    assert "set api_key or FF_API_KEY" in message
    assert CANARY not in message
    assert enabled_flag.flag_enabled() is True


def test_a_client_sdk_token_cannot_switch_the_flag(enabled_flag):
    with pytest.raises(FlagAuthError, match=r"\(403\).*backend/client SDK token cannot use the admin API"):
        switch_flag(provider(enabled_flag, key=enabled_flag.client_token), "disabled")
    assert enabled_flag.flag_enabled() is True


def test_a_missing_flag(enabled_flag):
    with pytest.raises(FlagNotFound, match="flag NoSuchFeature does not exist in Unleash project default"):
        switch_flag(provider(enabled_flag, flag="NoSuchFeature"), "disabled")


def test_a_flag_in_another_project_says_where_it_is(enabled_flag):
    with pytest.raises(FlagNotFound) as caught:
        switch_flag(provider(enabled_flag, project="payments"), "disabled")
    assert "there's a feature with that name in project" in str(caught.value)  # Unleash's own hint
    assert enabled_flag.flag_enabled() is True


def test_a_missing_environment(enabled_flag):
    with pytest.raises(FlagEnvironmentNotFound) as caught:
        switch_flag(provider(enabled_flag, environment="prod"), "disabled")
    assert "has no environment prod" in str(caught.value)
    assert "(it has: development, production)" in str(caught.value)
    assert enabled_flag.flag_enabled() is True


def test_the_python_sdk_sees_the_disable(enabled_flag):
    """The client token works for UnleashClient (project default, environment production)."""
    from UnleashClient import UnleashClient  # noqa: PLC0415 - only this test needs the SDK

    sdk = UnleashClient(
        url=enabled_flag.url + "/api",
        app_name="rollback-tests",
        custom_headers={"Authorization": enabled_flag.client_token},
        refresh_interval=1,
        disable_metrics=True,
        disable_registration=True,
        cache_directory=None,
    )
    sdk.initialize_client()
    try:
        assert sdk.is_enabled(FLAG) is True
        switch_flag(provider(enabled_flag), "disabled")
        deadline = time.monotonic() + 15
        while sdk.is_enabled(FLAG) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert sdk.is_enabled(FLAG) is False
    finally:
        sdk.destroy()
