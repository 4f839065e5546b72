#!/usr/bin/python
# Copyright: (c) 2026, the emergency rollback runbook's authors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module: the verification's verdict (instances healthy, 5xx ratio back at its baseline)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: app_verify
short_description: Verify the application after a rollback, with a verdict that never mistakes missing data for health
description:
  - Judges, once, what the rollback read back (the flag's state, each database's revision and schema
    fingerprint), then polls every application instance's health endpoint and asks Prometheus for the
    requests and the 5xx responses of the last I(window), until every instance is healthy and the 5xx ratio is at most
    I(baseline) + I(tolerance) over at least I(min_requests) requests, or I(wait) seconds have passed.
  - 'Returns a I(verdict) of three values: C(verified) (everything checked and within the limits),
    C(failed) (at the end of the wait an instance is unhealthy or the ratio is above the limit), or
    C(inconclusive) (something could not be checked: no Prometheus or no instance configured, Prometheus
    unreachable or refusing the query, no series at all - a renamed metric or a wrong job or label -, or
    fewer than I(min_requests) requests in the window). I(unchecked) names each gap and what to look at.'
  - The verdict is a result, not a failure; the task fails only on options that cannot work. The caller
    decides what a C(failed) or C(inconclusive) verdict means (the rollback fails its run on either).
  - The requests query sums the C(increase) of I(metric) matching I(selector) over I(window); the errors query
    adds the matcher I(status_label) =~ I(error_status). I(requests_query) and I(errors_query) replace both.
    Presets for the rehearsal app, ASP.NET Core 8 (OpenTelemetry Prometheus exporter) and Spring Boot
    (Micrometer) are in C(inventories/group_vars/all.yml); the queries asked are returned in I(queries).
  - With I(mode=baseline) it reads the ratio once (no health check, no wait) and says whether it could be
    measured (what C(deploy.yml) records before a deployment).
  - Never changes anything, so C(changed) is always false.
version_added: "0.2.0"
author:
  - Emergency rollback runbook team (@emergency-rollback)
attributes:
  check_mode:
    support: full
    description: Polls once and returns the verdict of that poll, without waiting.
  diff_mode:
    support: none
    description: Changes nothing, so there is nothing to diff.
