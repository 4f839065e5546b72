"""Discovery of the live instances from Consul and the Kubernetes API (contract fakes, tests/fakes/discovery.py),
and the barrier that asks every discovered instance. Prometheus, which runs here, is tested for real
(tests/integration/test_flag_discovery_prometheus.py)."""

from urllib.parse import urlsplit

import pytest
import requests
from ansible.module_utils.flag_barrier import BarrierTimeout, wait_for_path
from ansible.module_utils.flag_discovery import DiscoveryConfigError, DiscoveryError, make_source
from ansible.module_utils.http_client import HttpClient

from tests.fakes.clock import FakeClock
from tests.fakes.discovery import ConsulFake, KubernetesFake
from tests.fakes.fixtures import CANARY, status_fake  # noqa: F401 - fixture

BY_NAME = "{scheme}://{address}/{name}/status"  # the status fake answers every instance under /<name>/status


@pytest.fixture
def consul():
    with ConsulFake(token=CANARY) as fake:
        yield fake


@pytest.fixture
def k8s():
    with KubernetesFake(token=CANARY) as fake:
        yield fake


def client(clock=None):
    clock = clock or FakeClock()
    return HttpClient(timeout=2, max_wait=0, clock=clock, sleep=clock.sleep, secrets=[CANARY])


def fake_port(fake) -> int:
    return urlsplit(fake.url).port


# -- the fakes reject what the real APIs reject -----------------------------------------------------
@pytest.mark.parametrize(
    ("headers", "path", "status"),
    [
        ({"X-Consul-Token": CANARY}, "/v1/health/service/web", 200),
        ({"Authorization": f"Bearer {CANARY}"}, "/v1/health/service/web", 200),
        ({"X-Consul-Token": "unknown-token"}, "/v1/health/service/web", 403),
        ({}, "/v1/health/service/web", 403),
        ({"X-Consul-Token": CANARY}, "/v1/health/services/web", 404),
    ],
)
def test_the_consul_fake_rejects_what_consul_rejects(consul, headers, path, status):
    consul.register("web", "web-1", "127.0.0.1", 80)
    answer = requests.get(consul.url + path, headers=headers, timeout=5)
    assert answer.status_code == status
    if status == 403:
        assert answer.text == "ACL not found"


@pytest.mark.parametrize(
    ("headers", "query", "status"),
    [
        ({"Authorization": f"Bearer {CANARY}"}, {"labelSelector": "kubernetes.io/service-name=web"}, 200),
        ({"Authorization": CANARY}, {}, 401),  # no Bearer
        ({}, {}, 401),
        ({"Authorization": "Bearer k8s-norbac-0000000000"}, {}, 403),
        ({"Authorization": f"Bearer {CANARY}"}, {"labelSelector": "kubernetes.io/service-name web"}, 400),
    ],
)
def test_the_kubernetes_fake_rejects_what_the_api_server_rejects(k8s, headers, query, status):
    answer = requests.get(
        k8s.url + "/apis/discovery.k8s.io/v1/namespaces/prod/endpointslices", headers=headers, params=query, timeout=5
    )
    assert answer.status_code == status
    body = answer.json()
    assert body["kind"] == ("EndpointSliceList" if status == 200 else "Status")


# -- Consul ---------------------------------------------------------------------------------------
def consul_source(fake, **options):
    return make_source({"source": "consul", "url": fake.url, "service": "web", "token": CANARY, **options})


def test_consul_lists_every_registered_instance_by_default(consul):
    consul.register("web", "web-1", "10.1.0.1", 8080)
    consul.register("web", "web-2", "", 8080, status="critical", node="n2")  # empty address: the node's
    found = consul_source(consul).discover(client())
    assert [(d.name, d.status_url) for d in found] == [
        ("web-1", "http://10.1.0.1:8080/status"),
        ("web-2", "http://10.0.0.1:8080/status"),
    ]
    assert found[1].where == "Consul service web (instance web-2 on node n2, checks critical)"
    assert consul.requests[0].headers["x-consul-token"] == CANARY
    assert consul.requests[0].query == {}
    only = consul_source(consul, passing_only=True).discover(client())
    assert [d.name for d in only] == ["web-1"]
    assert "passing" in consul.requests[-1].query


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"service": "nope"}, "Consul service nope has no instance: check discovery.service"),
        ({"token": "consul-noread-0000000"}, "the ACL token may not read it; give an ACL token with service:read"),
        ({"token": "forged"}, r"refused the request \(403\): give an ACL token with service:read on web"),
    ],
)
def test_consul_failures_say_what_to_fix(consul, options, message):
    consul.register("web", "web-1", "10.1.0.1", 8080)
    with pytest.raises(DiscoveryError, match=message) as caught:
        consul_source(consul, **options).discover(client())
    assert CANARY not in str(caught.value)


