#!/usr/bin/python
# Copyright: contributors to the emergency-rollback runbook
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Ansible module: the propagation barrier between "flag off" and "schema revert"."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: flag_propagation
short_description: Wait until every live application instance reports the legacy path
description:
  - Polls the C(/status) endpoint of every application instance concurrently, round after round, until
    one round confirms all of them, or I(timeout) passes.
  - The instances are those of I(status_urls) and, with I(discovery), every instance a source of truth
    lists as live, asked again each round - Prometheus' active targets of the application's job,
    the EndpointSlices of its Kubernetes Service, or the instances of its Consul service. An instance that
    is live but missing from I(status_urls) (an autoscaled pod, a canary, a forgotten worker) is asked
    too; one that cannot be read, has no status endpoint, or reports another path blocks the barrier,
    and so does a source that cannot be asked or lists no instance.
  - An instance is confirmed when it reports I(expected_path) in the field I(path_key) and, given
    I(fetched_after) (the moment the flag system confirmed the flag off, C(feature_flag)'s
    C(confirmed_at)), when its last successful fetch of the flag configuration (I(fetch_key)) is at least
    I(clock_skew) seconds later - so an instance that reports legacy only because it has not fetched
    yet, or has lost its link to the flag system, is not taken for one that saw the flag off.
  - For applications without a status endpoint, I(cache_ttl) makes the barrier also wait until that
    many seconds have passed (the SDK's flag cache lifetime); with no I(status_urls) and no I(discovery)
    it only waits the TTL.
  - On timeout it fails naming every instance that blocks, where it was found (configured, or the
    source and its name there) and what it last reported (path, C(last_refresh), C(config_version), or why
    it could not be read).
  - 'The status JSON is the one of docs/interfaces.md, e.g. C({"instance": "app-1", "path": "legacy",
    "last_refresh": "2026-11-28T00:58:15.120+00:00", "config_version": "...", "refresh_interval": 1.0}).'
  - Never changes anything, so C(changed) is always false.
version_added: "0.1.0"
author:
  - Emergency rollback runbook maintainers (!UNKNOWN)
attributes:
  check_mode:
    support: full
    description: Discovers and polls each instance once and reports what it says; does not wait and does not fail.
  diff_mode:
    support: none
    description: Reads only (polls the instances), so there is no change to show.
extends_documentation_fragment:
  - rollback_http
