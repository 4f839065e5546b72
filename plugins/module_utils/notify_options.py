"""The argument spec of the `notification` plugin (module and action). Imports nothing optional."""

from __future__ import annotations

from typing import Any

EVENTS = ("start", "succeeded", "failed")
SMTP_SECURE = ("starttls", "always", "try", "never")  # community.general.mail's words, so inventories keep theirs
PAGERDUTY_EVENTS_URL = "https://events.pagerduty.com"

# Secrets come from the environment when the task does not give them (the module's documentation
# names these variables); they are no_log wherever they pass.
ENV_FALLBACKS = {
    "slack_webhook_url": "SLACK_WEBHOOK_URL",
    "smtp_username": "SMTP_USERNAME",
    "smtp_password": "SMTP_PASSWORD",
    "pagerduty_routing_key": "PAGERDUTY_ROUTING_KEY",
}


def notification_spec() -> dict[str, Any]:
    """AnsibleModule's keyword arguments for `notification`."""
    return {
        "argument_spec": {
            "event": {"type": "str", "required": True, "choices": list(EVENTS)},
            "report": {"type": "dict", "required": True},
            "announce": {"type": "bool", "default": True},
            "include_start": {"type": "bool", "default": False},
            "slack_webhook_url": {"type": "str", "no_log": True},
            "mail_to": {"type": "list", "elements": "str", "default": []},
            "mail_from": {"type": "str", "default": "emergency-rollback@localhost"},
            "smtp_host": {"type": "str", "default": "localhost"},
            "smtp_port": {"type": "int"},
            "smtp_secure": {"type": "str", "default": "starttls", "choices": list(SMTP_SECURE)},
            "smtp_username": {"type": "str"},
            "smtp_password": {"type": "str", "no_log": True},
            "smtp_ca_file": {"type": "path"},
            "pagerduty_routing_key": {"type": "str", "no_log": True},
            "pagerduty_url": {"type": "str", "default": PAGERDUTY_EVENTS_URL},
            "pagerduty_source": {"type": "str", "default": ""},
            "ca_path": {"type": "path"},
            "timeout": {"type": "float", "default": 10.0},
            "max_wait": {"type": "float", "default": 30.0},
        },
    }
