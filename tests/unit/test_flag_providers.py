"""The kill switch against the LaunchDarkly and in-house contract fakes (Unleash runs for real: integration)."""

import json

import pytest
import requests
from ansible.module_utils.flag_providers import (
    LD_SEMANTIC_PATCH,
    FlagAuthError,
    FlagConfigError,
    FlagEnvironmentNotFound,
    FlagError,
    FlagNotFound,
    FlagRequestRejected,
    FlagResponseError,
    FlagStateMismatch,
    FlagUnavailable,
    make_provider,
)
from ansible.module_utils.flag_switch import switch_flag
from ansible.module_utils.http_client import USER_AGENT, HttpClient

from tests.fakes.clock import FakeClock
from tests.fakes.fixtures import CANARY, inhouse_fake, ld_fake, shaped_fake  # noqa: F401 - fixtures

COMMENT = "Emergency rollback INC-123 by alice: go/no-go failed"


def ld(fake, key=CANARY, environment="production", flag="DataTransformationFeature", **client):
    client = HttpClient(**{"timeout": 2, "max_wait": 10, **client})
    return make_provider("launchdarkly", client, fake.url, key, flag, project="default", environment=environment)


def inhouse(fake, key=CANARY, flag="DataTransformationFeature", options=None, **client):
    client = HttpClient(**{"timeout": 2, "max_wait": 10, **client})
    return make_provider("http", client, fake.url, key, flag, http_options=options)


def writes(fake):
    return [r for r in fake.requests if r.method != "GET"]


def assert_no_canary(*texts):
    for text in texts:
        assert CANARY not in str(text)


# -- the LaunchDarkly fake enforces the documented contract -------------------------------------
def _patch(fake, headers, body):
    return requests.patch(
        fake.url + "/api/v2/flags/default/DataTransformationFeature", headers=headers, data=json.dumps(body), timeout=5
    )


GOOD_BODY = {"environmentKey": "production", "instructions": [{"kind": "turnFlagOff"}]}
SEMANTIC = {"Authorization": CANARY, "Content-Type": LD_SEMANTIC_PATCH}


@pytest.mark.parametrize(
    ("headers", "body", "status"),
    [
        ({"Authorization": CANARY, "Content-Type": LD_SEMANTIC_PATCH}, GOOD_BODY, 200),
        ({"Authorization": CANARY, "Content-Type": "application/json"}, GOOD_BODY, 400),  # taken as JSON patch
        ({"Authorization": CANARY}, GOOD_BODY, 400),  # no content type
        ({"Authorization": f"Bearer {CANARY}", "Content-Type": LD_SEMANTIC_PATCH}, GOOD_BODY, 401),
        ({"Content-Type": LD_SEMANTIC_PATCH}, GOOD_BODY, 401),
        (SEMANTIC, {"instructions": GOOD_BODY["instructions"]}, 400),  # no environmentKey
        (
            {"Authorization": CANARY, "Content-Type": LD_SEMANTIC_PATCH},
            {"environmentKey": "production", "instructions": [{"kind": "turnFlagOffNow"}]},
            400,
        ),
        ({"Authorization": CANARY, "Content-Type": LD_SEMANTIC_PATCH}, {**GOOD_BODY, "environment": "x"}, 400),
        (
            {"Authorization": CANARY, "Content-Type": LD_SEMANTIC_PATCH, "LD-API-Version": "2099"},
            GOOD_BODY,
            400,
        ),
    ],
)
def test_the_launchdarkly_fake_rejects_what_the_real_api_rejects(ld_fake, headers, body, status):  # noqa: F811
    answer = _patch(ld_fake, headers, body)
    assert answer.status_code == status, answer.text
    if status != 200:
        assert set(answer.json()) == {"code", "message", "id"}
        assert ld_fake.is_on("DataTransformationFeature")


