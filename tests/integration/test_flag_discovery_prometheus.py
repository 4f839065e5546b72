"""The barrier's discovery from a real Prometheus (Debian's): the active targets of the application's job."""

from urllib.parse import urlsplit

import pytest
from ansible.module_utils.flag_barrier import BarrierTimeout, wait_for_path
from ansible.module_utils.flag_discovery import DiscoveryError, make_source
from ansible.module_utils.http_client import HttpClient

from rehearsal.postgres import free_port
from tests.fakes.clock import FakeClock
from tests.fakes.fixtures import status_fake  # noqa: F401 - fixture

pytestmark = pytest.mark.integration
JOB = "transformation-engine"
BY_NAME = "{scheme}://{address}/{name}/status"  # the status fake answers every instance under /<name>/status


def client(clock):
    return HttpClient(timeout=2, max_wait=0, clock=clock, sleep=clock.sleep)


def source(server, **options):
    base = {"source": "prometheus", "url": server.url, "job": JOB, "name_label": "app_instance"}
    return make_source({**base, "status_url_template": BY_NAME, **options})


def test_an_instance_prometheus_scrapes_but_the_list_forgot_blocks_the_schema_step(prometheus_server, status_fake):  # noqa: F811
    address = urlsplit(status_fake.url).netloc
    app1 = status_fake.add("app-1", path="legacy")
    status_fake.add("app-2", path="legacy")
    status_fake.add("app-3", path="new", stale=True)  # lost its flag system, serves the cached "on"
    prometheus_server.set_targets(JOB, [(address, {"app_instance": f"app-{n}"}) for n in (1, 2, 3)])
    prometheus_server.set_targets("other-job", [(address, {"app_instance": "not-ours"})])

    found = source(prometheus_server).discover(client(FakeClock()))
    assert sorted(d.name for d in found) == ["app-1", "app-2", "app-3"]  # only the application's job
    assert all(d.where.startswith(f"Prometheus job {JOB} (target {address}, health ") for d in found)

    clock = FakeClock()
    with pytest.raises(BarrierTimeout) as caught:
        wait_for_path(
            client(clock), [app1], discovery=source(prometheus_server), timeout=1, interval=0.5, sleep=clock.sleep
        )
    message = str(caught.value)
    assert "still on another path: app-3 (" in message
    assert f"discovered in Prometheus job {JOB} (target {address}" in message
    assert "not in status_urls: path=new" in message
    assert "app-1 (" not in message and "app-2 (" not in message

    status_fake.set_path("app-3", "legacy")
    status_fake.instances["app-3"].stale = False  # its link to the flag system is back
    done = wait_for_path(
        client(clock), [app1], discovery=source(prometheus_server), fetched_after="2020-01-01T00:00:00+00:00",
        timeout=1, interval=0.5, sleep=clock.sleep,
    )  # fmt: skip
    assert done["discovery"] == {"source": f"Prometheus job {JOB}", "instances": 3, "error": None}
    assert sorted(i["instance"] for i in done["instances"]) == ["app-1", "app-2", "app-3"]
    assert sorted(i["name"] for i in done["not_configured"]) == ["app-2", "app-3"]
    assert all(i["fetched_after_flag_change"] for i in done["instances"])


def test_a_job_prometheus_does_not_know_or_an_unreachable_prometheus_blocks(prometheus_server, status_fake):  # noqa: F811
    app1 = status_fake.add("app-1", path="legacy")
    clock = FakeClock()
    with pytest.raises(DiscoveryError, match=r"has no active target of job nope: check discovery\.job"):
        source(prometheus_server, job="nope").discover(client(clock))
    gone = {"source": "prometheus", "url": f"http://127.0.0.1:{free_port()}", "job": JOB}
    with pytest.raises(BarrierTimeout) as caught:
        wait_for_path(client(clock), [app1], discovery=make_source(gone), timeout=1, interval=0.5, sleep=clock.sleep)
    assert "the instances could not be discovered: cannot ask Prometheus job" in str(caught.value)
    assert "could not connect" in str(caught.value)
