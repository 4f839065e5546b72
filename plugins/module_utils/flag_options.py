# Copyright: contributors to the emergency-rollback runbook
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The argument specs of the flag plugins (feature_flag, flag_propagation) and their HTTP options.

Imports nothing optional (no requests): a controller without `requests` still validates a task
and is told which library is missing (plugins/module_utils/runbook_plugin.py). The options are
documented once, in plugins/doc_fragments/rollback_http.py for the HTTP ones.
"""

from __future__ import annotations

from ansible.module_utils.common.parameters import env_fallback

# The flag systems flag_providers.make_provider() knows (it imports this tuple as PROVIDERS).
PROVIDER_NAMES = ("unleash", "launchdarkly", "optimizely", "http")
STATES = ("enabled", "disabled")


def http_options() -> dict:
    """The HTTP options every HTTP plugin of ours shares; each extends it with `.update()`."""
    return {
        "timeout": {"type": "float", "default": 5.0},
        "validate_certs": {"type": "bool", "default": True},
        "ca_path": {"type": "path"},
    }


def feature_flag_spec() -> dict:
    spec = http_options()
    spec.update(
        provider={"type": "str", "required": True, "choices": list(PROVIDER_NAMES)},
        api_url={"type": "str", "required": True},
        api_key={"type": "str", "no_log": True, "fallback": (env_fallback, ["FF_API_KEY"])},
        flag={"type": "str", "required": True},
        project={"type": "str", "default": "default"},
        environment={"type": "str", "default": "production"},
        state={"type": "str", "default": "disabled", "choices": list(STATES)},
        comment={"type": "str", "default": ""},
        max_wait={"type": "float", "default": 30.0},
        http_method={"type": "str", "default": "PATCH", "choices": ["PATCH", "PUT", "POST"]},
        http_path={"type": "str", "default": "/api/v2/flags/{flag}"},
        http_read_path={"type": "str"},
        http_body={"type": "raw", "default": {"{flag}": "{enabled}"}},
        http_state_path={"type": "str", "default": "{flag}"},
        http_auth_scheme={"type": "str", "default": "api-key"},
    )
    return {"argument_spec": spec}


DISCOVERY_SOURCES = ("none", "prometheus", "kubernetes", "consul")


def discovery_options() -> dict:
    """flag_propagation's `discovery` suboptions: where the live instances are listed (flag_discovery)."""
    return {
        "source": {"type": "str", "required": True, "choices": list(DISCOVERY_SOURCES)},
        "url": {"type": "str"},
        "job": {"type": "str"},
        "name_label": {"type": "str", "default": "instance"},
        "namespace": {"type": "str"},
        "service": {"type": "str"},
        "port": {"type": "str"},
        "passing_only": {"type": "bool", "default": False},
        "scheme": {"type": "str", "default": "http", "choices": ["http", "https"]},
        "status_url_template": {"type": "str", "default": "{scheme}://{address}/status"},
        "token": {"type": "str", "no_log": True, "fallback": (env_fallback, ["ROLLBACK_DISCOVERY_TOKEN"])},
    }


def flag_propagation_spec() -> dict:
    spec = http_options()
    spec["request_timeout"] = spec.pop("timeout")
    spec.update(
        status_urls={"type": "list", "elements": "str", "default": []},
        discovery={"type": "dict", "options": discovery_options()},
        fetched_after={"type": "str"},
        fetch_key={"type": "str", "default": "last_refresh", "no_log": False},  # a JSON key name, not a secret
        clock_skew={"type": "float", "default": 1.0},
        expected_path={"type": "str", "default": "legacy"},
        path_key={"type": "str", "default": "path", "no_log": False},  # a JSON key name, not a secret
        timeout={"type": "float", "default": 60.0},
        interval={"type": "float", "default": 1.0},
        cache_ttl={"type": "float", "default": 0.0},
    )
    return {"argument_spec": spec}
