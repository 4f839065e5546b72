# Copyright: contributors to the emergency-rollback runbook
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The action of every runbook plugin: its logic run on the controller, through ActionBase's public API.

Each runbook module (feature_flag, flag_propagation, schema_migration, schema_state, audit_verify,
...) has an action plugin of the same name in this folder: a link to this file. The module file
defines the plugin once, as `PLUGIN = Plugin(name, spec, run, ...)` (plugins/module_utils/
runbook_plugin.py); this action

1. applies the task's `environment:` to the worker's environment for the task's duration (the
   logic reads FF_API_KEY, PGPASSWORD... from it, as a module process would);
2. validates the task's arguments with `ActionBase.validate_argument_spec()` against the module's
   own `spec()` (module_defaults included: Ansible merges them into the task's arguments);
3. calls `run(params, check_mode, diff)` in this worker process: no module process, no AnsiballZ
   packaging, no second import of requests or alembic (this file imports the module when Ansible
   loads the action in the controller, so every worker forked later starts with them);
4. masks the values of every `no_log` option in the result, as AnsibleModule does, and returns it
   with the `invocation` a module would report.

A task whose connection is not local (delegated to a bastion that reaches the database) runs the
module itself through AnsiballZ with `_execute_module`, the action-plugin API ansible-core
documents for that ("Developing plugins: action plugins"); both paths return the same result
(tests/integration/test_plugin_paths.py compares them).
"""

from __future__ import annotations

import contextlib
import copy
import gc
import importlib.util
import os
import runpy
import sys
from pathlib import Path

from ansible.errors import AnsibleActionFail
from ansible.module_utils.basic import missing_required_lib
from ansible.module_utils.common.parameters import remove_values
from ansible.plugins.action import ActionBase
from ansible.plugins.loader import module_loader

runpy.run_path(str(Path(__file__).resolve().parent.parent / "plugin_utils" / "module_utils_path.py"))[
    "add_module_utils_path"
]()

from ansible.module_utils.runbook_plugin import NO_LOG_VALUES_KEY, no_log_values, plain  # noqa: E402


def load_plugin(name: str):
    """The `PLUGIN` of the runbook module `name` (its file imported once per process), or None."""
    key = f"rollback_runbook_module_{name}"
    if key not in sys.modules:
        path = module_loader.find_plugin(name)
        if not path:
            return None
        spec = importlib.util.spec_from_file_location(key, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[key] = module
    return getattr(sys.modules[key], "PLUGIN", None)


# Loaded by the strategy in the controller process before any worker forks: import the module
# (and with it its libraries) now. The link's own name is the module's name.
load_plugin(Path(__file__).stem)
# Then move every object the controller holds so far (ansible-core, requests, SQLAlchemy, alembic,
# pglast...: some 130,000) to the garbage collector's permanent generation, as Python's documentation
# advises before fork() (https://docs.python.org/3/library/gc.html#gc.freeze): no collection walks
# them again, neither in the workers forked for each task (no copy-on-write of their pages) nor when
# ansible-playbook exits, where collecting them took 0.2-1.8 s on this machine (bench/RESULTS.md).
# Objects created later are collected as usual; these long-lived ones live as long as the process.
gc.freeze()


@contextlib.contextmanager
def environment(values: dict):
    """os.environ with `values` set (stringified; None unsets), restored afterwards."""
    saved = {key: os.environ.get(key) for key in values}
    try:
        for key, value in values.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = str(value)
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class ActionModule(ActionBase):
    TRANSFERS_FILES = False

    def task_environment(self) -> dict:
        """The task's `environment:` (play, block and task levels merged, templated), as a module gets it."""
        merged: dict = {}
        entries = self._task.environment
        for entry in entries if isinstance(entries, list) else [entries]:
            if not entry:
                continue
            values = self._templar.template(entry)
            if not isinstance(values, dict):
                raise AnsibleActionFail(f"environment must be a dictionary, got {type(values).__name__}")
            merged.update(values)
        return merged

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        name = self._task.action.rsplit(".", 1)[-1]
        plugin = load_plugin(name)
        if plugin is None:
            raise AnsibleActionFail(f"{name} is not a runbook module (no PLUGIN in plugins/modules/{name}.py)")
        if self._connection.transport != "local":
            result.update(self._execute_module(module_name=name, module_args=self._task.args, task_vars=task_vars))
            return result
        spec = plugin.spec()
        with environment(self.task_environment()):
            validation, _args = self.validate_argument_spec(**spec)
            params = plain(validation.validated_parameters)
            hidden = no_log_values(spec["argument_spec"], params)
            if plugin.run is None:
                missing = missing_required_lib(plugin.requires)
                result.update(failed=True, msg=missing, exception=str(plugin.import_error))
            else:
                try:
                    outcome = plugin.run(
                        copy.deepcopy(params),
                        check_mode=bool(self._play_context.check_mode),
                        diff=bool(self._play_context.diff),
                    )
                except Exception as exc:  # a bug in the logic: one sentence, masked below
                    outcome = {"failed": True, "msg": f"{name} failed unexpectedly: {type(exc).__name__}: {exc}"}
                hidden |= {str(v) for v in outcome.pop(NO_LOG_VALUES_KEY, None) or () if v}
                result.update(outcome)
        result.setdefault("changed", False)
        result["invocation"] = {"module_args": params}
        return remove_values(result, hidden)
