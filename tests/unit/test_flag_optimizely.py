"""The kill switch against the Optimizely Feature Experimentation contract fake (tests/fakes/optimizely.py)."""

import pytest
import requests
from ansible.module_utils.flag_providers import (
    FlagAuthError,
    FlagConfigError,
    FlagEnvironmentNotFound,
    FlagError,
    FlagNotFound,
    FlagStateMismatch,
    FlagUnavailable,
    make_provider,
)
from ansible.module_utils.flag_switch import switch_flag
from ansible.module_utils.http_client import USER_AGENT, HttpClient

from tests.fakes.clock import FakeClock
from tests.fakes.fixtures import CANARY, opt_fake  # noqa: F401 - fixture

FLAG = "data_transformation_feature"
PROJECT = "4678434014625792"
RULESET = f"/flags/v1/projects/{PROJECT}/flags/{FLAG}/environments/production/ruleset"


@pytest.fixture
def clock(opt_fake):  # noqa: F811
    """One fake clock for the client (budget, waits, pacing) and the fake's rate limiter: no real waiting."""
    fake_clock = FakeClock()
    opt_fake.clock = fake_clock
    return fake_clock


def optimizely(fake, clock, *, key=CANARY, flag=FLAG, project=PROJECT, environment="production", **client):
    client = HttpClient(**{"timeout": 2, "max_wait": 30, "clock": clock, "sleep": clock.sleep, **client})
    return make_provider("optimizely", client, fake.url, key, flag, project=project, environment=environment)


def posts(fake):
    return [r for r in fake.requests if r.method == "POST"]


# -- the fake enforces the documented contract ------------------------------------------------------
@pytest.mark.parametrize(
    ("method", "path", "headers", "status"),
    [
        ("GET", RULESET, {"Authorization": f"Bearer {CANARY}"}, 200),
        ("GET", RULESET, {"Authorization": CANARY}, 401),  # bare token: Optimizely wants Bearer
        ("GET", RULESET, {}, 401),
        ("POST", RULESET + "/disabled", {"Authorization": "Bearer opt-viewer-0000000000"}, 403),
        ("GET", RULESET.replace("production", "staging"), {"Authorization": f"Bearer {CANARY}"}, 404),
        ("GET", RULESET.replace(PROJECT, "default"), {"Authorization": f"Bearer {CANARY}"}, 404),
        ("PATCH", RULESET + "/disabled", {"Authorization": f"Bearer {CANARY}"}, 405),
        ("GET", RULESET + "/disabled", {"Authorization": f"Bearer {CANARY}"}, 405),
    ],
)
def test_the_optimizely_fake_rejects_what_the_real_api_rejects(opt_fake, method, path, headers, status):  # noqa: F811
    opt_fake.rate_limit = False
    answer = requests.request(method, opt_fake.url + path, headers=headers, timeout=5)
    assert answer.status_code == status, answer.text
    if status != 200:
        assert set(answer.json()) == {"code", "message", "uuid"}
    assert opt_fake.is_on(FLAG)


