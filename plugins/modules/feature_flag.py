#!/usr/bin/python
# Copyright: contributors to the emergency-rollback runbook
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Ansible module: the flag kill switch (Unleash, LaunchDarkly, Optimizely or an in-house REST service)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: feature_flag
short_description: Turn a feature flag off (or on) in Unleash, LaunchDarkly, Optimizely or an in-house flag service
description:
  - Reads the flag's state in one environment first; if it is already in the requested I(state) nothing
    is written and C(changed) is false.
  - Otherwise writes the new state through the provider's published admin API, then reads it back and
    fails unless the provider reports the new state.
  - Retries only HTTP 429, 5xx, connection errors and timeouts, with exponential backoff that honours
    C(Retry-After) and C(X-Ratelimit-Reset), all within I(max_wait) seconds. Never retries 400, 401, 403
    or 404, which fail at once with one sentence naming the cause and the fix.
  - "Unleash: C(POST /api/admin/projects/{project}/features/{flag}/environments/{environment}/off|on),
    state from C(GET /api/admin/projects/{project}/features/{flag}); the change reference is the id of
    the event the toggle wrote (from C(GET /api/admin/search/events)). Unleash's toggle takes no
    comment; its event log records the token's user."
  - "LaunchDarkly: REST API v2 semantic patch C(PATCH /api/v2/flags/{project}/{flag}) with
    C(turnFlagOff)/C(turnFlagOn) and the I(comment), state from C(GET /api/v2/flags/{project}/{flag}?env=);
    the change reference is the flag's C(_version)."
  - "Optimizely Feature Experimentation: the flag's ruleset in the I(environment), disabled with
    C(POST /flags/v1/projects/{project}/flags/{flag}/environments/{environment}/ruleset/disabled) (C(/enabled) to
    turn it on), state from C(GET .../ruleset) (C(enabled)); the change reference is the ruleset's C(revision).
    I(project) is the numeric project id; the token is sent as C(Bearer). Requests are paced under Optimizely's
    documented limit of two per second. The ruleset calls take no comment; Optimizely's change history records
    the token's user."
  - "http: the in-house service, by default C(PATCH {api_url}/api/v2/flags/{flag}) with body
    C({\"<flag>\": false}) and C(Authorization: api-key <key>), state read with C(GET) of the same path
    answering C({\"<flag>\": true|false}). Every part of that shape is an option."
  - Every request carries a C(User-Agent) naming the runbook. The API key never appears in output.
version_added: "0.1.0"
author:
  - Emergency rollback runbook maintainers (!UNKNOWN)
attributes:
  check_mode:
    support: full
    description: Reads the flag and reports what would change; writes nothing.
  diff_mode:
    support: full
    description: Shows the flag's state before and after.
extends_documentation_fragment:
  - rollback_http
options:
  provider:
    description: The flag system.
    type: str
    required: true
    choices: [unleash, launchdarkly, optimizely, http]
  api_url:
    description:
      - Base URL of the flag system's API, without a trailing path, e.g. C(https://unleash.example.com)
        or C(https://app.launchdarkly.com) or C(https://api.optimizely.com).
    type: str
    required: true
  api_key:
    description:
      - Admin API key. Unleash, an admin token or personal access token; LaunchDarkly, an access token
        (bare, without C(Bearer)); Optimizely, a personal access token whose role may publish the flag
        (without C(Bearer)); http, the service's key.
      - Falls back to the environment variable C(FF_API_KEY). The module fails if neither is set.
      - Never shown in the output (the argument spec marks it C(no_log)).
    type: str
  flag:
    description: The flag's name (Unleash) or key (LaunchDarkly, Optimizely).
    type: str
    required: true
  project:
    description:
      - Unleash project id, LaunchDarkly project key or Optimizely's numeric project id. Unused by C(http) unless
        a template uses C({project}).
    type: str
    default: default
  environment:
    description: The flag environment to switch (Unleash environment name, LaunchDarkly or Optimizely environment key).
    type: str
    default: production
  state:
    description: The state the flag must be in.
    type: str
    default: disabled
    choices: [disabled, enabled]
  comment:
    description:
      - Why, who and which ticket, e.g. C(Emergency rollback INC-123 by alice). Sent where the API takes
        one (LaunchDarkly's change comment; the in-house body template's C({comment})).
    type: str
    default: ""
  timeout:
    description: Seconds per HTTP request (connect and read).
    type: float
    default: 5
  max_wait:
    description:
      - Seconds for all requests and retries of this task together. A retry whose wait would end past it
        is not started; the task fails with the last error.
    type: float
    default: 30
  http_method:
    description: "provider=http: the method that writes the state."
    type: str
    default: PATCH
    choices: [PATCH, PUT, POST]
  http_path:
    description:
      - "provider=http: the path that writes the state. Placeholders: C({flag}), C({project}),
        C({environment}), C({state}), C({enabled}), C({comment})."
    type: str
    default: /api/v2/flags/{flag}
  http_read_path:
    description: "provider=http: the path read with GET for the state; defaults to I(http_path)."
    type: str
  http_body:
    description:
      - "provider=http: the JSON body template of the write. Keys and string values take the placeholders of
        I(http_path); a value that is exactly C({enabled}) becomes the JSON boolean."
    type: raw
    default: {"{flag}": "{enabled}"}
  http_state_path:
    description: "provider=http: dotted JSON path of the boolean state in the GET answer (placeholders allowed)."
    type: str
    default: "{flag}"
  http_auth_scheme:
    description: "provider=http: the word before the key in C(Authorization); empty sends the bare key."
    type: str
    default: api-key
notes:
  - "API references followed: Unleash Admin API, https://docs.getunleash.io/api (toggle-feature-environment-off,
    getFeature, searchEvents); LaunchDarkly REST API, https://launchdarkly.com/docs/api (Update feature flag,
    semantic patch, Rate limiting); Optimizely Feature Experimentation REST API,
    https://docs.developers.optimizely.com/feature-experimentation/reference (fetch_ruleset, disable_ruleset,
    enable_ruleset, fetch_flag, the overview's rate limit); the in-house API of SEQ-OF-004."
  - "Runs on the controller (it only makes HTTP calls); use C(delegate_to: localhost) and C(run_once) per environment."
seealso:
  - module: flag_propagation
"""

EXAMPLES = r"""
- name: Disable DataTransformationFeature
  feature_flag:
    provider: unleash
    api_url: https://unleash.example.com
    api_key: "{{ ff_api_key }}"
    flag: DataTransformationFeature
    project: default
    environment: production
    state: disabled
    comment: "Emergency rollback INC-123 by alice: go/no-go failed"
    timeout: 5
    max_wait: 30

- name: Disable it in LaunchDarkly (key from FF_API_KEY)
  feature_flag:
    provider: launchdarkly
    api_url: https://app.launchdarkly.com
    flag: data-transformation-feature
    project: default
    environment: production
    comment: "Emergency rollback INC-123 by alice"

- name: Disable it in Optimizely Feature Experimentation (token from FF_API_KEY)
  feature_flag:
    provider: optimizely
    api_url: https://api.optimizely.com
    flag: data_transformation_feature
    project: "4678434014625792"
    environment: production

- name: An in-house service of another shape
  feature_flag:
    provider: http
    api_url: https://flags.internal.example.com
    flag: DataTransformationFeature
    environment: prod
    http_method: PUT
    http_path: /v1/envs/{environment}/toggles/{flag}
    http_body: {"enabled": "{enabled}", "reason": "{comment}"}
    http_state_path: enabled
    http_auth_scheme: Bearer
    ca_path: /etc/pki/internal-ca.pem
"""

RETURN = r"""
changed:
  description: Whether the flag was (or, in check mode, would be) switched.
  returned: always
  type: bool
provider:
  description: The flag system.
  returned: always
  type: str
  sample: unleash
flag:
  description: The flag.
  returned: always
  type: str
  sample: DataTransformationFeature
environment:
  description: The flag environment.
  returned: always
  type: str
  sample: production
previous_state:
  description: The flag's state before this task.
  returned: success
  type: str
  sample: enabled
state:
  description: The flag's state after this task (in check mode, the state it would have).
  returned: success
  type: str
  sample: disabled
attempts:
  description: >-
    HTTP attempts the write took (1 without retries; 0 when nothing was written). On failure, the
    attempts of the request that failed.
  returned: always
  type: int
  sample: 1
change_reference:
  description:
    - The provider's own reference of the change, for correlating the audit with the provider's log
      (Unleash's event id, LaunchDarkly's flag version, Optimizely's ruleset revision); null when nothing
      was written or the provider reports none (http).
  returned: success
  type: raw
  sample: 42
change_reference_kind:
  description: >-
    What I(change_reference) is (C(unleash_event_id), C(launchdarkly_flag_version), C(optimizely_ruleset_revision))
    or empty.
  returned: success
  type: str
  sample: unleash_event_id
confirmed_at:
  description:
    - When the flag system confirmed I(state) (UTC, ISO 8601, the controller's clock) - the read-back after a write,
      or the first read when nothing was written; null in check mode when a change would be made.
    - Every flag configuration an application fetches after this moment has the flag in I(state); the propagation
      barrier (C(flag_propagation) with I(fetched_after)) requires such a fetch of every instance.
  returned: success
  type: str
  sample: "2026-11-28T00:58:14.653120+00:00"
elapsed_seconds:
  description: Seconds from the first read to the confirmed state.
  returned: success
  type: float
  sample: 0.071
error_type:
  description: >-
    On failure, the kind of error (FlagAuthError, FlagNotFound, FlagEnvironmentNotFound,
    FlagUnavailable, FlagStateMismatch, ...).
  returned: failure
  type: str
  sample: FlagAuthError
"""

from ansible.module_utils.flag_options import feature_flag_spec
from ansible.module_utils.runbook_plugin import Plugin

try:
    from ansible.module_utils.flag_switch import run_feature_flag
except ImportError as exc:  # requests is missing on the controller
    run_feature_flag, IMPORT_ERROR = None, exc
else:
    IMPORT_ERROR = None

# The plugin, once: this module's main() and the action plugins/action/feature_flag.py both run it.
PLUGIN = Plugin("feature_flag", feature_flag_spec, run_feature_flag, requires="requests", import_error=IMPORT_ERROR)


def main() -> None:
    PLUGIN.main()


if __name__ == "__main__":
    main()
