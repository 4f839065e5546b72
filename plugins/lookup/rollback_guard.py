# Copyright: contributors to the emergency-rollback runbook
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The guard of the rollback and deploy playbooks, evaluated where no command-line option can skip it."""

from __future__ import annotations

DOCUMENTATION = r"""
name: rollback_guard
short_description: Check a rollback (or deploy) request before anything is contacted; the request as checked
description:
  - >-
    C(lookup('rollback_guard', 'rollback')) (C('deploy') for deploy.yml, C('purge') for
    archive_purge.yml) is meant for the C(hosts) keyword of a playbook's first play, which Ansible
    templates before the play starts and which no command-line option can skip (C(--start-at-task),
    C(--tags) and C(--step) select tasks, not plays). It returns C(localhost), or fails the
    playbook, before any task runs, with one sentence saying what to do.
  - >-
    It checks the command line (no C(--start-at-task), C(--step), C(--tags)/C(--skip-tags),
    C(--module-path); a C(--limit) must keep localhost and every database of the environment), the
    extra vars (request inputs and documented tunables only; internal names are refused by name), the
    environment (a group of the inventory; production-like when its hosts belong to the group
    C(production_like), which then needs a ticket and C(confirm=<env>)) and the reason - see
    C(plugins/module_utils/audit_guard.py).
  - >-
    It then hands the checked request to the C(rollback_audit) callback, which writes it at once as
    the run's C(request) record, and reads this run's records back from the audit file and, when
    configured, PostgreSQL (required for production-like environments): the run goes on only if both
    were written, sealed, by this very process. A disabled callback means a refusal.
  - C(lookup('rollback_guard', 'request')) returns the request as checked (for the roles), and
    C(lookup('rollback_guard', 'audit_status')) the audit's state - C(ok), or C(error - <reason>) when
    the audit file broke during the run (for the alert).
  - With C(--syntax-check) and the C(--list-*) options nothing runs, so nothing is checked.
options:
  _terms:
    description: C(rollback) or C(deploy) (check the request, return the hosts pattern), C(request) or C(audit_status).
    required: true
"""

EXAMPLES = r"""
- name: Check the request (refused here, before any task)
  hosts: "{{ lookup('rollback_guard', 'rollback') }}"
  gather_facts: false
  tasks: []
"""

RETURN = r"""
_raw:
  description: C(localhost) for a check, or the request (a dict) for C(request).
"""

import os
import runpy
from pathlib import Path

from ansible import constants as C
from ansible import context
from ansible.errors import AnsibleLookupError
from ansible.plugins.lookup import LookupBase

runpy.run_path(str(Path(__file__).resolve().parent.parent / "plugin_utils" / "module_utils_path.py"))[
    "add_module_utils_path"
]()
from ansible.module_utils import audit_guard as guard
from ansible.module_utils import audit_run

LISTING = ("syntax", "listhosts", "listtasks", "listtags")
NOT_AUDITED = (
    "the audit callback rollback_audit is not running, so the run would go unaudited: keep"
    " rollback_audit in ansible.cfg's callbacks_enabled (and in ANSIBLE_CALLBACKS_ENABLED if you set it)"
    f" and run again; {guard.NOTHING_DONE}."
)


def _record_without_callback(request: dict, problem: str) -> None:
    """The callback is not running: still leave the start, request and end records of this refusal."""
    from ansible.plugins.loader import callback_loader  # noqa: PLC0415 - only on this path
    from ansible.release import __version__  # noqa: PLC0415

    try:
        callback = callback_loader.get("rollback_audit")
        callback.set_options()
        playbook = str((context.CLIARGS.get("args") or [""])[0])
        session = audit_run.AuditSession(
            path=callback.resolve_path(os.path.dirname(os.path.abspath(playbook))),
            playbook_file=playbook,
            check_mode=bool(context.CLIARGS.get("check")),
            ansible_version=__version__,
            group=callback.get_option("file_group") or None,
            pg_dsn=callback.get_option("pg_dsn") or None,
        )
        session.start()
        session.record_request(guard.Verdict(request, problem))
        session.finish()
    except Exception:  # noqa: S110 - the refusal stands whether or not it could be recorded
        pass


class LookupModule(LookupBase):
    def run(self, terms, variables=None, **kwargs):
        what = str(terms[0]) if terms else ""
        session = audit_run.active()
        if what == "request":
            if session is None or session.request is None:
                raise AnsibleLookupError("the request has not been checked: the first play must use rollback_guard")
            return [session.request]
        if what == "audit_status":
            return ["error: the rollback_audit callback is not running" if session is None else session.status]
        if what not in guard.REQUEST_INPUTS:
            raise AnsibleLookupError(f"rollback_guard takes one of {', '.join(guard.REQUEST_INPUTS)} or request")
        if any(context.CLIARGS.get(option) for option in LISTING):
            return ["localhost"]  # nothing runs: nothing to guard
        if session is not None and session.request is not None:  # the play's keywords are templated twice
            problem = session.refusal or session.request_problem
        else:
            project = os.path.dirname(os.path.abspath(C.CONFIG_FILE)) if C.CONFIG_FILE else os.getcwd()
            verdict = guard.check_request(guard.from_ansible(what, project))
            if session is None:
                problem = verdict.refusal or NOT_AUDITED
                _record_without_callback(verdict.request, problem)
            else:
                problem = session.record_request(verdict)
        if problem:
            raise AnsibleLookupError(problem)
        return ["localhost"]
