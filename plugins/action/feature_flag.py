"""Run one of the runbook's modules inside Ansible's worker process, on the controller.

Every module of the runbook (feature_flag, flag_propagation, schema_migration, schema_state,
audit_verify) runs on the controller (`ansible_connection: local`). Executed the usual way, each
task costs a module process: AnsiballZ packaging, shell commands, a new interpreter that imports
requests or alembic again (~0.3 s + ~0.4 s per task here). This action runs the same module file,
unchanged, in the worker Ansible forked for the task: its `main()` with the task's arguments, as
AnsiballZ would hand them over, its JSON result parsed by Ansible's own code. Argument validation,
no_log masking, check mode and the result stay the module's. The libraries are imported once, in
the controller, when the strategy loads this plugin, so each forked worker starts with them.

The other modules' action plugins are links to this file: the module to run is the task's action.
On any other connection, or when the module cannot be found, the module runs the usual way.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import sys
from pathlib import Path

import ansible.module_utils
from ansible.module_utils import basic
from ansible.module_utils.common.json import Direction, get_module_encoder
from ansible.plugins.action import ActionBase
from ansible.vars.clean import remove_internal_keys

_MODULE_UTILS = str(Path(__file__).resolve().parent.parent / "module_utils")
if _MODULE_UTILS not in ansible.module_utils.__path__:
    # The runbook's module_utils import each other as ansible.module_utils.<name>, as AnsiballZ ships them.
    ansible.module_utils.__path__.append(_MODULE_UTILS)

with contextlib.suppress(ImportError):  # preloaded once in the controller, inherited by every worker
    import alembic.command  # noqa: F401
    import psycopg2  # noqa: F401
    import requests  # noqa: F401
    import sqlalchemy  # noqa: F401

PROFILE = "legacy"


def run_module_in_process(path: str, module_args: dict) -> str:
    """The module's stdout (its JSON result) after running its main() here with these arguments."""
    basic._ANSIBLE_ARGS = json.dumps(
        {"ANSIBLE_MODULE_ARGS": module_args}, cls=get_module_encoder(PROFILE, Direction.CONTROLLER_TO_MODULE)
    ).encode()
    basic._ANSIBLE_PROFILE = PROFILE
    spec = importlib.util.spec_from_file_location(f"rollback_in_process_{Path(path).stem}", path)
    module = importlib.util.module_from_spec(spec)
    out = io.StringIO()
    saved_stdout, saved_argv = sys.stdout, sys.argv
    sys.stdout, sys.argv = out, [path]
    try:
        spec.loader.exec_module(module)
        module.main()
    except SystemExit:
        pass  # exit_json / fail_json
    finally:
        sys.stdout, sys.argv = saved_stdout, saved_argv
        basic._ANSIBLE_ARGS = basic._ANSIBLE_PROFILE = None
    return out.getvalue()


class ActionModule(ActionBase):
    TRANSFERS_FILES = False

    def run(self, tmp=None, task_vars=None):
        task_vars = task_vars or {}
        result = super().run(tmp, task_vars)
        name = self._task.action.rsplit(".", 1)[-1]
        path = self._shared_loader_obj.module_loader.find_plugin(name)
        if self._connection.transport != "local" or not path:
            result.update(self._execute_module(task_vars=task_vars))
            return result
        module_args = self._task.args.copy()
        self._update_module_args(name, module_args, task_vars)
        try:
            stdout = run_module_in_process(path, module_args)
        except Exception as exc:  # the module raised instead of failing cleanly
            result.update(failed=True, msg=f"{name} failed unexpectedly: {type(exc).__name__}")
            return result
        data = self._parse_returned_data({"rc": 0, "stdout": stdout, "stderr": ""}, PROFILE)
        data.pop("_ansible_suppress_tmpdir_delete", None)
        remove_internal_keys(data)
        result.update(data)
        return result