def test_the_fake_enforces_two_requests_per_second(opt_fake, clock):  # noqa: F811
    headers = {"Authorization": f"Bearer {CANARY}"}
    statuses = [requests.get(opt_fake.url + RULESET, headers=headers, timeout=5).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
    clock.advance(1.01)
    assert requests.get(opt_fake.url + RULESET, headers=headers, timeout=5).status_code == 200


# -- the provider ---------------------------------------------------------------------------------
def test_disable_posts_to_the_rulesets_disabled_link_and_reads_it_back(opt_fake, clock):  # noqa: F811
    result = switch_flag(optimizely(opt_fake, clock), "disabled", comment="INC-1 by alice", wall_clock=clock)
    assert (result["changed"], result["previous_state"], result["state"]) == (True, "enabled", "disabled")
    assert (result["provider"], result["attempts"]) == ("optimizely", 1)
    assert (result["change_reference"], result["change_reference_kind"]) == (2, "optimizely_ruleset_revision")
    assert not opt_fake.is_on(FLAG)
    assert opt_fake.is_on(FLAG, environment="development")  # only the named environment
    assert [(r.method, r.path) for r in opt_fake.requests] == [
        ("GET", RULESET),
        ("POST", RULESET + "/disabled"),
        ("GET", RULESET),
    ]
    (post,) = posts(opt_fake)
    assert post.headers["authorization"] == f"Bearer {CANARY}"
    assert post.headers["user-agent"] == USER_AGENT
    assert post.raw_body == b""  # the call takes no body: no comment reaches Optimizely
    assert opt_fake.history == [{"flag": FLAG, "environment": "production", "enabled": False, "token": CANARY[:6]}]
    # Paced under the documented 2 requests/s: two waits, never a 429, and the confirmation time is the read-back's.
    assert clock.sleeps == [pytest.approx(0.55), pytest.approx(0.55)]
    assert result["confirmed_at"].startswith("1970-01-01T00:16:41.1")  # FakeClock 1000 s + 2 x 0.55 s


def test_idempotent_and_enable_again(opt_fake, clock):  # noqa: F811
    assert switch_flag(optimizely(opt_fake, clock), "disabled")["changed"] is True
    again = switch_flag(optimizely(opt_fake, clock), "disabled")
    assert (again["changed"], again["attempts"], again["change_reference"]) == (False, 0, None)
    assert len(posts(opt_fake)) == 1
    enabled = switch_flag(optimizely(opt_fake, clock), "enabled")
    assert (enabled["changed"], enabled["change_reference"]) == (True, 3)
    assert posts(opt_fake)[-1].path == RULESET + "/enabled"
    assert opt_fake.is_on(FLAG)


def test_a_draft_ruleset_is_already_off(opt_fake, clock):  # noqa: F811
    opt_fake.add_flag("never_started", environments={"production": False})
    result = switch_flag(optimizely(opt_fake, clock, flag="never_started"), "disabled")
    assert (result["changed"], result["previous_state"]) == (False, "disabled")
    assert posts(opt_fake) == []


def test_check_mode_writes_nothing(opt_fake, clock):  # noqa: F811
    result = switch_flag(optimizely(opt_fake, clock), "disabled", check_mode=True)
    assert (result["changed"], result["state"], result["confirmed_at"]) == (True, "disabled", None)
    assert posts(opt_fake) == []
    assert opt_fake.is_on(FLAG)


def test_a_wrong_token_fails_at_once_naming_the_fix(opt_fake, clock):  # noqa: F811
    with pytest.raises(FlagAuthError) as caught:
        switch_flag(optimizely(opt_fake, clock, key="opt-wrong-token-1234"), "disabled")
    assert "Optimizely rejected the API key (401); set api_key or FF_API_KEY" in str(caught.value)
    assert len(opt_fake.requests) == 1  # never retried
    assert "\n" not in str(caught.value)


def test_a_viewer_token_gets_a_403_and_changes_nothing(opt_fake, clock):  # noqa: F811
    with pytest.raises(FlagAuthError, match=r"may not do this \(403\); use a Optimizely personal access token"):
        switch_flag(optimizely(opt_fake, clock, key=opt_fake.viewer_token), "disabled")
    assert len(posts(opt_fake)) == 1
    assert opt_fake.is_on(FLAG)


def test_a_missing_flag_and_a_missing_environment_are_told_apart(opt_fake, clock):  # noqa: F811
    with pytest.raises(FlagNotFound, match=f"flag nope does not exist in Optimizely project {PROJECT}"):
        switch_flag(optimizely(opt_fake, clock, flag="nope"), "disabled")
    with pytest.raises(
        FlagEnvironmentNotFound, match=r"has no environment staging .*\(it has: development, production\)"
    ):
        switch_flag(optimizely(opt_fake, clock, environment="staging"), "disabled")
    assert posts(opt_fake) == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"project": "default"}, "numeric project id"),
        ({"key": f"Bearer {CANARY}"}, "remove the prefix"),
        ({"key": ""}, "FF_API_KEY"),
    ],
)
def test_unusable_options_fail_before_sending(opt_fake, clock, kwargs, message):  # noqa: F811
    with pytest.raises(FlagConfigError, match=message) as caught:
        optimizely(opt_fake, clock, **kwargs)
    assert CANARY not in str(caught.value)
    assert opt_fake.requests == []


def test_429_waits_what_retry_after_says(opt_fake, clock):  # noqa: F811
    provider = optimizely(opt_fake, clock)
    provider.read()
    opt_fake.fail_next(2, status=429, headers={"Retry-After": "3"})
    written = provider.write(False, "")
    assert written.attempts == 3
    assert clock.sleeps[-2:] == [3.0, 3.0]
    assert not opt_fake.is_on(FLAG)


def test_the_rate_limit_itself_is_retried_with_backoff(opt_fake, clock):  # noqa: F811
    provider = optimizely(opt_fake, clock)
    provider.min_interval = 0  # no pacing: the fake's own limit answers 429 without Retry-After
    result = switch_flag(provider, "disabled")
    assert result["changed"] is True
    assert opt_fake.throttled >= 1  # the third request within one second was refused...
    assert len(opt_fake.requests) == 3 + opt_fake.throttled  # ...and retried until it passed
    assert all(0 < wait <= 8 for wait in clock.sleeps)  # backoff, as no Retry-After came
    assert not opt_fake.is_on(FLAG)


def test_5xx_retried_and_an_outage_gives_up_within_max_wait(opt_fake, clock):  # noqa: F811
    opt_fake.fail_next(2, status=503)
    assert switch_flag(optimizely(opt_fake, clock), "disabled")["changed"] is True
    opt_fake.fail_next(1000, status=502)
    started = clock()
    with pytest.raises(FlagUnavailable, match=r"answered 502 on each of \d+ attempt\(s\) and max_wait \(10s\)"):
        switch_flag(optimizely(opt_fake, clock, max_wait=10), "enabled")
    assert clock() - started <= 10  # the budget, on the injected clock


def test_timeouts_are_retried(opt_fake, clock):  # noqa: F811
    opt_fake.fail_next(1, status=200, hang=1.0)  # longer than the client's timeout
    result = switch_flag(optimizely(opt_fake, clock, timeout=0.3), "disabled")
    assert result["changed"] is True
    assert not opt_fake.is_on(FLAG)


def test_a_change_optimizely_does_not_apply_fails_the_read_back(opt_fake, clock):  # noqa: F811
    opt_fake.ignore_writes = True
    with pytest.raises(FlagStateMismatch, match="still reports it enabled"):
        switch_flag(optimizely(opt_fake, clock), "disabled")


def test_the_token_appears_in_no_error(opt_fake, clock):  # noqa: F811
    def echo(request):
        return 401, {}, {"code": "UNAUTHORIZED", "message": f"bad {request.headers.get('authorization')}"}

    opt_fake.handle = echo
    with pytest.raises(FlagError) as caught:
        switch_flag(optimizely(opt_fake, clock), "disabled")
    assert CANARY not in str(caught.value)
    assert "<redacted>" in str(caught.value)
