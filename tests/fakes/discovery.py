"""Contract fakes of the barrier's discovery sources that cannot run here: Consul and the Kubernetes API.

(Prometheus runs here, Debian's own: its discovery is tested against the real one.)

`ConsulFake`: `GET /v1/health/service/:service` as https://developer.hashicorp.com/consul/api-docs/health
("List Service Instances for Service") documents it:
- the answer is a JSON list of `{"Node": {...}, "Service": {...}, "Checks": [...]}`; an unknown service is an
  empty list (200), not a 404; `?passing` keeps only instances whose checks are all passing;
- ACLs (https://developer.hashicorp.com/consul/api-docs/api-structure#authentication): the token comes in
  `X-Consul-Token` (or `Authorization: Bearer`); an unknown token is a 403 "ACL not found"; a token without
  service:read gets a 200 with the instances filtered out and `X-Consul-Results-Filtered-By-ACLs: true`;
- only GET (405 otherwise); blocking-query headers `X-Consul-Index`, `X-Consul-KnownLeader`.

`KubernetesFake`: `GET /apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices` as
https://kubernetes.io/docs/reference/kubernetes-api/service-resources/endpoint-slice-v1/ ("list") and the
API concepts (https://kubernetes.io/docs/reference/using-api/api-concepts/) document it:
- an `EndpointSliceList` (`apiVersion: discovery.k8s.io/v1`, `kind`, `metadata.resourceVersion`, `items`);
  `labelSelector=kubernetes.io/service-name=<svc>` selects a Service's slices; a malformed selector is a 400;
  a namespace with nothing in it lists nothing (200, empty items);
- auth (https://kubernetes.io/docs/reference/access-authn-authz/authentication/): `Authorization: Bearer
  <token>`; a missing or unknown token is a 401, a token whose RBAC may not list endpointslices in that
  namespace a 403; errors are `Status` objects (`kind: Status`, `status: Failure`, `message`, `reason`, `code`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tests.fakes.base import Answer, FakeApi, Request


@dataclass
class ConsulFake(FakeApi):
    token: str = "consul-token-00000000"
    no_read_token: str = "consul-noread-0000000"
    # service name -> list of instances {"id", "node", "node_address", "address", "port", "status"}
    services: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    index: int = 100

    def __post_init__(self) -> None:
        super().__init__()

    def register(self, service: str, sid: str, address: str, port: int, *, status: str = "passing", node: str = "n1"):
        entry = {"id": sid, "node": node, "node_address": "10.0.0.1", "address": address, "port": port}
        self.services.setdefault(service, []).append({**entry, "status": status})

    def handle(self, request: Request) -> Answer:
        token = request.headers.get("x-consul-token") or request.headers.get("authorization", "").removeprefix(
            "Bearer "
        )
        if token not in (self.token, self.no_read_token):
            return 403, {"Content-Type": "text/plain"}, b"ACL not found"
        parts = request.path.strip("/").split("/")
        if parts[:3] != ["v1", "health", "service"] or len(parts) != 4:
            return 404, {"Content-Type": "text/plain"}, b"Not Found"
        if request.method != "GET":
            return 405, {"Content-Type": "text/plain"}, b"method not allowed"
        headers = {"X-Consul-Index": str(self.index), "X-Consul-KnownLeader": "true"}
        if token == self.no_read_token:
            return 200, {**headers, "X-Consul-Results-Filtered-By-ACLs": "true"}, []
        passing = "passing" in request.query or request.query.get("passing") is not None
        out = []
        for inst in self.services.get(parts[3], []):
            if passing and inst["status"] != "passing":
                continue
            out.append(
                {
                    "Node": {"ID": "", "Node": inst["node"], "Address": inst["node_address"], "Datacenter": "dc1"},
                    "Service": {
                        "ID": inst["id"],
                        "Service": parts[3],
                        "Tags": [],
                        "Address": inst["address"],
                        "Port": inst["port"],
                        "Meta": {},
                    },
                    "Checks": [
                        {"Node": inst["node"], "CheckID": "serfHealth", "Status": "passing", "ServiceID": ""},
                        {
                            "Node": inst["node"],
                            "CheckID": f"service:{inst['id']}",
                            "Status": inst["status"],
                            "ServiceID": inst["id"],
                        },
                    ],
                }
            )
        return 200, headers, out


def k8s_status(code: int, reason: str, message: str) -> Answer:
    body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure"}
    return code, {}, {**body, "message": message, "reason": reason, "code": code}


@dataclass
class KubernetesFake(FakeApi):
    token: str = "k8s-token-000000000000"
    no_rbac_token: str = "k8s-norbac-0000000000"
    # (namespace, service) -> list of slices {"name", "ports": [{"name", "port"}], "endpoints": [...]}
    slices: dict[tuple[str, str], list[dict[str, Any]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__()

    def add_slice(self, namespace: str, service: str, name: str, ports: list[dict], endpoints: list[dict]) -> None:
        self.slices.setdefault((namespace, service), []).append({"name": name, "ports": ports, "endpoints": endpoints})

    @staticmethod
    def endpoint(address: str, pod: str, ready: bool = True, terminating: bool = False) -> dict[str, Any]:
        return {
            "addresses": [address],
            "conditions": {"ready": ready, "serving": ready, "terminating": terminating},
            "targetRef": {"kind": "Pod", "name": pod, "namespace": "ns", "uid": f"uid-{pod}"},
            "nodeName": "node-1",
        }

    def handle(self, request: Request) -> Answer:
        auth = request.headers.get("authorization", "")
        token = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else None
        if token not in (self.token, self.no_rbac_token):
            return k8s_status(401, "Unauthorized", "Unauthorized")
        parts = request.path.strip("/").split("/")
        if (
            parts[:4] != ["apis", "discovery.k8s.io", "v1", "namespaces"]
            or len(parts) != 6
            or parts[5] != "endpointslices"
        ):
            return k8s_status(404, "NotFound", "the server could not find the requested resource")
        namespace = parts[4]
        if request.method != "GET":
            return k8s_status(405, "MethodNotAllowed", f"the server does not allow this method on {request.path}")
        if token == self.no_rbac_token:
            return k8s_status(
                403,
                "Forbidden",
                'endpointslices.discovery.k8s.io is forbidden: User "system:serviceaccount:ops:rollback" cannot '
                f'list resource "endpointslices" in API group "discovery.k8s.io" in the namespace "{namespace}"',
            )
        selector = ",".join(request.query.get("labelSelector", []))
        wanted = None
        if selector:
            key, sep, value = selector.partition("=")
            if not sep or not key or "=" in value or " " in selector:
                return k8s_status(400, "BadRequest", f"unable to parse requirement: {selector}")
            wanted = value if key == "kubernetes.io/service-name" else "\0"
        items = []
        for (ns, service), slices in self.slices.items():
            if ns != namespace or (wanted is not None and service != wanted):
                continue
            for piece in slices:
                items.append(
                    {
                        "metadata": {
                            "name": piece["name"],
                            "namespace": ns,
                            "labels": {"kubernetes.io/service-name": service},
                        },
                        "addressType": "IPv4",
                        "endpoints": piece["endpoints"],
                        "ports": [{"protocol": "TCP", **port} for port in piece["ports"]],
                    }
                )
        body = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSliceList", "metadata": {"resourceVersion": "7"}}
        return 200, {}, {**body, "items": items}
