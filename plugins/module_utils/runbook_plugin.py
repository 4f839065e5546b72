# Copyright: contributors to the emergency-rollback runbook
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The contract of every runbook plugin: one argument spec, one run function, two ways to call them.

A runbook plugin (feature_flag, flag_propagation, schema_migration, schema_state, audit_verify, ...)
is defined once, in its module file, as a `Plugin`:

- `spec()` returns AnsibleModule's keyword arguments (`argument_spec`, `mutually_exclusive`,
  `required_if`, ...). It lives in a module_utils file that imports nothing optional, so a
  controller without `requests` or `psycopg2` still validates the task and says which library is
  missing, instead of "Unsupported parameters".
- `run(params, check_mode, diff)` is the plain-Python logic: validated parameters in, the result
  dict out (`changed`, `msg`, ...; `failed: True` and a one-sentence `msg` on failure; `warnings`,
  a list of strings). It prints nothing and does not raise for failures it expects.

Two callers, the same result:
- `Plugin.main()`, the module's `main()`: for a task that runs through AnsiballZ (delegated to
  another host, such as a bastion that reaches the database).
- plugins/action/runbook_plugin.py: the action plugin that runs `run` in Ansible's worker on the
  controller, after validating the task's arguments against the same `spec()`.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from dataclasses import dataclass

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

RunFunction = Callable[..., dict]

# Keys a run function may return for its caller only: values to mask in the result (secrets the
# function read itself, e.g. a DSN from the environment). Never shown.
NO_LOG_VALUES_KEY = "no_log_values"


@dataclass(frozen=True)
class Plugin:
    """One runbook plugin: its name, spec, logic, and what it needs installed."""

    name: str
    spec: Callable[[], dict]
    run: RunFunction | None
    requires: str = ""
    import_error: BaseException | str | None = None

    def main(self) -> None:
        """The module's `main()`: validate, run, exit with the result."""
        module = AnsibleModule(supports_check_mode=True, **self.spec())
        if self.import_error is not None or self.run is None:
            module.fail_json(msg=missing_required_lib(self.requires), exception=str(self.import_error))
        try:
            result = self.run(plain(module.params), check_mode=module.check_mode, diff=module._diff)
        except Exception as exc:  # a bug: still one sentence, never a secret (no_log values are masked)
            module.fail_json(
                msg=f"{self.name} failed unexpectedly: {type(exc).__name__}: {exc}", exception=traceback.format_exc()
            )
        for value in result.pop(NO_LOG_VALUES_KEY, None) or ():
            module.no_log_values.add(value)
        for warning in result.pop("warnings", None) or ():
            module.warn(warning)
        if result.pop("failed", False):
            result.setdefault("msg", f"{self.name} failed")
            module.fail_json(**result)
        module.exit_json(**result)


def no_log_values(argument_spec: dict, params: dict | None) -> set[str]:
    """The values of every `no_log` option in `params` (suboptions of dicts and lists of dicts too)."""
    found: set[str] = set()
    for name, option in argument_spec.items():
        value = (params or {}).get(name)
        if value is None:
            continue
        if option.get("no_log"):
            if isinstance(value, (str, int, float)) and str(value):
                found.add(str(value))
            continue
        suboptions = option.get("options")
        if suboptions:
            items = value if isinstance(value, list) else [value]
            for item in items:
                if isinstance(item, dict):
                    found |= no_log_values(suboptions, item)
    return found


def plain(value):
    """`value` with builtin types only (Ansible hands over str/int/... subclasses that carry tags)."""
    if isinstance(value, dict):
        return {plain(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [plain(v) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    for kind in (str, int, float):
        if isinstance(value, kind):
            return kind(value)
    return value