# -- LaunchDarkly through the provider ---------------------------------------------------------
def test_launchdarkly_disable_speaks_the_semantic_patch(ld_fake):  # noqa: F811
    result = switch_flag(ld(ld_fake), "disabled", comment=COMMENT)
    assert result["changed"] is True
    assert (result["previous_state"], result["state"], result["provider"]) == ("enabled", "disabled", "launchdarkly")
    assert result["attempts"] == 1
    assert result["change_reference"] == 2  # the flag's _version after the change
    assert result["change_reference_kind"] == "launchdarkly_flag_version"
    assert not ld_fake.is_on("DataTransformationFeature")
    assert ld_fake.is_on("DataTransformationFeature", environment="test")  # only the named environment
    (patch,) = writes(ld_fake)
    assert patch.method == "PATCH"
    assert patch.path == "/api/v2/flags/default/DataTransformationFeature"
    assert patch.headers["content-type"] == LD_SEMANTIC_PATCH
    assert patch.headers["authorization"] == CANARY  # bare token, no scheme
    assert patch.headers["ld-api-version"] == "20240415"
    assert patch.headers["user-agent"] == USER_AGENT
    assert patch.json() == {
        "environmentKey": "production",
        "instructions": [{"kind": "turnFlagOff"}],
        "comment": COMMENT,
    }
    reads = [r for r in ld_fake.requests if r.method == "GET"]
    assert len(reads) == 2  # before and the read-back
    assert all(r.query == {"env": ["production"]} for r in reads)
    assert ld_fake.audit[-1]["comment"] == COMMENT


def test_launchdarkly_enable_and_idempotence(ld_fake):  # noqa: F811
    assert switch_flag(ld(ld_fake), "disabled")["changed"] is True
    again = switch_flag(ld(ld_fake), "disabled")
    assert (again["changed"], again["attempts"], again["change_reference"]) == (False, 0, None)
    assert len(writes(ld_fake)) == 1
    enabled = switch_flag(ld(ld_fake), "enabled", comment="re-enable after fix")
    assert enabled["changed"] is True
    assert writes(ld_fake)[-1].json()["instructions"] == [{"kind": "turnFlagOn"}]
    assert ld_fake.is_on("DataTransformationFeature")


def test_launchdarkly_check_mode_writes_nothing(ld_fake):  # noqa: F811
    result = switch_flag(ld(ld_fake), "disabled", check_mode=True)
    assert (result["changed"], result["previous_state"], result["state"]) == (True, "enabled", "disabled")
    assert result["diff"]["before"] == {"state": "enabled"}
    assert result["diff"]["after"] == {"state": "disabled"}
    assert writes(ld_fake) == []
    assert ld_fake.is_on("DataTransformationFeature")


def test_launchdarkly_wrong_key_fails_at_once(ld_fake):  # noqa: F811
    with pytest.raises(FlagAuthError) as caught:
        switch_flag(ld(ld_fake, key="api-wrong-key-000"), "disabled")
    assert "rejected the API key (401)" in str(caught.value)
    assert "set api_key or FF_API_KEY" in str(caught.value)
    assert len(ld_fake.requests) == 1  # never retried


def test_launchdarkly_read_only_key_gets_a_403_on_the_write(ld_fake):  # noqa: F811
    with pytest.raises(FlagAuthError, match=r"may not do this \(403\)"):
        switch_flag(ld(ld_fake, key=ld_fake.read_only_key), "disabled")
    assert ld_fake.is_on("DataTransformationFeature")


def test_launchdarkly_bearer_prefix_is_refused_before_sending(ld_fake):  # noqa: F811
    with pytest.raises(FlagConfigError, match="bare access token"):
        ld(ld_fake, key=f"Bearer {CANARY}")
    assert ld_fake.requests == []


def test_launchdarkly_missing_flag_and_environment(ld_fake):  # noqa: F811
    with pytest.raises(FlagNotFound, match="does not exist in LaunchDarkly project default"):
        switch_flag(ld(ld_fake, flag="NoSuchFlag"), "disabled")
    with pytest.raises(FlagEnvironmentNotFound, match="has no environment staging"):
        switch_flag(ld(ld_fake, environment="staging"), "disabled")
    assert writes(ld_fake) == []


