# Copyright: contributors to the emergency-rollback runbook
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Verify the audit: the file, the PostgreSQL copy, and the two against each other.

`run_audit_verify(params)` (the logic of the `audit_verify` module) checks:

- the file's chain and every record's seal (audit_chain.verify_lines);
- the PostgreSQL chain, its seals and its head (audit_pg.verify_rows);
- that both copies hold the same records: every record of the file that says it was written to
  PostgreSQL is there, byte for byte and in the same order, and every row that says it was written
  to this file (same host and path) is in the file. A record PostgreSQL did not take while the run
  went on is accepted only when a later sealed record of that run says so (a warning);
  otherwise it is reported as `only in the file`. Rows of this file missing from it are `missing at
  the end` of the file (it was cut) or `missing in the middle`.

It names the first problem: edited, resealed without the key, missing at the start/in the
middle/at the end, reordered, only in the file, only in PostgreSQL. Never changes anything.
"""

from __future__ import annotations

import json
import re

from ansible.module_utils.audit_chain import AuditError, AuditKey, Broken, Report, mark_aborted, verify_lines
from ansible.module_utils.audit_file import read_lines
from ansible.module_utils.audit_pg import read_chain, verify_rows

_NOT_TAKEN = re.compile(r"the PostgreSQL copy did not take the \w+ record \(file seq (\d+)\)")


def _explained(records: list[dict]) -> set[tuple[str, int]]:
    """(run_id, file seq) of the records their own run said PostgreSQL did not take."""
    explained = set()
    for record in records:
        for warning in record.get("audit_warnings") or ():
            match = _NOT_TAKEN.search(str(warning))
            if match:
                explained.add((record["run_id"], int(match.group(1))))
    return explained


def crosscheck(lines: list[bytes], rows: list, warnings: list[str]) -> Broken | None:
    """The first difference between a sound file and a sound PostgreSQL chain, or None."""
    records = [json.loads(line) for line in lines]
    identities = {json.dumps(r.get("audit_file"), sort_keys=True) for r in records if r.get("audit_file")}
    in_pg = {row.line: row.seq for row in rows}
    in_file = {line: index for index, line in enumerate(lines)}
    explained = _explained(records)
    last_pg_seq = 0
    for index, (line, record) in enumerate(zip(lines, records, strict=True)):
        if "postgresql" not in (record.get("sinks") or ()):
            continue
        seq = in_pg.get(line)
        if seq is None:
            if (record["run_id"], record["seq"]) in explained:
                warnings.append(f"line {index + 1} is not in PostgreSQL, which its run said was unreachable then")
                continue
            detail = "it says it was written to PostgreSQL, which does not hold it"
            return Broken(index + 1, record["run_id"], "only in the file", detail)
        if seq < last_pg_seq:
            return Broken(index + 1, record["run_id"], "reordered", "the file and PostgreSQL hold it in another order")
        last_pg_seq = seq
    last_file_seq = records[-1]["seq"] if records else 0
    for row in rows:
        if row.line in in_file:
            continue
        record = json.loads(row.line)
        if json.dumps(record.get("audit_file"), sort_keys=True) not in identities or "file" not in record.get("sinks"):
            continue
        if record["seq"] > last_file_seq:
            detail = f"PostgreSQL seq {row.seq} (file seq {record['seq']}) was cut off the end of the file"
            return Broken(last_file_seq + 1, record["run_id"], "missing at the end", detail)
        detail = f"PostgreSQL seq {row.seq} says it is the file's seq {record['seq']}, which holds another record"
        return Broken(record["seq"], record["run_id"], "only in PostgreSQL", detail)
    return None


def _verify_file(path: str, key: AuditKey | None, current: str | None) -> tuple[list[bytes], Report]:
    lines = read_lines(path)
    report = verify_lines(lines, key, current)
    if key is None and report.sealed:
        raise AuditError(f"the records of {path} are sealed: set ROLLBACK_AUDIT_KEY to check their seals")
    return lines, report


def run_audit_verify(params: dict, check_mode: bool = False, diff: bool = False) -> dict:
    """Verify the file and/or the PostgreSQL copy; the module's result (failed with one sentence on a problem)."""
    path, dsn, current = params.get("path"), params.get("pg_dsn") or None, params.get("current_run_id") or None
    warnings: list[str] = []
    try:
        key = AuditKey.from_env()
        file_report = pg_report = None
        if path:
            lines, file_report = _verify_file(path, key, current)
        if dsn:
            if key is None:
                raise AuditError("the PostgreSQL copy is sealed: set ROLLBACK_AUDIT_KEY to check it")
            rows, head = read_chain(dsn)
            pg_report = mark_aborted(verify_rows(rows, head, key), current)
    except AuditError as exc:
        return {"changed": False, "failed": True, "ok": False, "msg": f"Cannot verify the audit: {exc}"}
    main = file_report or pg_report
    result = {"changed": False, **main.as_dict(), "postgresql": pg_report.as_dict() if pg_report else None}
    if key is None:
        warnings.append("the records carry no seal (no ROLLBACK_AUDIT_KEY): only their chain was checked")
    if file_report is not None and not file_report.ok:
        return {**result, "failed": True, "ok": False, "msg": f"Audit chain of {path} is {file_report.summary()}"}
    if pg_report is not None and not pg_report.ok:
        msg = f"The PostgreSQL copy of the audit is {pg_report.summary()}"
        return {**result, "broken": vars(pg_report.broken).copy(), "failed": True, "ok": False, "msg": msg}
    if file_report is not None and pg_report is not None:
        broken = crosscheck(lines, rows, warnings)
        if broken is not None:
            result["broken"] = vars(broken).copy()
            msg = f"The audit file {path} and its PostgreSQL copy differ: {broken.message()}"
            return {**result, "failed": True, "ok": False, "msg": msg, "warnings": warnings}
        result["msg"] += f"; PostgreSQL: {pg_report.records} records, head seq {pg_report.head_seq}, agrees"
    if current and current not in main.runs:
        msg = f"The audit has no start record of this run {current}: is the callback enabled?"
        return {**result, "failed": True, "ok": False, "msg": msg, "warnings": warnings}
    return {**result, "warnings": warnings} if warnings else result