options:
  status_urls:
    description: The status URL of every application instance you know of, e.g. C(https://app-1.example.com/status).
    type: list
    elements: str
    default: []
  discovery:
    description:
      - Where the live instances are listed. Omit it (or C(source=none)) to poll I(status_urls) only.
    type: dict
    suboptions:
      source:
        description: The source of truth.
        type: str
        required: true
        choices: [none, prometheus, kubernetes, consul]
      url:
        description:
          - The source's API, e.g. C(https://prometheus.example.com), C(https://kubernetes.default.svc),
            C(https://consul.example.com:8501).
        type: str
      job:
        description: "prometheus: the scrape job of the application (its C(job) label)."
        type: str
      name_label:
        description: "prometheus: the target label that names an instance in messages."
        type: str
        default: instance
      namespace:
        description: "kubernetes: the namespace of the application's Service."
        type: str
      service:
        description: "kubernetes: the application's Service (its EndpointSlices are read); consul: the service name."
        type: str
      port:
        description:
          - "kubernetes: the name or number of the port serving C(/status); needed when the Service has several."
        type: str
      passing_only:
        description:
          - "consul: ask only instances whose checks all pass (C(?passing)). Off by default: an instance failing
            its health check may still run and write, so it is asked too (and blocks if it cannot answer)."
        type: bool
        default: false
      scheme:
        description: "kubernetes, consul: the scheme of the instances' status URLs (prometheus uses each target's)."
        type: str
        default: http
        choices: [http, https]
      status_url_template:
        description:
          - How a discovered instance's status URL is built. Placeholders C({scheme}), C({host}), C({port}),
            C({address}) (host:port, IPv6 in brackets), C({name}).
        type: str
        default: "{scheme}://{address}/status"
      token:
        description:
          - Bearer token for Prometheus or Kubernetes, ACL token for Consul (sent as C(X-Consul-Token)). Falls
            back to the environment variable C(ROLLBACK_DISCOVERY_TOKEN); for kubernetes, then to the pod's
            service account token. Never printed.
        type: str
  fetched_after:
    description:
      - When the flag system confirmed the flag's new state (UTC ISO 8601, C(feature_flag)'s C(confirmed_at)).
        Given it, an instance counts only once it reports a fetch of the flag configuration (I(fetch_key)) made
        at least I(clock_skew) seconds later. Omit it to accept the path alone.
    type: str
  fetch_key:
    description: The field of the status JSON that holds the instance's last successful flag fetch (ISO 8601).
    type: str
    default: last_refresh
  clock_skew:
    description:
      - Seconds by which an instance's clock may be ahead of the controller's. A fetch counts only if it is
        reported this much after I(fetched_after); a larger value waits a little longer, never less safely.
    type: float
    default: 1
  expected_path:
    description: The value of I(path_key) every instance must report.
    type: str
    default: legacy
  path_key:
    description: The field of the status JSON that names the path.
    type: str
    default: path
  timeout:
    description: Seconds to wait in all before failing.
    type: float
    default: 60
  interval:
    description: Seconds between two polling rounds.
    type: float
    default: 1
  cache_ttl:
    description:
      - Seconds the barrier waits at least, for applications that have no status endpoint (their flag SDK's
        cache lifetime). 0 when every application has a status endpoint. Must not exceed I(timeout).
    type: float
    default: 0
  request_timeout:
    description: Seconds for one status or discovery request (connect and read).
    type: float
    default: 5
notes:
  - "Runs on the controller; use C(delegate_to: localhost) and C(run_once) per environment."
  - "Discovery references: Prometheus HTTP API C(/api/v1/targets); Kubernetes C(discovery.k8s.io/v1) EndpointSlice;
    Consul C(/v1/health/service/:service). Kubernetes is read with plain HTTP (no kubernetes.core), with the pod's
    service account when it runs in the cluster."
seealso:
  - module: feature_flag
"""

EXAMPLES = r"""
- name: Wait until every live instance is on the legacy path and has fetched the flag since it went off
  flag_propagation:
    status_urls:
      - https://app-1.example.com/status
      - https://app-2.example.com/status
    discovery:
      source: prometheus
      url: https://prometheus.example.com
      job: transformation-engine
    fetched_after: "{{ flag_result.confirmed_at }}"
    timeout: 60
    interval: 1

- name: The pods of a Kubernetes Service (in the cluster, with the service account's token)
  flag_propagation:
    discovery:
      source: kubernetes
      url: https://kubernetes.default.svc
      namespace: transformation
      service: transformation-engine
      port: http
    ca_path: /var/run/secrets/kubernetes.io/serviceaccount/ca.crt
    fetched_after: "{{ flag_result.confirmed_at }}"

- name: The instances of a Consul service (ACL token from ROLLBACK_DISCOVERY_TOKEN)
  flag_propagation:
    discovery:
      source: consul
      url: https://consul.example.com:8501
      service: transformation-engine
    fetched_after: "{{ flag_result.confirmed_at }}"

- name: An app without a status endpoint, whose SDK caches flags for 30 s
  flag_propagation:
    cache_ttl: 30
    timeout: 45
"""

RETURN = r"""
elapsed_seconds:
  description: Seconds the barrier took (until every instance was confirmed and the TTL had passed).
  returned: always
  type: float
  sample: 1.27
rounds:
  description: Polling rounds made.
  returned: always
  type: int
  sample: 2
expected_path:
  description: The path waited for.
  returned: always
  type: str
  sample: legacy
fetched_after:
  description: The flag change every instance had to have fetched since (null when not required).
  returned: always
  type: str
last_confirmed_after_flag_seconds:
  description:
    - Seconds from I(fetched_after) to the round that confirmed the last instance (null without I(fetched_after)
      or when not every instance was confirmed).
  returned: always
  type: float
  sample: 1.42
discovery:
  description: The source asked, how many instances it listed in the last round, and why it could not be asked.
  returned: always
  type: dict
  sample: {"source": "Prometheus job transformation-engine", "instances": 3, "error": null}
not_configured:
  description: Discovered instances that are not in I(status_urls) (each as in I(instances)); a warning names them.
  returned: always
  type: list
  elements: dict
waited_for_cache_ttl:
  description: The cache TTL the barrier honoured (0 when none).
  returned: always
  type: float
  sample: 0
instances:
  description: Per instance (configured or discovered in the last round), what it reported last.
  returned: always
  type: list
  elements: dict
  contains:
    url:
      description: The status URL.
      type: str
    instance:
      description: The instance's own name, if it reports one.
      type: str
    name:
      description: Its name in the discovery source (null when only configured).
      type: str
    discovered_in:
      description:
        - Where it was discovered, e.g. C(Prometheus job transformation-engine (target 10.0.0.7:8080, health up)).
      type: str
    configured:
      description: Whether it is in I(status_urls).
      type: bool
    path:
      description: The path it reported last (null if it could not be read).
      type: str
    last_refresh:
      description: Its last successful flag fetch, as it reports (I(fetch_key)).
      type: str
    config_version:
      description: The version of the flag configuration it evaluates, as it reports (e.g. the ETag of its last fetch).
      type: raw
    fetched_after_flag_change:
      description: Whether its last fetch is after I(fetched_after) (null when not required or not read).
      type: bool
    confirmed_at:
      description: When the barrier first confirmed it (UTC), in the streak that ended the wait.
      type: str
    error:
      description: Why it could not be read on the last round, or null.
      type: str
    polls:
      description: Status requests sent to it.
      type: int
"""

from ansible.module_utils.flag_options import flag_propagation_spec
from ansible.module_utils.runbook_plugin import Plugin

try:
    from ansible.module_utils.flag_barrier import run_flag_propagation
except ImportError as exc:  # requests is missing on the controller
    run_flag_propagation, IMPORT_ERROR = None, exc
else:
    IMPORT_ERROR = None

# The plugin, once: this module's main() and the action plugins/action/flag_propagation.py both run it.
PLUGIN = Plugin(
    "flag_propagation", flag_propagation_spec, run_flag_propagation, requires="requests", import_error=IMPORT_ERROR
)


def main() -> None:
    PLUGIN.main()


if __name__ == "__main__":
    main()
