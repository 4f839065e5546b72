#!/usr/bin/python
# Copyright: contributors to the emergency-rollback runbook
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Ansible module: the propagation barrier between "flag off" and "schema revert"."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: flag_propagation
short_description: Wait until every application instance reports the legacy path
description:
  - Polls the C(/status) endpoint of every application instance concurrently, round after round, until
    one round sees all of them report I(expected_path) in the field I(path_key), or I(timeout) passes.
  - For applications without a status endpoint, I(cache_ttl) makes the barrier also wait until that
    many seconds have passed (the SDK's flag cache lifetime); with no I(status_urls) it only waits the TTL.
  - On timeout it fails naming every instance still on another path or unreadable, with its last
    reported path and C(last_refresh).
  - 'The status JSON is the one of docs/interfaces.md, e.g.
    C({"instance": "app-1", "path": "legacy", "last_refresh": "...", "refresh_interval": 1.0}).'
  - Never changes anything, so C(changed) is always false.
version_added: "0.1.0"
author:
  - Emergency rollback runbook maintainers (!UNKNOWN)
attributes:
  check_mode:
    support: full
    description: Polls each instance once and reports what it says; does not wait and does not fail on a straggler.
  diff_mode:
    support: none
    description: Reads only (polls the instances), so there is no change to show.
extends_documentation_fragment:
  - rollback_http
options:
  status_urls:
    description: The status URL of every application instance, e.g. C(https://app-1.example.com/status).
    type: list
    elements: str
    default: []
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
    description: Seconds for one status request (connect and read).
    type: float
    default: 5
notes:
  - "Runs on the controller; use C(delegate_to: localhost) and C(run_once) per environment."
seealso:
  - module: feature_flag
"""

EXAMPLES = r"""
- name: Wait until every instance is on the legacy path
  flag_propagation:
    status_urls:
      - https://app-1.example.com/status
      - https://app-2.example.com/status
    timeout: 60
    interval: 1

- name: An app without a status endpoint, whose SDK caches flags for 30 s
  flag_propagation:
    cache_ttl: 30
    timeout: 45
"""

RETURN = r"""
elapsed_seconds:
  description: Seconds the barrier took (until every instance was on the path and the TTL had passed).
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
waited_for_cache_ttl:
  description: The cache TTL the barrier honoured (0 when none).
  returned: always
  type: float
  sample: 0
instances:
  description: Per instance, what it reported last.
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
    path:
      description: The path it reported last (null if it could not be read).
      type: str
    last_refresh:
      description: When it last refreshed its flags, as it reports.
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