def test_launchdarkly_429_waits_what_retry_after_says(ld_fake):  # noqa: F811
    provider = ld(ld_fake)
    provider.read()  # the first read passes; the next two calls (the write) are rate limited
    ld_fake.fail_next(2, status=429, headers={"Retry-After": "1"}, body={"code": "rate_limited", "message": "x"})
    clock = FakeClock()
    provider.client.sleep = clock.sleep
    written = provider.write(False, COMMENT)
    assert written.attempts == 3
    assert clock.sleeps == [1.0, 1.0]  # two waits of one second, as the header asked
    assert not ld_fake.is_on("DataTransformationFeature")


def test_launchdarkly_429_waits_until_the_rate_limit_window_resets(ld_fake):  # noqa: F811
    clock = FakeClock(start=1_800_000_000.0)
    provider = ld(ld_fake, sleep=clock.sleep, wall_clock=clock)
    provider.read()
    headers = {"X-Ratelimit-Reset": str(int((clock() + 1.2) * 1000)), "X-Ratelimit-Global-Remaining": "0"}
    ld_fake.fail_next(2, status=429, headers=headers, body={"code": "rate_limited", "message": "x"})
    written = provider.write(False, COMMENT)
    assert written.attempts == 3
    # The first wait lasts until the window resets (epoch ms); the second 429 names a past moment: a short pause.
    assert clock.sleeps[0] == pytest.approx(1.2)
    assert clock.sleeps[1] == 0.05
    assert not ld_fake.is_on("DataTransformationFeature")


def test_launchdarkly_500s_are_retried_within_max_wait(ld_fake):  # noqa: F811
    ld_fake.fail_next(2, status=500)
    result = switch_flag(ld(ld_fake), "disabled")
    assert result["changed"] is True
    assert not ld_fake.is_on("DataTransformationFeature")


def test_launchdarkly_outage_gives_up_naming_the_budget(ld_fake):  # noqa: F811
    ld_fake.fail_next(1000, status=503)
    with pytest.raises(FlagUnavailable, match=r"answered 503 on each of \d+ attempt\(s\) and max_wait"):
        switch_flag(ld(ld_fake, max_wait=1), "disabled")


def test_a_write_the_provider_does_not_apply_fails_the_read_back(ld_fake):  # noqa: F811
    ld_fake.ignore_writes = True
    with pytest.raises(FlagStateMismatch, match="still reports it enabled"):
        switch_flag(ld(ld_fake), "disabled")


# -- the in-house service of the seed ----------------------------------------------------------
def test_inhouse_disable_with_the_seed_shape(inhouse_fake):  # noqa: F811
    result = switch_flag(inhouse(inhouse_fake), "disabled", comment=COMMENT)
    assert (result["changed"], result["previous_state"], result["state"]) == (True, "enabled", "disabled")
    assert result["change_reference"] is None
    assert inhouse_fake.flags["DataTransformationFeature"] is False
    (patch,) = writes(inhouse_fake)
    assert (patch.method, patch.path) == ("PATCH", "/api/v2/flags/DataTransformationFeature")
    assert patch.headers["authorization"] == f"api-key {CANARY}"
    assert patch.headers["content-type"] == "application/json"
    assert patch.json() == {"DataTransformationFeature": False}
    assert switch_flag(inhouse(inhouse_fake), "disabled")["changed"] is False
    assert len(writes(inhouse_fake)) == 1


@pytest.mark.parametrize(
    "body", [{"{flag}": "{enabled}", "comment": "{comment}"}, '{"{flag}": "{enabled}", "comment": "{comment}"}']
)
def test_inhouse_comment_through_the_body_template(inhouse_fake, body):  # noqa: F811
    switch_flag(inhouse(inhouse_fake, options={"http_body": body}), "disabled", comment=COMMENT)
    assert inhouse_fake.comments == [COMMENT]
    assert writes(inhouse_fake)[0].json() == {"DataTransformationFeature": False, "comment": COMMENT}


