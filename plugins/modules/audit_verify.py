#!/usr/bin/python
# Copyright: contributors to the emergency-rollback runbook
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Ansible module: verify the hash chain of the rollback audit log."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: audit_verify
short_description: Verify the hash chain of the rollback audit log and list aborted runs
description:
  - Reads the JSONL audit file written by the C(rollback_audit) callback and checks every record - its
    C(sha256) against its content, its C(prev_sha256) against the previous line's bytes, and its C(seq).
  - Fails on the first broken record, naming its line, its run and why - C(not JSON), C(edited),
    C(deleted) or C(reordered). A deleted record at the very end of the file cannot be seen by a chain
    alone; compare I(head_sha256) with the one a previous verify returned, or with the PostgreSQL copy.
  - Reports runs with a start record and no end record (killed by SIGKILL, or a crashed controller) as
    C(aborted (no end record)), unless their controller process is still alive on this host (then they
    are in progress), and runs that ended C(aborted by signal ...).
  - Reads only; never changes the file.
version_added: "0.1.0"
author:
  - Emergency rollback runbook maintainers (!UNKNOWN)
attributes:
  check_mode:
    support: full
    description: Reads only, in check mode as otherwise.
  diff_mode:
    support: none
    description: Reads only, so there is no change to show.
options:
  path:
    description:
      - The audit file. The C(rollback_audit) callback sets C(ROLLBACK_AUDIT_FILE) to the path it writes to,
        so C(lookup('ansible.builtin.env', 'ROLLBACK_AUDIT_FILE')) names the configured file.
    type: path
    required: true
  current_run_id:
    description:
      - The run calling this module (C(ROLLBACK_AUDIT_RUN_ID)); it must have a start record in the file,
        and it is counted as in progress, not aborted.
    type: str
    required: false
notes:
  - The logic lives in C(plugins/module_utils/audit_chain.py), shared with the callback.
"""

EXAMPLES = r"""
- name: Verify the audit chain
  audit_verify:
    path: "{{ lookup('ansible.builtin.env', 'ROLLBACK_AUDIT_FILE') }}"

- name: Earlier runs that ended without an end record (preflight)
  audit_verify:
    path: "{{ lookup('ansible.builtin.env', 'ROLLBACK_AUDIT_FILE') }}"
    current_run_id: "{{ lookup('ansible.builtin.env', 'ROLLBACK_AUDIT_RUN_ID') }}"
  register: audit_log

- name: Warn about aborted runs
  ansible.builtin.debug:
    msg: "Run {{ item.run_id }} of {{ item.playbook }} started {{ item.started_at }}: {{ item.outcome }}"
  loop: "{{ audit_log.aborted_runs }}"
  loop_control:
    label: "{{ item.run_id }}"
"""

RETURN = r"""
msg:
  description:
    - "One line - C(ok: N records, M runs, K aborted) (with C(, J in progress) when some are), or the broken record."
  returned: always
  type: str
  sample: "ok: 12 records, 6 runs, 1 aborted"
records:
  description: Number of sound records before the first broken one (all of them when the chain is intact).
  returned: always
  type: int
  sample: 12
runs:
  description: Number of distinct runs among those records.
  returned: always
  type: int
  sample: 6
aborted_runs:
  description: Runs that ended C(aborted by signal ...) or have no end record.
  returned: always
  type: list
  elements: dict
  sample:
    - run_id: 3b0f6f8e-5b0c-4d53-9a53-0d1b8f0e6a11
      playbook: rollback.yml
      started_at: "2026-11-28T03:12:09.114Z"
      outcome: aborted (no end record)
      start_line: 9
      end_line: null
in_progress_runs:
  description:
    - Runs without an end record whose controller process is still running on this host, and I(current_run_id).
  returned: always
  type: list
  elements: dict
broken:
  description: The first broken record, or null when the chain is intact.
  returned: always
  type: dict
  sample:
    line: 7
    run_id: 3b0f6f8e-5b0c-4d53-9a53-0d1b8f0e6a11
    reason: edited
    detail: its sha256 does not match its content
head_sha256:
  description: sha256 of the last sound line - record it elsewhere to detect a later truncation.
  returned: always
  type: str
ok:
  description: True when the chain is intact.
  returned: always
  type: bool
"""

from ansible.module_utils.audit_chain import run_audit_verify
from ansible.module_utils.audit_options import audit_verify_spec
from ansible.module_utils.runbook_plugin import Plugin

# The plugin, once: this module's main() and the action plugins/action/audit_verify.py both run it.
PLUGIN = Plugin("audit_verify", audit_verify_spec, run_audit_verify)


def main() -> None:
    PLUGIN.main()


if __name__ == "__main__":
    main()
