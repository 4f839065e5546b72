# Copyright: contributors to the emergency-rollback runbook
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Where the live instances of the application are: asked of a source of truth, not of a list in group_vars.

The propagation barrier (flag_barrier) asks one of these every round and polls every instance it
names, besides the configured status URLs; an instance that is live but not on the list (an
autoscaled pod, a canary, a forgotten worker) is asked too. Each source returns `Discovered`
entries: the instance's status URL, its name in the source, and where it was found (for messages).

- `prometheus`: the active scrape targets of the application's job, `GET <url>/api/v1/targets?state=active`
  (https://prometheus.io/docs/prometheus/latest/querying/api/#targets: `data.activeTargets[]` with
  `labels` (`job`, `instance`, ...), `scrapeUrl`, `health`, `lastError`). A target that is down is still
  an instance Prometheus expects to exist, so it is asked as well (and blocks if it cannot answer).
- `kubernetes`: the EndpointSlices of the application's Service, `GET <url>/apis/discovery.k8s.io/v1/
  namespaces/<ns>/endpointslices?labelSelector=kubernetes.io/service-name=<service>`
  (https://kubernetes.io/docs/reference/kubernetes-api/service-resources/endpoint-slice-v1/: `items[].endpoints[]`
  with `addresses` (all fungible: the first is used), `conditions` (`ready`, `serving`, `terminating`) and
  `targetRef`; `items[].ports[]` with `name` and `port`; auth with a bearer token). Every endpoint
  counts, ready or not: a pod that is not ready or is terminating may still run and write. This is plain
  Python against the API's documented JSON because kubernetes.core (k8s_info) is not among the
  runbook's collections and would add the kubernetes client library to the execution environment for one GET.
- `consul`: the instances of a Consul service, `GET <url>/v1/health/service/<service>`
  (https://developer.hashicorp.com/consul/api-docs/health#list-service-instances-for-service: a list of
  `{Node: {Node, Address}, Service: {ID, Service, Address, Port}, Checks: [{Status}]}`; `Service.Address`
  empty means the node's address; ACL token in `X-Consul-Token`). With `passing_only` it adds `?passing`
  (only instances whose checks all pass); by default every registered instance is asked, since an
  instance failing its health check may still run and write.
Nothing here knows about Ansible; errors are `DiscoveryError` with a one-line message.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

from ansible.module_utils.http_client import HttpClient, HttpError, HttpGaveUp, Response, unknown_placeholder

SOURCES = ("prometheus", "kubernetes", "consul")
DEFAULT_TEMPLATE = "{scheme}://{address}/status"
TEMPLATE_FIELDS = ("scheme", "host", "port", "address", "name")
K8S_TOKEN_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/token"  # noqa: S105 - a path: the in-cluster token


class DiscoveryError(Exception):
    """The source could not be asked, or its answer names no instance. `str()` is one line, no secret."""


class DiscoveryConfigError(DiscoveryError):
    """The options cannot work; nothing was sent."""


@dataclass
class Discovered:
    status_url: str
    name: str  # how the source names the instance (target label, pod, service instance id)
    where: str  # where it was found, for messages: "Prometheus job x (target 10.0.0.1:8080, health down)"


def _address(host: str, port: int | str | None) -> str:
    try:
        if ipaddress.ip_address(host).version == 6:
            host = f"[{host}]"
    except ValueError:
        pass
    return f"{host}:{port}" if port not in (None, "") else host


def _check_template(template: str) -> None:
    try:
        problem = unknown_placeholder("status_url_template", template, TEMPLATE_FIELDS)
    except ValueError as exc:
        raise DiscoveryConfigError(f"status_url_template is not a valid template ({exc}).") from None
    if problem:
        raise DiscoveryConfigError(problem)
    if not template.startswith(("http://", "https://", "{scheme}://")):
        raise DiscoveryConfigError(
            f"status_url_template {template!r} must start with http://, https:// or {{scheme}}://, "
            "e.g. {scheme}://{address}/status."
        )


class Source:
    """Base: `discover(client) -> list[Discovered]`; `describe()` names the source in messages."""

    kind = ""
    auth_header = "Authorization"

    def __init__(self, options: dict[str, Any]):
        self.url = str(options.get("url") or "").rstrip("/")
        if not self.url:
            raise DiscoveryConfigError(f"discovery.url is required for {self.kind}: give the {self.kind} API's URL.")
        self.template = options.get("status_url_template") or DEFAULT_TEMPLATE
        _check_template(self.template)
        self.scheme = options.get("scheme") or "http"
        self.token = options.get("token") or ""

    def headers(self) -> dict[str, str]:
        if not self.token:
            return {}
        return {self.auth_header: self.token if self.auth_header != "Authorization" else f"Bearer {self.token}"}

    def status_url(self, scheme: str, host: str, port: Any, name: str) -> str:
        return self.template.format(scheme=scheme, host=host, port=port, address=_address(host, port), name=name)

    def describe(self) -> str:
        raise NotImplementedError

    def discover(self, client: HttpClient) -> list[Discovered]:
        raise NotImplementedError

    def _get(self, client: HttpClient, path: str, params: dict[str, str] | None = None) -> Response:
        """One GET of the source (no retries inside a round: the barrier's next round is the retry)."""
        safe = client.safe_url(self.url + path)
        if self.token and self.token not in client.secrets:
            client.secrets.append(self.token)
        try:
            response = client.request(
                "GET", self.url + path, params=params, headers=self.headers(), deadline=client.clock(),
                what=f"ask {self.describe()}",
            )  # fmt: skip
        except HttpGaveUp as exc:
            raise DiscoveryError(f"cannot ask {self.describe()}: {safe} {exc.failure}") from None
        except HttpError as exc:
            raise DiscoveryError(str(exc)) from None
        if response.status in (401, 403):
            raise DiscoveryError(
                f"{self.describe()} refused the request ({response.status}): {self.auth_fix()}"
            )  # fmt: skip
        if response.status != 200:
            said = client.status_error(response, f"ask {self.describe()}", f"it answered {response.status}")
            raise DiscoveryError(str(said).rstrip(".") + f"; check discovery.url ({safe}).")
        return response

    def auth_fix(self) -> str:
        return "set the token in ROLLBACK_DISCOVERY_TOKEN (or discovery.token) to one that may read it"


class PrometheusSource(Source):
    kind = "prometheus"

    def __init__(self, options: dict[str, Any]):
        super().__init__(options)
        self.job = options.get("job") or ""
        if not self.job:
            raise DiscoveryConfigError("discovery.job is required for prometheus: give the application's scrape job.")
        self.name_label = options.get("name_label") or "instance"

    def describe(self) -> str:
        return f"Prometheus job {self.job}"

    def discover(self, client: HttpClient) -> list[Discovered]:
        response = self._get(client, "/api/v1/targets", {"state": "active"})
        body = response.body
        targets = body.get("data", {}).get("activeTargets") if isinstance(body, dict) else None
        if not isinstance(targets, list):
            raise DiscoveryError(f"{self.url} answered no data.activeTargets: is discovery.url Prometheus' own URL?")
        found = []
        for target in targets:
            labels = target.get("labels") if isinstance(target, dict) else None
            if not isinstance(labels, dict) or labels.get("job") != self.job:
                continue
            scrape = urlsplit(str(target.get("scrapeUrl") or ""))
            if not scrape.hostname:
                continue
            instance = str(labels.get("instance", scrape.netloc))
            name = str(labels.get(self.name_label) or instance)
            health = target.get("health", "unknown")
            status_url = self.status_url(scrape.scheme, scrape.hostname, scrape.port or "", name)
            found.append(Discovered(status_url, name, f"{self.describe()} (target {instance}, health {health})"))
        if not found:
            raise DiscoveryError(
                f"Prometheus at {client.safe_url(self.url)} has no active target of job {self.job}: check "
                "discovery.job (the job label the application's metrics carry)."
            )
        return found


class KubernetesSource(Source):
    kind = "kubernetes"

    def __init__(self, options: dict[str, Any]):
        super().__init__(options)
        self.namespace = options.get("namespace") or ""
        self.service = options.get("service") or ""
        if not self.namespace or not self.service:
            raise DiscoveryConfigError(
                "discovery.namespace and discovery.service are required for kubernetes: the application's Service."
            )
        self.port = options.get("port")
        if not self.token and os.path.exists(K8S_TOKEN_FILE):
            with open(K8S_TOKEN_FILE, encoding="utf-8") as handle:
                self.token = handle.read().strip()

    def describe(self) -> str:
        return f"Kubernetes Service {self.namespace}/{self.service}"

    def auth_fix(self) -> str:
        return (
            "give a token (ROLLBACK_DISCOVERY_TOKEN, or the pod's service account) allowed to list "
            f"endpointslices.discovery.k8s.io in namespace {self.namespace}"
        )

    def _port(self, ports: list) -> Any:
        named = [p for p in ports if isinstance(p, dict)]
        if self.port in (None, ""):
            if len(named) == 1:
                return named[0].get("port")
            raise DiscoveryError(
                f"{self.describe()} has {len(named)} ports ({', '.join(str(p.get('name')) for p in named)}): "
                "set discovery.port to the name or number of the one serving /status."
            )
        for port in named:
            if str(port.get("name")) == str(self.port) or str(port.get("port")) == str(self.port):
                return port.get("port")
        raise DiscoveryError(f"{self.describe()} has no port {self.port}: set discovery.port to one of its ports.")

    def discover(self, client: HttpClient) -> list[Discovered]:
        path = f"/apis/discovery.k8s.io/v1/namespaces/{quote(self.namespace, safe='')}/endpointslices"
        response = self._get(client, path, {"labelSelector": f"kubernetes.io/service-name={self.service}"})
        items = response.body.get("items") if isinstance(response.body, dict) else None
        if not isinstance(items, list):
            raise DiscoveryError(f"{self.url} answered no EndpointSliceList: is discovery.url the Kubernetes API?")
        found = []
        for item in items:
            slice_name = str((item.get("metadata") or {}).get("name", "?"))
            endpoints = [e for e in item.get("endpoints") or [] if isinstance(e, dict) and e.get("addresses")]
            if not endpoints:
                continue
            port = self._port(item.get("ports") or [])
            for endpoint in endpoints:
                address = str(endpoint["addresses"][0])
                ref = endpoint.get("targetRef") or {}
                name = str(ref.get("name") or address)
                conditions = endpoint.get("conditions") or {}
                state = ", ".join(f"{key} {str(conditions.get(key)).lower()}" for key in ("ready", "terminating"))
                where = f"{self.describe()} (EndpointSlice {slice_name}, {ref.get('kind', 'endpoint')} {name}, {state})"
                found.append(Discovered(self.status_url(self.scheme, address, port, name), name, where))
        if not found:
            raise DiscoveryError(
                f"{self.describe()} has no endpoint: check discovery.namespace and discovery.service "
                "(the Service that selects the application's pods)."
            )
        return found


class ConsulSource(Source):
    kind = "consul"
    auth_header = "X-Consul-Token"

    def __init__(self, options: dict[str, Any]):
        super().__init__(options)
        self.service = options.get("service") or ""
        if not self.service:
            raise DiscoveryConfigError("discovery.service is required for consul: the application's service name.")
        self.passing_only = bool(options.get("passing_only"))

    def describe(self) -> str:
        return f"Consul service {self.service}"

    def auth_fix(self) -> str:
        return f"give an ACL token with service:read on {self.service} (ROLLBACK_DISCOVERY_TOKEN or discovery.token)"

    def discover(self, client: HttpClient) -> list[Discovered]:
        params = {"passing": "1"} if self.passing_only else None
        response = self._get(client, f"/v1/health/service/{quote(self.service, safe='')}", params)
        if not isinstance(response.body, list):
            raise DiscoveryError(f"{self.url} answered no list of service instances: is discovery.url Consul's API?")
        headers = {key.lower(): value for key, value in response.headers.items()}
        if not response.body and headers.get("x-consul-results-filtered-by-acls", "").lower() == "true":
            raise DiscoveryError(f"{self.describe()}: the ACL token may not read it; {self.auth_fix()}.")
        found = []
        for entry in response.body:
            service = entry.get("Service") if isinstance(entry, dict) else None
            node = entry.get("Node") if isinstance(entry, dict) else None
            if not isinstance(service, dict) or not isinstance(node, dict):
                continue
            host = service.get("Address") or node.get("Address")
            if not host:
                continue
            statuses = [c.get("Status") for c in entry.get("Checks") or [] if isinstance(c, dict)]
            health = next((s for s in ("critical", "warning") if s in statuses), "passing")
            name = str(service.get("ID") or f"{host}:{service.get('Port')}")
            where = f"{self.describe()} (instance {name} on node {node.get('Node', '?')}, checks {health})"
            found.append(Discovered(self.status_url(self.scheme, str(host), service.get("Port"), name), name, where))
        if not found:
            raise DiscoveryError(
                f"{self.describe()} has no {'passing ' if self.passing_only else ''}instance: check discovery.service."
            )
        return found


def make_source(options: dict[str, Any] | None) -> Source | None:
    """The source the `discovery` option names, or None when it names none."""
    if not options or not options.get("source") or options.get("source") == "none":
        return None
    kinds = {"prometheus": PrometheusSource, "kubernetes": KubernetesSource, "consul": ConsulSource}
    source = options["source"]
    if source not in kinds:
        raise DiscoveryConfigError(f"Unknown discovery.source {source!r}: use one of {', '.join(SOURCES)} or none.")
    return kinds[source](options)
