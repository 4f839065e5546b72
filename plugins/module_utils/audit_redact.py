# Copyright: contributors to the emergency-rollback runbook
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""What the audit callback may keep of a value: plain JSON, no secret, no no_log value.

Defence in depth for the audit record (the playbook already keeps secrets out of what it sends):

- `plain()` turns Ansible's tagged/custom types into plain JSON types and bounds their size;
- `redact()` replaces every value under a key that looks secret (password, token, api_key,
  secret, dsn, webhook, ...) with `MARK_SECRET`, and every occurrence of a known secret value in
  any string with `MARK_SECRET`;
- `secret_values_from_env()` / `secret_values_in()` collect the known secret values: those of
  environment variables and (extra) variables whose names look secret, and DSN passwords.
"""

from __future__ import annotations

import math
import re
from urllib.parse import urlsplit

MARK_NO_LOG = "<censored: no_log>"
MARK_SECRET = "<censored: secret>"  # noqa: S105 - the marker, not a password
SECRET_KEY = re.compile(r"password|passwd|token|api_?key|secret|dsn|webhook|credential|private_?key", re.IGNORECASE)
MIN_SECRET_LENGTH = 6  # shorter values ("1", "true") would scrub harmless text; no real secret is that short
MAX_STRING = 2000
MAX_DEPTH = 12
MAX_ITEMS = 500
_KEYWORD_PASSWORD = re.compile(r"(?:^|\s)password\s*=\s*('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)


def looks_secret(key: object) -> bool:
    return isinstance(key, str) and SECRET_KEY.search(key) is not None


def plain(value: object, depth: int = 0) -> object:  # noqa: PLR0911 - one per JSON type
    """A copy of `value` made only of dict/list/str/int/float/bool/None, bounded in depth and size."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else str(value)
    if isinstance(value, str):
        text = str(value)
        return text if len(text) <= MAX_STRING else text[:MAX_STRING] + "...(truncated)"
    if depth >= MAX_DEPTH:
        return "<too deep>"
    if isinstance(value, dict):
        return {str(k): plain(v, depth + 1) for k, v in list(value.items())[:MAX_ITEMS]}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [plain(v, depth + 1) for v in list(value)[:MAX_ITEMS]]
    return plain(str(value), depth)


def scrub(text: str, secrets: frozenset[str] | set[str]) -> str:
    """`text` with every known secret value replaced by MARK_SECRET (longest first)."""
    for secret in sorted(secrets, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, MARK_SECRET)
    return text


def redact(value: object, secrets: frozenset[str] | set[str] = frozenset()) -> object:
    """`plain(value)` with secret-looking keys censored and known secret values scrubbed out of strings."""
    return _redact(plain(value), frozenset(secrets))


def _redact(value: object, secrets: frozenset[str]) -> object:
    if isinstance(value, dict):
        return {
            scrub(k, secrets): (MARK_SECRET if looks_secret(k) and v not in (None, "") else _redact(v, secrets))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_redact(v, secrets) for v in value]
    if isinstance(value, str):
        return scrub(value, secrets)
    return value


def scrub_all(value: object, secrets: frozenset[str] | set[str]) -> object:
    """`plain(value)` with known secret values scrubbed out of every string (keys are not judged)."""
    value = plain(value)
    if isinstance(value, dict):
        return {scrub(k, secrets): scrub_all(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub_all(v, secrets) for v in value]
    return scrub(value, secrets) if isinstance(value, str) else value


def _with_parts(value: str) -> set[str]:
    """A secret value and the password inside it when it is a DSN (URI or keyword form)."""
    found = {value}
    try:
        password = urlsplit(value).password
    except ValueError:
        password = None
    if password:
        found.add(password)
    for match in _KEYWORD_PASSWORD.finditer(value):
        found.add(match.group(1).strip("'"))
    return {item for item in found if len(item) >= MIN_SECRET_LENGTH}


def secret_values(value: object) -> set[str]:
    """Every string leaf of `value` (with DSN passwords) long enough to be a secret."""
    found: set[str] = set()
    if isinstance(value, str):
        found |= _with_parts(value)
    elif isinstance(value, dict):
        for item in value.values():
            found |= secret_values(item)
    elif isinstance(value, (list, tuple, set, frozenset)):
        for item in value:
            found |= secret_values(item)
    return found


def secret_values_in(data: object, depth: int = 0) -> set[str]:
    """The values found under secret-looking keys anywhere in `data` (e.g. the extra vars)."""
    found: set[str] = set()
    if depth > MAX_DEPTH:
        return found
    if isinstance(data, dict):
        for key, item in data.items():
            found |= secret_values(item) if looks_secret(key) else secret_values_in(item, depth + 1)
    elif isinstance(data, (list, tuple)):
        for item in data:
            found |= secret_values_in(item, depth + 1)
    return found


def secret_values_from_env(environ: dict[str, str]) -> set[str]:
    """The values of environment variables whose names look secret (FF_API_KEY, PGPASSWORD, *_DSN, ...)."""
    return secret_values_in(dict(environ))


def deep_merge(target: dict, source: dict) -> dict:
    """Merge `source` into `target` in place: dicts recursively, any other value replaces."""
    for key, value in source.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            deep_merge(target[key], value)
        else:
            target[key] = value
    return target