options:
  mode:
    description: C(verify) returns the verdict; C(baseline) reads the 5xx ratio once, to record before a deployment.
    type: str
    choices: [verify, baseline]
    default: verify
  flag:
    description:
      - The flag as read back after the rollback (C(state), or C(error) when it could not be read). A state other
        than C(disabled) is C(failed); an error is C(inconclusive). Omitted, the flag is not part of the verdict.
    type: dict
    suboptions:
      state:
        description: The state read, e.g. C(disabled).
        type: str
      error:
        description: Why it could not be read.
        type: str
  databases:
    description:
      - Each database as C(schema_state) read it after the rollback (C(name), C(revision), C(fingerprint), or
        C(failed) and C(msg)). A revision other than I(target_revision), or a fingerprint other than the one of
        its rollback point, is C(failed); a database that could not be read, or without a recorded fingerprint
        to compare with, is C(inconclusive).
    type: list
    elements: dict
    default: []
  databases_error:
    description: Why the databases could not be read at all (then the schema is C(inconclusive)).
    type: str
  rollback_points:
    description: Database name to the rollback point recorded before the deployment (C(revision), C(fingerprint)).
    type: dict
    default: {}
  target_revision:
    description: The revision every database must be at.
    type: str
  health_urls:
    description: The health endpoint of every application instance, e.g. C(https://app-1.example.com/healthz).
    type: list
    elements: str
    default: []
  health:
    description: What a healthy answer is (the environment's health contract).
    type: dict
    default: {}
    suboptions:
      status_codes:
        description: The HTTP statuses of a healthy answer.
        type: list
        elements: int
        default: [200]
      json_key:
        description: A field of the JSON answer that must be present (dotted for nested fields, e.g. C(status)).
        type: str
      json_value:
        description: The value I(json_key) must have, compared as text (e.g. C(UP) for Spring Boot's actuator).
        type: str
      text:
        description: The whole body, stripped, must be this (e.g. C(Healthy) for ASP.NET Core's health checks).
        type: str
  prometheus_url:
    description: Prometheus' base URL. Empty means the 5xx ratio cannot be checked (verdict at best C(inconclusive)).
    type: str
    default: ""
  metric:
    description: The counter of finished HTTP requests, e.g. C(http_requests_total).
    type: str
    default: http_requests_total
  status_label:
    description: The label of I(metric) that holds the HTTP status code.
    type: str
    default: status
  selector:
    description:
      - Label matchers without braces that select the application's requests, e.g.
        C(job="transformation-engine",path="/transform"). Leave the health and status endpoints out, so that
        probes do not dilute the ratio.
    type: str
    default: ""
  error_status:
    description: The regular expression of the status codes counted as errors.
    type: str
    default: "5.."
  requests_query:
    description: A PromQL instant query for the number of requests in the window; replaces the one built from I(metric).
    type: str
  errors_query:
    description: A PromQL instant query for the number of error responses in the window (with I(requests_query)).
    type: str
  window:
    description: The PromQL range the requests are counted over (at least 4 scrape intervals), e.g. C(1m).
    type: str
    default: 1m
  min_requests:
    description: Fewer requests than this in the window is C(inconclusive) (no traffic to judge a ratio on).
    type: float
    default: 20
  baseline:
    description: The 5xx ratio recorded before the deployment (0 to 1). Unset means 0, with a warning.
    type: float
  tolerance:
    description: Absolute tolerance over I(baseline) (0.01 is one percentage point).
    type: float
    default: 0.01
  wait:
    description: Seconds to keep polling until everything checks out.
    type: float
    default: 120
  interval:
    description: Seconds between two polls.
    type: float
    default: 3
  timeout:
    description: Seconds for one HTTP request (connect and read).
    type: float
    default: 5
  validate_certs:
    description: Verify the TLS certificates of the instances and of Prometheus; prefer I(ca_path) to turning it off.
    type: bool
    default: true
  ca_path:
    description: A CA bundle (PEM) to verify the instances' and Prometheus' certificates with.
    type: path
notes:
  - Runs on the controller. A Prometheus behind an authenticating proxy gets the bearer token from the
    environment variable C(PROMETHEUS_BEARER_TOKEN) (never an option, never printed).
  - One request per instance and two Prometheus queries per poll; an answer that is late or a 5xx is
    simply read again at the next poll.
seealso:
  - module: flag_propagation
  - name: Prometheus HTTP API
    description: The instant query endpoint and its answers.
    link: https://prometheus.io/docs/prometheus/latest/querying/api/
"""

EXAMPLES = r"""
- name: Verify the application after the rollback (the rehearsal app's metrics)
  app_verify:
    health_urls: [https://app-1.example.com/healthz, https://app-2.example.com/healthz]
    health: {json_key: status, json_value: ok}
    prometheus_url: https://prometheus.example.com
    metric: http_requests_total
    status_label: status
    selector: job="transformation-engine",path="/transform"
    baseline: 0.002
    tolerance: 0.01
    wait: 120
  register: verification

- name: Fail unless verified
  ansible.builtin.fail:
    msg: "{{ verification.msg }}"
  when: verification.verdict != 'verified'

- name: ASP.NET Core 8 through OpenTelemetry's Prometheus exporter
  app_verify:
    health_urls: [https://api-1.example.com/healthz]
    health: {text: Healthy}
    prometheus_url: https://prometheus.example.com
    metric: http_server_request_duration_seconds_count
    status_label: http_response_status_code
    selector: job="orders-api",http_route!~"/healthz|/status"

- name: Read the 5xx ratio before a deployment
  app_verify:
    mode: baseline
    prometheus_url: https://prometheus.example.com
    selector: job="transformation-engine",path="/transform"
  register: baseline
"""

RETURN = r"""
verdict:
  description: C(verified), C(failed) or C(inconclusive) (mode verify).
  returned: mode verify
  type: str
  sample: inconclusive
msg:
  description: One sentence with the verdict and its reasons, or the baseline read.
  returned: always
  type: str
  sample: "Verification inconclusive after 120 s: the 5xx ratio was not checked: only 3 request(s) in the last 1m, ..."
checks:
  description: Each thing verified, with its own verdict (the flag, each database, each instance, the 5xx ratio).
  returned: mode verify
  type: list
  elements: dict
  contains:
    name:
      description: What was checked, e.g. C(flag), C(database prod-eu), C(instance https://app-1/healthz), C(5xx ratio).
      type: str
    verdict:
      description: C(verified), C(failed) or C(inconclusive).
      type: str
    detail:
      description: What was seen, or what could not be checked and what to look at instead.
      type: str
problems:
  description: What was seen wrong at the last poll (unhealthy instances, a ratio above the limit).
  returned: mode verify
  type: list
  elements: str
unchecked:
  description: What could not be checked at the last poll, each with what to look at instead.
  returned: mode verify
  type: list
  elements: str
instances:
  description: Per instance, the last health reading.
  returned: mode verify
  type: list
  elements: dict
  contains:
    url:
      description: The health URL (without credentials or query string).
      type: str
    healthy:
      description: Whether its answer met the health contract.
      type: bool
    status:
      description: The HTTP status it answered, or null.
      type: int
    detail:
      description: What it answered, or why it could not be read.
      type: str
error_rate:
  description: The last reading of the 5xx ratio and the limit it was judged against.
  returned: always
  type: dict
  contains:
    state:
      description: C(ok), C(no_series), C(too_few_requests), C(unreachable), C(refused) or C(not_configured).
      type: str
    ratio:
      description: 5xx responses / requests in the window, or null when it could not be judged.
      type: float
    requests:
      description: Requests in the window (null without series).
      type: float
    errors:
      description: 5xx responses in the window.
      type: float
    window:
      description: The window.
      type: str
    min_requests:
      description: The minimum traffic to judge a ratio.
      type: float
    baseline:
      description: The baseline compared with (0 when none was recorded).
      type: float
    baseline_recorded:
      description: Whether a baseline was given.
      type: bool
    tolerance:
      description: The tolerance.
      type: float
    limit:
      description: baseline + tolerance.
      type: float
    detail:
      description: Why the ratio could not be read, if it could not.
      type: str
measured:
  description: Whether the ratio could be measured (mode baseline).
  returned: mode baseline
  type: bool
ratio:
  description: The ratio measured, or null (mode baseline).
  returned: mode baseline
  type: float
queries:
  description: The two PromQL queries asked, to paste into Prometheus.
  returned: always
  type: dict
polls:
  description: Polls made.
  returned: mode verify
  type: int
elapsed_seconds:
  description: Seconds the verification took.
  returned: mode verify
  type: float
"""

from ansible.module_utils.runbook_plugin import Plugin
from ansible.module_utils.verify_options import app_verify_spec

try:
    from ansible.module_utils.app_verify import run_app_verify
except ImportError as exc:  # requests is missing on the controller
    run_app_verify, IMPORT_ERROR = None, exc
else:
    IMPORT_ERROR = None

# The plugin, once: this module's main() and the action plugins/action/app_verify.py both run it.
PLUGIN = Plugin("app_verify", app_verify_spec, run_app_verify, requires="requests", import_error=IMPORT_ERROR)


def main() -> None:
    PLUGIN.main()


if __name__ == "__main__":
    main()
