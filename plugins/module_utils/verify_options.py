"""The argument spec of app_verify (the verification's verdict). Imports nothing optional.

Kept apart from app_verify (which needs requests) so that a module or an action plugin can build its
spec, and say which library is missing, on a controller without it.
"""

from __future__ import annotations

VERDICTS = ("verified", "failed", "inconclusive")
MODES = ("verify", "baseline")


def app_verify_spec() -> dict:
    """AnsibleModule's keyword arguments for app_verify."""
    return {
        "argument_spec": {
            "mode": {"type": "str", "choices": list(MODES), "default": "verify"},
            # -- what the rollback read back (judged once, not polled) -------------------------------
            "flag": {
                "type": "dict",
                "options": {"state": {"type": "str"}, "error": {"type": "str"}},
            },
            "databases": {"type": "list", "elements": "dict", "default": []},
            "databases_error": {"type": "str"},
            "rollback_points": {"type": "dict", "default": {}},
            "target_revision": {"type": "str"},
            # -- the instances' health endpoints ---------------------------------------------------
            "health_urls": {"type": "list", "elements": "str", "default": []},
            "health": {
                "type": "dict",
                "default": {},
                "apply_defaults": True,
                "options": {
                    "status_codes": {"type": "list", "elements": "int", "default": [200]},
                    "json_key": {"type": "str", "no_log": False},  # a field name, not a secret
                    "json_value": {"type": "str"},
                    "text": {"type": "str"},
                },
            },
            # -- the 5xx ratio from Prometheus -------------------------------------------------------
            "prometheus_url": {"type": "str", "default": ""},
            "metric": {"type": "str", "default": "http_requests_total"},
            "status_label": {"type": "str", "default": "status"},
            "selector": {"type": "str", "default": ""},
            "error_status": {"type": "str", "default": "5.."},
            "requests_query": {"type": "str"},
            "errors_query": {"type": "str"},
            "window": {"type": "str", "default": "1m"},
            "min_requests": {"type": "float", "default": 20.0},
            "baseline": {"type": "float"},
            "tolerance": {"type": "float", "default": 0.01},
            # -- waiting -------------------------------------------------------------------------
            "wait": {"type": "float", "default": 120.0},
            "interval": {"type": "float", "default": 3.0},
            # -- HTTP ----------------------------------------------------------------------------
            "timeout": {"type": "float", "default": 5.0},
            "validate_certs": {"type": "bool", "default": True},
            "ca_path": {"type": "path"},
        },
        "required_together": [("requests_query", "errors_query")],
    }
