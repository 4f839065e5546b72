"""http_client: the retry policy, rate-limit headers, TLS verification and secret redaction."""

from email.utils import formatdate

import pytest
from ansible.module_utils.http_client import (
    USER_AGENT,
    HttpClient,
    HttpConfigError,
    HttpGaveUp,
    HttpTlsError,
    parse_ratelimit_reset,
    parse_retry_after,
    redact,
)

from rehearsal.postgres import free_port
from tests.fakes.base import FakeApi, Request
from tests.fakes.clock import FakeClock
from tests.fakes.fixtures import CANARY, tls_files  # noqa: F401 - fixture


class Echo(FakeApi):
    """Answers 200 {"ok": true} to everything, or a fixed status."""

    def __init__(self, status=200):
        super().__init__()
        self.status = status

    def handle(self, request: Request):
        return self.status, {}, {"ok": self.status == 200, "message": f"echo {self.status}"}


@pytest.fixture
def echo():
    with Echo() as fake:
        yield fake


class Sleeps:
    """Records the waits instead of sleeping them (the clock still runs for real)."""

    def __init__(self):
        self.waits = []

    def __call__(self, seconds):
        self.waits.append(seconds)


# -- header parsing ------------------------------------------------------------------------------
def test_retry_after_seconds_and_http_date():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 0 ") == 0.0
    now = 1_800_000_000.0
    assert parse_retry_after(formatdate(now + 10, usegmt=True), now=now) == 10.0
    assert parse_retry_after(formatdate(now - 10, usegmt=True), now=now) == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def test_ratelimit_reset_is_epoch_milliseconds_or_seconds():
    now = 1_800_000_000.0
    assert parse_ratelimit_reset(str(int((now + 2.5) * 1000)), now=now) == pytest.approx(2.5)  # LaunchDarkly: ms
    assert parse_ratelimit_reset(str(int(now + 4)), now=now) == pytest.approx(4)  # epoch seconds
    assert parse_ratelimit_reset(str(int((now - 5) * 1000)), now=now) == 0.0
    assert parse_ratelimit_reset("x", now=now) is None


def test_redact_and_safe_url():
    assert redact(f"token {CANARY} refused", [CANARY]) == "token <redacted> refused"
    assert redact("short 1 stays", ["1"]) == "short 1 stays"
    assert HttpClient.safe_url("https://user:pw@host:8443/a/b?token=x") == "https://host:8443/a/b"


# -- retry policy --------------------------------------------------------------------------------
def test_every_request_names_the_runbook(echo):
    HttpClient().request("GET", echo.url + "/x")
    assert echo.requests[0].headers["user-agent"] == USER_AGENT
    assert "Rollback-DataTransformation-Feature" in USER_AGENT


def test_5xx_is_retried_with_backoff_until_success(echo):
    echo.fail_next(3, status=503)
    sleeps = Sleeps()
    response = HttpClient(max_wait=30, sleep=sleeps).request("GET", echo.url + "/x")
    assert (response.status, response.attempts) == (200, 4)
    assert len(echo.requests) == 4
    assert len(sleeps.waits) == 3
    assert all(0 < wait <= 8 for wait in sleeps.waits)
    assert sleeps.waits[2] > sleeps.waits[0] * 1.0  # backoff grows (jitter is at most half)


def test_429_waits_what_retry_after_says(echo):
    echo.fail_next(1, status=429, headers={"Retry-After": "2"})
    sleeps = Sleeps()
    response = HttpClient(max_wait=30, sleep=sleeps).request("GET", echo.url + "/x")
    assert response.attempts == 2
    assert sleeps.waits == [2.0]


NOW = 1_800_000_000.0  # the wall clock the client reads rate-limit moments against (injected)


def test_429_waits_until_x_ratelimit_reset_in_epoch_milliseconds(echo):
    echo.fail_next(1, status=429, headers={"X-Ratelimit-Reset": str(int((NOW + 3) * 1000))})
    sleeps = Sleeps()
    HttpClient(max_wait=30, sleep=sleeps, wall_clock=lambda: NOW).request("GET", echo.url + "/x")
    assert sleeps.waits == [3.0]


def test_429_waits_until_a_retry_after_http_date(echo):
    echo.fail_next(1, status=429, headers={"Retry-After": formatdate(NOW + 5, usegmt=True)})
    sleeps = Sleeps()
    HttpClient(max_wait=30, sleep=sleeps, wall_clock=lambda: NOW).request("GET", echo.url + "/x")
    assert sleeps.waits == [5.0]


def test_the_longer_of_both_rate_limit_headers_wins(echo):
    echo.fail_next(1, status=429, headers={"Retry-After": "1", "X-Ratelimit-Reset": str(int((NOW + 4) * 1000))})
    sleeps = Sleeps()
    HttpClient(max_wait=30, sleep=sleeps, wall_clock=lambda: NOW).request("GET", echo.url + "/x")
    assert sleeps.waits == [4.0]


def test_a_wait_beyond_max_wait_is_not_started(echo):
    echo.fail_next(1, status=429, headers={"Retry-After": "120"})
    sleeps = Sleeps()
    with pytest.raises(HttpGaveUp) as caught:
        HttpClient(max_wait=10, sleep=sleeps).request("GET", echo.url + "/x")
    assert sleeps.waits == []
    assert len(echo.requests) == 1
    assert "asks to wait 120.0s" in str(caught.value)
    assert caught.value.status == 429


