"""What the audit keeps of a value: plain JSON, secret keys censored, known secret values scrubbed."""

from __future__ import annotations

import json

from ansible.module_utils.audit_redact import (
    MARK_SECRET,
    deep_merge,
    plain,
    redact,
    scrub_all,
    secret_values_from_env,
    secret_values_in,
)

CANARY = "CANARY-s3cr3t-4242"


def test_secret_looking_keys_are_censored_at_any_depth():
    data = {
        "operator": "alice",
        "api_token": CANARY,
        "flag": {"provider": "unleash", "FF_API_KEY": CANARY, "Password": CANARY},
        "notifications": [{"slack_webhook": "https://hooks.example/T/B/x"}, {"db_dsn": "postgresql://u:p@h/d"}],
        "client_secret": None,
    }
    out = redact(data)
    assert out["operator"] == "alice"
    assert out["api_token"] == MARK_SECRET
    assert out["flag"] == {"provider": "unleash", "FF_API_KEY": MARK_SECRET, "Password": MARK_SECRET}
    assert out["notifications"] == [{"slack_webhook": MARK_SECRET}, {"db_dsn": MARK_SECRET}]
    assert out["client_secret"] is None
    assert CANARY not in json.dumps(out)


def test_known_secret_values_are_scrubbed_from_strings():
    out = redact({"reason": f"api said 401 to key {CANARY}", "list": [CANARY, "x"]}, {CANARY})
    assert out == {"reason": f"api said 401 to key {MARK_SECRET}", "list": [MARK_SECRET, "x"]}


def test_scrub_all_does_not_judge_keys():
    out = scrub_all({"token-db": {"ok": 1}, "msg": CANARY}, {CANARY})
    assert out == {"token-db": {"ok": 1}, "msg": MARK_SECRET}


def test_env_secrets_include_dsn_passwords_and_skip_short_or_harmless_values():
    env = {
        "FF_API_KEY": CANARY,
        "ROLLBACK_DB_DSN": "postgresql://app:pa55word-xyz@db:5432/app",
        "ROLLBACK_AUDIT_PG_DSN": "host=db user=audit password='kw-pass-123' dbname=runbook",
        "PGPASSWORD": "pgpass-9876",
        "SLACK_WEBHOOK_URL": "https://hooks.slack.example/services/T/B/abcdef",
        "HOME": "/root",
        "SOME_TOKEN": "1",
    }
    found = secret_values_from_env(env)
    assert {CANARY, "pa55word-xyz", "kw-pass-123", "pgpass-9876", env["ROLLBACK_DB_DSN"]} <= found
    assert env["SLACK_WEBHOOK_URL"] in found
    assert "/root" not in found
    assert "1" not in found


def test_extra_vars_secrets_are_found_under_secret_keys_only():
    extra = {"env": "prod", "ff_api_key": CANARY, "nested": {"smtp": {"password": "smtp-pass-1"}}, "reason": "a reason"}
    assert secret_values_in(extra) == {CANARY, "smtp-pass-1"}


def test_plain_bounds_and_converts():
    class Odd:
        def __str__(self):
            return "odd"

    out = plain({"n": float("nan"), "t": (1, 2), "s": {3}, "o": Odd(), "long": "x" * 5000, 7: True})
    assert out["n"] == "nan"
    assert out["t"] == [1, 2]
    assert out["s"] == [3]
    assert out["o"] == "odd"
    assert out["long"].endswith("...(truncated)")
    assert out["7"] is True
    json.dumps(out, allow_nan=False)


def test_deep_merge():
    target = {"databases": {"eu": {"revision_before": "0002"}}, "warnings": ["a"]}
    deep_merge(target, {"databases": {"eu": {"revision_after": "0001"}, "us": {"changed": True}}, "warnings": ["b"]})
    assert target == {
        "databases": {"eu": {"revision_before": "0002", "revision_after": "0001"}, "us": {"changed": True}},
        "warnings": ["b"],
    }
