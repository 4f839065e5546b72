#!/usr/bin/python
# Copyright: contributors to the emergency-rollback runbook
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Ansible module: verify the rollback audit (the file, its PostgreSQL copy, the two against each other)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: audit_verify
short_description: Verify the rollback audit - the file, its PostgreSQL copy and their agreement
description:
  - Reads the JSONL audit file written by the C(rollback_audit) callback and checks every record - its
    C(sha256) against its content, its C(seal) (HMAC-SHA256 keyed with C(ROLLBACK_AUDIT_KEY)), its
    C(prev_sha256) against the previous line's bytes, and its C(seq).
  - With I(pg_dsn), also reads C(runbook.audit_log), the copy that holds one chain across every run,
    checks its chain, seals and head, and compares the two copies - every record the file says went to
    PostgreSQL is there, byte for byte and in the same order, and every row written to this file is in it.
  - Fails on the first problem, naming its line (or PostgreSQL seq), its run and why - C(not JSON),
    C(edited), C(resealed without the key), C(missing at the start), C(missing in the middle),
    C(missing at the end), C(reordered), C(only in the file) or C(only in PostgreSQL). A file cut at its end
    is seen only against PostgreSQL.
  - Reports runs with a start record and no end record (killed by SIGKILL, or a crashed controller) as
    C(aborted (no end record)), unless their controller process is still alive on this host (then they
    are in progress), and runs that ended C(aborted by signal ...).
  - The key comes from the environment variable C(ROLLBACK_AUDIT_KEY) only, never from a task argument.
    Without it, sealed records cannot be verified (a failure); a trail written without a key is checked
    as a chain only, with a warning.
  - The file is opened without following a symbolic link, and refused when others can write it.
  - Reads only; never changes anything.
version_added: "0.1.0"
author:
  - Emergency rollback runbook maintainers (!UNKNOWN)
attributes:
  check_mode:
    support: full
    description: Reads only, in check mode as otherwise.
  diff_mode:
    support: none
    description: Nothing to show a difference of.
options:
  path:
    description:
      - The audit file. The C(rollback_audit) callback sets C(ROLLBACK_AUDIT_FILE) to the path it writes to,
        so C(lookup('ansible.builtin.env', 'ROLLBACK_AUDIT_FILE')) names the configured file.
      - At least one of I(path) and I(pg_dsn) is needed.
    type: path
    required: false
  pg_dsn:
    description:
      - A libpq DSN of the audit database (table C(runbook.audit_log)). A secret, never logged.
      - Defaults to the environment variable C(ROLLBACK_AUDIT_PG_DSN).
    type: str
    required: false
  current_run_id:
    description:
      - The run calling this module (C(ROLLBACK_AUDIT_RUN_ID)); it must have a start record,
        and it is counted as in progress, not aborted.
    type: str
    required: false
notes:
  - The logic lives in C(plugins/module_utils/audit_crosscheck.py), C(audit_chain.py), C(audit_file.py)
    and C(audit_pg.py), shared with the callback.
requirements:
  - psycopg2, for I(pg_dsn)
"""

EXAMPLES = r"""
- name: Verify the audit file and its PostgreSQL copy (ROLLBACK_AUDIT_PG_DSN, ROLLBACK_AUDIT_KEY in the environment)
  audit_verify:
    path: "{{ lookup('ansible.builtin.env', 'ROLLBACK_AUDIT_FILE') }}"

- name: Verify the PostgreSQL copy alone (an AWX job's file is gone with its container)
  audit_verify:
    pg_dsn: "{{ lookup('ansible.builtin.env', 'ROLLBACK_AUDIT_PG_DSN') }}"

- name: Earlier runs that ended without an end record (preflight)
  audit_verify:
    path: "{{ lookup('ansible.builtin.env', 'ROLLBACK_AUDIT_FILE') }}"
    current_run_id: "{{ lookup('ansible.builtin.env', 'ROLLBACK_AUDIT_RUN_ID') }}"
  register: audit_log
"""

RETURN = r"""
msg:
  description:
    - "One line - C(ok: N records, M runs, K aborted) (with C(, J in progress) when some are, and
      C(; PostgreSQL: P records, head seq P, agrees) when the copy was compared), or the first problem."
  returned: always
  type: str
  sample: "ok: 12 records, 4 runs, 1 aborted; PostgreSQL: 310 records, head seq 310, agrees"
ok:
  description: True when every check passed.
  returned: always
  type: bool
records:
  description: Number of sound records of the file (of PostgreSQL without I(path)) before the first broken one.
  returned: when the audit could be read
  type: int
runs:
  description: Number of distinct runs among those records.
  returned: when the audit could be read
  type: int
aborted_runs:
  description: Runs that ended C(aborted by signal ...) or have no end record.
  returned: when the audit could be read
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
  description: Runs without an end record whose controller process is still running on this host, and I(current_run_id).
  returned: when the audit could be read
  type: list
  elements: dict
broken:
  description: The first problem (line or PostgreSQL seq, run_id, reason, detail, copy), or null.
  returned: when the audit could be read
  type: dict
  sample:
    line: 7
    run_id: 3b0f6f8e-5b0c-4d53-9a53-0d1b8f0e6a11
    reason: resealed without the key
    detail: its seal does not match its content - rewritten by someone without the key
    copy: file
head_sha256:
  description: sha256 of the last sound line.
  returned: when the audit could be read
  type: str
head_seq:
  description: seq of the last sound record.
  returned: when the audit could be read
  type: int
postgresql:
  description: The same report for the PostgreSQL copy (records, runs, broken, head_seq...), or null.
  returned: when the audit could be read
  type: dict
"""

from ansible.module_utils.audit_crosscheck import run_audit_verify
from ansible.module_utils.audit_options import audit_verify_spec
from ansible.module_utils.runbook_plugin import Plugin

# The plugin, once: this module's main() and the action plugins/action/audit_verify.py both run it.
PLUGIN = Plugin("audit_verify", audit_verify_spec, run_audit_verify)


def main() -> None:
    PLUGIN.main()


if __name__ == "__main__":
    main()