def test_retries_stop_within_max_wait(echo):
    echo.fail_next(100, status=500)
    clock = FakeClock()
    started = clock()
    with pytest.raises(HttpGaveUp) as caught:
        HttpClient(max_wait=10, clock=clock, sleep=clock.sleep).request("GET", echo.url + "/x")
    assert clock() - started <= 10  # every wait ended within the budget, on the injected clock...
    assert sum(clock.sleeps) == pytest.approx(clock() - started)
    assert caught.value.attempts == len(clock.sleeps) + 1 == len(echo.requests)
    assert caught.value.attempts >= 3  # ...and the budget was used: backoff 0.25-0.5 s, doubling, capped at 8 s
    assert "max_wait (10s) is spent" in str(caught.value)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 422])
def test_client_errors_are_never_retried(status):
    with Echo(status) as fake:
        response = HttpClient(max_wait=30, sleep=Sleeps()).request("GET", fake.url + "/x")
    assert (response.status, response.attempts) == (status, 1)
    assert len(fake.requests) == 1


def test_timeouts_are_retried(echo):
    echo.fail_next(1, status=200, hang=1.0)  # longer than the client's timeout
    response = HttpClient(timeout=0.3, max_wait=10).request("GET", echo.url + "/x")
    assert (response.status, response.attempts) == (200, 2)


def test_connection_refused_is_retried_then_reported():
    url = f"http://127.0.0.1:{free_port()}/x"
    with pytest.raises(HttpGaveUp) as caught:
        HttpClient(timeout=1, max_wait=0.8).request("GET", url)
    assert caught.value.attempts >= 2
    assert "could not connect" in str(caught.value)


def test_a_budget_shared_by_several_requests(echo):
    client = HttpClient(max_wait=0)
    client.begin()
    echo.fail_next(1, status=502)
    with pytest.raises(HttpGaveUp):
        client.request("GET", echo.url + "/x")


@pytest.mark.parametrize("url", ["ftp://host/x", "unleash.example.com", "https://"])
def test_unusable_urls_fail_before_sending(url):
    with pytest.raises(HttpConfigError, match="not an http"):
        HttpClient().request("GET", url)


def test_bad_timeouts_are_refused():
    with pytest.raises(HttpConfigError, match="timeout"):
        HttpClient(timeout=0)
    with pytest.raises(HttpConfigError, match="max_wait"):
        HttpClient(max_wait=-1)


# -- TLS -----------------------------------------------------------------------------------------
@pytest.fixture
def tls_echo(tls_files):  # noqa: F811
    fake = Echo()
    fake.start(certfile=str(tls_files.server_cert), keyfile=str(tls_files.server_key))
    yield fake
    fake.stop()


def test_an_unknown_ca_fails_at_once_and_is_not_retried(tls_echo):
    with pytest.raises(HttpTlsError, match=r"could not be verified \(SSLError\); give the CA bundle in ca_path"):
        HttpClient(max_wait=30).request("GET", tls_echo.url + "/x")
    assert tls_echo.requests == []


def test_ca_path_verifies_the_certificate(tls_echo, tls_files):  # noqa: F811
    response = HttpClient(ca_path=str(tls_files.ca_cert)).request("GET", tls_echo.url + "/x")
    assert response.status == 200


def test_turning_verification_off_works_but_is_never_silent(tls_echo):
    client = HttpClient(validate_certs=False)
    assert client.request("GET", tls_echo.url + "/x").status == 200
    (warning,) = client.warnings_for(tls_echo.url)
    assert "verification is OFF" in warning
    assert HttpClient().warnings_for(tls_echo.url) == []


def test_plain_http_to_another_host_is_reported():
    assert "plain http" in HttpClient().warnings_for("http://flags.example.com")[0]
    assert HttpClient().warnings_for("http://127.0.0.1:4242") == []
    assert HttpClient().warnings_for("http://flags.example.com", carries_secret=False) == []


# -- secrets -------------------------------------------------------------------------------------
def test_error_messages_never_carry_the_secret():
    fake = Echo(401)

    def leaky(request):  # a server that echoes the credential back in its error
        return 401, {}, {"message": f"bad token {request.headers.get('authorization')}"}

    fake.handle = leaky
    with fake:
        client = HttpClient(secrets=[CANARY])
        response = client.request("GET", fake.url + "/x", headers={"Authorization": CANARY})
        error = client.status_error(response, "read the flag", "the key was rejected (401); set api_key")
    assert CANARY not in str(error)
    assert "<redacted>" in str(error)
    assert str(error).startswith("Cannot read the flag: the key was rejected (401); set api_key")


def test_ca_path_wins_over_a_ca_bundle_in_the_environment(tls_echo, tls_files, monkeypatch):  # noqa: F811
    # requests lets REQUESTS_CA_BUNDLE override a Session's verify; ours is passed per request.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/nonexistent/bundle.pem")
    monkeypatch.setenv("CURL_CA_BUNDLE", "/nonexistent/bundle.pem")
    assert HttpClient(ca_path=str(tls_files.ca_cert)).request("GET", tls_echo.url + "/x").status == 200
    assert HttpClient(validate_certs=False).request("GET", tls_echo.url + "/x").status == 200