# -- Kubernetes -------------------------------------------------------------------------------------
def k8s_source(fake, **options):
    base = {"source": "kubernetes", "url": fake.url, "namespace": "prod", "service": "web", "token": CANARY}
    return make_source({**base, **options})


def test_kubernetes_lists_every_endpoint_ready_or_not(k8s):
    ports = [{"name": "http", "port": 8080}, {"name": "metrics", "port": 9090}]
    k8s.add_slice("prod", "web", "web-abc", ports, [k8s.endpoint("10.2.0.1", "web-1")])
    k8s.add_slice("prod", "web", "web-def", ports, [k8s.endpoint("10.2.0.2", "web-2", ready=False, terminating=True)])
    k8s.add_slice("prod", "other", "other-x", ports, [k8s.endpoint("10.9.9.9", "other-1")])
    found = k8s_source(k8s, port="http").discover(client())
    assert [(d.name, d.status_url) for d in found] == [
        ("web-1", "http://10.2.0.1:8080/status"),
        ("web-2", "http://10.2.0.2:8080/status"),
    ]
    assert "EndpointSlice web-def, Pod web-2, ready false, terminating true" in found[1].where
    request = k8s.requests[0]
    assert request.path == "/apis/discovery.k8s.io/v1/namespaces/prod/endpointslices"
    assert request.query == {"labelSelector": ["kubernetes.io/service-name=web"]}
    assert request.headers["authorization"] == f"Bearer {CANARY}"
    metrics = k8s_source(k8s, port="9090").discover(client())
    assert metrics[0].status_url == "http://10.2.0.1:9090/status"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, r"has 2 ports \(http, metrics\): set discovery.port"),
        ({"port": "grpc"}, "has no port grpc"),
        ({"service": "nope", "port": "http"}, "Kubernetes Service prod/nope has no endpoint"),
        (
            {"token": "k8s-norbac-0000000000", "port": "http"},
            r"\(403\): give a token .* allowed to list endpointslices",
        ),
        ({"token": "forged", "port": "http"}, r"\(401\)"),
    ],
)
def test_kubernetes_failures_say_what_to_fix(k8s, options, message):
    ports = [{"name": "http", "port": 8080}, {"name": "metrics", "port": 9090}]
    k8s.add_slice("prod", "web", "web-abc", ports, [k8s.endpoint("10.2.0.1", "web-1")])
    with pytest.raises(DiscoveryError, match=message) as caught:
        k8s_source(k8s, **options).discover(client())
    assert CANARY not in str(caught.value)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"source": "zookeeper", "url": "http://x"}, "Unknown discovery.source 'zookeeper'"),
        ({"source": "prometheus", "job": "x"}, "discovery.url is required"),
        ({"source": "prometheus", "url": "http://p"}, "discovery.job is required"),
        ({"source": "kubernetes", "url": "http://k", "service": "web"}, "namespace and discovery.service"),
        ({"source": "consul", "url": "http://c"}, "discovery.service is required"),
        (
            {"source": "consul", "url": "http://c", "service": "s", "status_url_template": "{ip}/s"},
            "unknown placeholder",
        ),
        ({"source": "consul", "url": "http://c", "service": "s", "status_url_template": "{address}/s"}, "must start"),
    ],
)
def test_unusable_discovery_options_are_refused(options, message):
    with pytest.raises(DiscoveryConfigError, match=message):
        make_source(options)


def test_no_discovery_is_none():
    assert make_source(None) is None
    assert make_source({"source": "none"}) is None