def test_inhouse_errors(inhouse_fake):  # noqa: F811
    with pytest.raises(FlagAuthError, match=r"\(401\)"):
        switch_flag(inhouse(inhouse_fake, key="wrong-key-123"), "disabled")
    with pytest.raises(FlagNotFound, match="does not exist at /api/v2/flags/Nope"):
        switch_flag(inhouse(inhouse_fake, flag="Nope"), "disabled")
    with pytest.raises(FlagAuthError, match=r"\(403\)"):
        switch_flag(inhouse(inhouse_fake, key=inhouse_fake.read_only_key), "disabled")
    with pytest.raises(FlagRequestRejected, match=r"refused the request \(400\)"):
        switch_flag(inhouse(inhouse_fake, options={"http_body": {"enabled": "{enabled}"}}), "disabled")
    with pytest.raises(FlagResponseError, match="set http_state_path"):
        switch_flag(inhouse(inhouse_fake, options={"http_state_path": "data.enabled"}), "disabled")
    assert inhouse_fake.flags["DataTransformationFeature"] is True
    assert len(writes(inhouse_fake)) == 2  # the 403 and the 400: both refused, nothing changed


def test_inhouse_timeouts_and_429_are_retried(inhouse_fake):  # noqa: F811
    inhouse_fake.fail_next(1, status=200, hang=1.5)
    inhouse_fake.fail_next(1, status=429, headers={"Retry-After": "0"})
    result = switch_flag(inhouse(inhouse_fake, timeout=0.5), "disabled")
    assert result["changed"] is True
    assert inhouse_fake.flags["DataTransformationFeature"] is False


def test_another_inhouse_shape_needs_options_not_code(shaped_fake):  # noqa: F811
    options = {
        "http_method": "PUT",
        "http_path": "/v1/envs/{environment}/toggles/{flag}",
        "http_body": {"enabled": "{enabled}", "reason": "{comment}"},
        "http_state_path": "data.enabled",
        "http_auth_scheme": "Bearer",
    }
    client = HttpClient(timeout=2, max_wait=5)
    provider = make_provider(
        "http", client, shaped_fake.url, CANARY, "DataTransformationFeature", environment="prod", http_options=options
    )
    result = switch_flag(provider, "disabled", comment=COMMENT)
    assert (result["changed"], result["state"]) == (True, "disabled")
    assert shaped_fake.toggles[("prod", "DataTransformationFeature")] is False
    assert shaped_fake.reasons == [COMMENT]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"http_path": "/flags/{flagname}"}, "unknown placeholder {flagname}"),
        ({"http_path": "flags/{flag}"}, "must start with '/'"),
        ({"http_body": "flag=false"}, "neither a mapping nor JSON text"),
        ({"http_body": '"just a string"'}, "must be a JSON object"),
        ({"http_method": "GET"}, "use PATCH, PUT or POST"),
    ],
)
def test_bad_http_options_fail_before_sending(inhouse_fake, options, message):  # noqa: F811
    with pytest.raises(FlagConfigError, match=message):
        inhouse(inhouse_fake, options=options)
    assert inhouse_fake.requests == []


def test_no_api_key_names_the_environment_variable(inhouse_fake):  # noqa: F811
    with pytest.raises(FlagConfigError, match="set api_key or the environment variable FF_API_KEY"):
        inhouse(inhouse_fake, key="")


# -- the secret never leaks ----------------------------------------------------------------------
def test_the_key_appears_in_no_error_or_result(ld_fake, inhouse_fake):  # noqa: F811
    def echo_key(request):  # a server that puts the credential it got into its error text
        return 401, {}, {"code": "unauthorized", "message": f"token {request.headers.get('authorization')} unknown"}

    seen = []
    for fake, make in ((ld_fake, ld), (inhouse_fake, inhouse)):
        fake.handle = echo_key
        with pytest.raises(FlagError) as caught:
            switch_flag(make(fake), "disabled")
        seen.append(str(caught.value))
        assert "<redacted>" in str(caught.value)
    for fake, make in ((ld_fake, ld), (inhouse_fake, inhouse)):
        fake.fail_next(1000, status=503, body={"message": f"overloaded, key {CANARY}"})
        with pytest.raises(FlagUnavailable) as caught:
            switch_flag(make(fake, max_wait=0.3), "disabled")
        seen.append(str(caught.value))
    assert_no_canary(*seen)