# -- the barrier asks every discovered instance ------------------------------------------------------
def test_the_barrier_asks_an_instance_consul_knows_and_the_list_does_not(consul, status_fake):  # noqa: F811
    port = fake_port(status_fake)
    app1 = status_fake.add("app-1", path="legacy")
    status_fake.add("app-2", path="legacy")
    status_fake.add("app-3", path="new", stale=True)  # cut off from the flag system, still on the cached "on"
    for name in ("app-1", "app-2", "app-3"):
        consul.register("web", name, "127.0.0.1", port)
    source = consul_source(consul, status_url_template=BY_NAME)
    clock = FakeClock()
    with pytest.raises(BarrierTimeout) as caught:
        wait_for_path(client(clock), [app1], discovery=source, timeout=1, interval=0.5, sleep=clock.sleep)
    message = str(caught.value)
    assert "still on another path: app-3 (" in message
    assert "discovered in Consul service web (instance app-3 on node n1, checks passing), not in status_urls" in message
    assert "path=new" in message
    assert "app-2" not in message
    result = caught.value.result
    assert result["discovery"] == {"source": "Consul service web", "instances": 3, "error": None}
    assert [i["name"] for i in result["not_configured"]] == ["app-2", "app-3"]
    assert len(consul.requests) == result["rounds"]  # asked again every round

    status_fake.set_path("app-3", "legacy")  # fixed
    done = wait_for_path(client(clock), [app1], discovery=source, timeout=1, interval=0.5, sleep=clock.sleep)
    assert {i["instance"]: i["path"] for i in done["instances"]} == {
        "app-1": "legacy",
        "app-2": "legacy",
        "app-3": "legacy",
    }
    assert [i["configured"] for i in done["instances"]] == [True, False, False]


def test_an_instance_that_appears_during_the_wait_is_asked_too(consul, status_fake):  # noqa: F811
    port = fake_port(status_fake)
    status_fake.add("app-1")
    status_fake.switch_after_polls("app-1", 1)  # the first round waits for it...
    status_fake.add("app-9", path="new")
    consul.register("web", "app-1", "127.0.0.1", port)
    original = consul.handle

    def scale_out_after_first_round(request):
        if len(consul.requests) == 2:
            consul.register("web", "app-9", "127.0.0.1", port)  # ...meanwhile an autoscaled instance appears
        return original(request)

    consul.handle = scale_out_after_first_round
    clock = FakeClock()
    source = consul_source(consul, status_url_template=BY_NAME)
    with pytest.raises(BarrierTimeout, match=r"still on another path: app-9"):
        wait_for_path(client(clock), [], discovery=source, timeout=1, interval=0.5, sleep=clock.sleep)


def test_a_source_that_cannot_be_asked_blocks(k8s, status_fake):  # noqa: F811
    url = status_fake.add("app-1", path="legacy")
    clock = FakeClock()
    source = k8s_source(k8s, token="k8s-norbac-0000000000")
    with pytest.raises(BarrierTimeout) as caught:
        wait_for_path(client(clock), [url], discovery=source, timeout=1, interval=0.5, sleep=clock.sleep)
    message = str(caught.value)
    assert message.startswith("Not every live instance is confirmed on path=legacy after 1s; the instances could not")
    assert "allowed to list endpointslices.discovery.k8s.io in namespace prod" in message
    assert caught.value.result["discovery"]["error"]


def test_kubernetes_pods_through_the_barrier(k8s, status_fake):  # noqa: F811
    port = fake_port(status_fake)
    status_fake.add("web-1", path="legacy")
    status_fake.add("web-2", path="legacy", stale=True, last_refresh=None)  # never fetched: on its SDK defaults
    ports = [{"name": "http", "port": port}]
    k8s.add_slice(
        "prod", "web", "web-abc", ports, [k8s.endpoint("127.0.0.1", "web-1"), k8s.endpoint("127.0.0.1", "web-2")]
    )
    clock = FakeClock()
    source = k8s_source(k8s, status_url_template=BY_NAME)
    with pytest.raises(BarrierTimeout) as caught:
        wait_for_path(
            client(clock), [], discovery=source, fetched_after="2020-01-01T00:00:00+00:00", timeout=1, interval=0.5,
            sleep=clock.sleep,
        )  # fmt: skip
    message = str(caught.value)
    assert "on legacy but without a fetch of the flag since it was turned off" in message
    assert "web-2 (" in message and "Pod web-2" in message and "last_refresh=None" in message
    assert "web-1 (" not in message
