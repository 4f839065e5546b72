# Copyright: contributors to the emergency-rollback runbook
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The audit record format: canonical JSON lines, a sha256 chain and an HMAC seal per record.

One line is one record, a JSON object in canonical form (sorted keys, no spaces, UTF-8) with:

- `seq`: 1 for the first record of its chain, then +1 per record;
- `prev_sha256`: sha256 of the previous line's exact bytes (without its newline), 64 zeros for the first;
- `sha256`: sha256 of the canonical JSON of the record without its `sha256` and `seal` fields;
- `seal` and `key_id` (when a key is configured): `seal` is the HMAC-SHA256, keyed with
  `ROLLBACK_AUDIT_KEY`, of the canonical JSON of the record without `seal`; `key_id` names the key
  (an HMAC of a fixed text, so it says nothing about the key). Anyone can recompute a sha256
  chain after rewriting a record; without the key nobody can recompute its seal.
- `run_id` and `kind` (`start`, `request`, `plan`, `end`): a run writes a `start` record when it
  begins, a `request` record once its request is checked (who, why, ticket, environment), a `plan`
  record once each database's revert is planned, and an `end` record when it finishes or is interrupted.

`verify_lines` walks a chain and names the first broken record and why: `not JSON`, `edited`,
`resealed without the key`, `missing at the start`, `missing in the middle` or `reordered`. A chain
alone cannot see records cut off its end: `audit_crosscheck` compares it with the PostgreSQL copy.

Plain Python, used by the `rollback_audit` callback, its sinks and the `audit_verify` module.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import socket
from dataclasses import dataclass, field

ZERO_SHA256 = "0" * 64
REQUIRED_FIELDS = ("kind", "prev_sha256", "run_id", "seq", "sha256")
CHAIN_FIELDS = ("seq", "prev_sha256", "sha256", "seal")
KINDS = ("start", "request", "plan", "end")
KEY_ENV = "ROLLBACK_AUDIT_KEY"
MIN_KEY_BYTES = 16
ABORTED_NO_END = "aborted (no end record)"
RESEALED = "resealed without the key"


class AuditError(Exception):
    """Base class of the audit log's errors."""


class AuditWriteError(AuditError):
    """An audit sink could not be created, locked, or appended to."""


class AuditKeyError(AuditError):
    """ROLLBACK_AUDIT_KEY is unusable (too short)."""


def canonical(record: dict) -> bytes:
    """The canonical bytes of a record: sorted keys, no whitespace, UTF-8."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def record_sha256(record: dict) -> str:
    """sha256 of the record's canonical JSON without its `sha256` and `seal` fields."""
    return sha256_hex(canonical({k: v for k, v in record.items() if k not in ("sha256", "seal")}))


# --------------------------------------------------------------------------------------------
# The key


@dataclass(frozen=True)
class AuditKey:
    """The HMAC key of the seals. Its repr never shows the key."""

    secret: bytes = field(repr=False)

    @classmethod
    def from_env(cls, environ: dict | None = None) -> AuditKey | None:
        """The key of ROLLBACK_AUDIT_KEY (None when unset or empty; AuditKeyError when too short)."""
        value = (os.environ if environ is None else environ).get(KEY_ENV) or ""
        if not value:
            return None
        secret = value.encode()
        if len(secret) < MIN_KEY_BYTES:
            raise AuditKeyError(
                f"{KEY_ENV} is too short to seal the audit ({len(secret)} bytes): use at least {MIN_KEY_BYTES}"
                " random bytes, e.g. the output of `openssl rand -hex 32`"
            )
        return cls(secret)

    @property
    def key_id(self) -> str:
        return self.mac(b"rollback-audit key id")[:16]

    def mac(self, data: bytes) -> str:
        return hmac.new(self.secret, data, hashlib.sha256).hexdigest()

    def valid(self, data: bytes, seal: object) -> bool:
        return isinstance(seal, str) and hmac.compare_digest(self.mac(data), seal)


def seal(body: dict, prev_line: bytes | None, prev_seq: int, key: AuditKey | None) -> tuple[dict, bytes]:
    """Chain `body` after `prev_line` (None for the first record) and seal it: the record and its line."""
    record = {k: v for k, v in body.items() if k not in (*CHAIN_FIELDS, "key_id")}
    record["seq"] = prev_seq + 1
    record["prev_sha256"] = ZERO_SHA256 if prev_line is None else sha256_hex(prev_line)
    if key is not None:
        record["key_id"] = key.key_id
    record["sha256"] = record_sha256(record)
    if key is not None:
        record["seal"] = key.mac(canonical(record))
    return record, canonical(record)


def seq_of(line: bytes | None) -> int:
    """The seq of a line (0 for None or a line without a usable seq)."""
    if line is None:
        return 0
    try:
        seq = json.loads(line).get("seq")
    except (ValueError, AttributeError):
        return 0
    return seq if isinstance(seq, int) and not isinstance(seq, bool) else 0


def check_record(raw: bytes, key: AuditKey | None) -> tuple[dict | None, str | None, str]:  # noqa: PLR0911
    """Parse and self-check one line: (record, reason, detail); reason is None when it is sound."""
    try:
        record = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None, "not JSON", "the line is not a JSON object (torn or edited by hand)"
    if not isinstance(record, dict):
        return None, "not JSON", "the line is not a JSON object"
    missing = [name for name in REQUIRED_FIELDS if name not in record]
    if missing:
        return record, "edited", f"the field(s) {', '.join(missing)} are missing"
    if record["kind"] not in KINDS or not isinstance(record["seq"], int) or isinstance(record["seq"], bool):
        return record, "edited", "kind or seq has a value the callback never writes"
    if record_sha256(record) != record["sha256"]:
        return record, "edited", "its sha256 does not match its content"
    try:
        is_canonical = canonical(record) == raw
    except ValueError:
        is_canonical = False
    if not is_canonical:
        return record, "edited", "its bytes are not the canonical JSON the callback writes"
    if key is not None:
        if "seal" not in record:
            return record, RESEALED, "it carries no seal, which every record written with the key has"
        if record.get("key_id") != key.key_id:
            return record, RESEALED, f"its key_id {record.get('key_id')!r} is not the verifying key's {key.key_id!r}"
        if not key.valid(canonical({k: v for k, v in record.items() if k != "seal"}), record["seal"]):
            return record, RESEALED, "its seal does not match its content: rewritten by someone without the key"
    return record, None, ""


# --------------------------------------------------------------------------------------------
# Process liveness: is the controller that wrote a `start` record still running?


def process_start_ticks(pid: int) -> int | None:
    """The start time of process `pid` in clock ticks since boot (Linux), None if unknown or not alive."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            data = handle.read()
    except OSError:
        return None
    fields = data[data.rfind(b")") + 2 :].split()
    if not fields or fields[0] == b"Z":
        return None
    return int(fields[19])


def controller_identity() -> dict:
    """Who and where this process is, as recorded in a `start` record."""
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "pid_start": process_start_ticks(pid)}


def controller_alive(controller: dict) -> bool:
    """True if the controller process of a `start` record is this host's live process with that start time."""
    if not isinstance(controller, dict) or controller.get("host") != socket.gethostname():
        return False
    pid = controller.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    ticks = process_start_ticks(pid)
    if ticks is None:
        return False
    return controller.get("pid_start") in (None, ticks)


# --------------------------------------------------------------------------------------------
# Verifying a chain


@dataclass
class Broken:
    line: int
    run_id: str | None
    reason: str
    detail: str
    copy: str = "file"

    def message(self) -> str:
        run = f" (run {self.run_id})" if self.run_id else ""
        where = "line" if self.copy == "file" else "PostgreSQL seq"
        return f"broken at {where} {self.line}{run}: {self.reason}: {self.detail}"


@dataclass
class Run:
    run_id: str
    start_line: int | None = None
    end_line: int | None = None
    playbook: str | None = None
    started_at: str | None = None
    outcome: str | None = None
    controller: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "run_id": self.run_id,
            "playbook": self.playbook,
            "started_at": self.started_at,
            "outcome": self.outcome,
            "start_line": self.start_line,
            "end_line": self.end_line,
        }


@dataclass
class Report:
    records: int = 0
    runs: dict[str, Run] = field(default_factory=dict)
    broken: Broken | None = None
    head_sha256: str = ZERO_SHA256
    head_seq: int = 0
    sealed: int = 0

    @property
    def ok(self) -> bool:
        return self.broken is None

    def aborted(self) -> list[Run]:
        return [r for r in self.runs.values() if r.outcome is not None and r.outcome.startswith("aborted")]

    def in_progress(self) -> list[Run]:
        return [r for r in self.runs.values() if r.end_line is None and r.outcome is None]

    def summary(self) -> str:
        if self.broken is not None:
            return self.broken.message()
        text = f"ok: {self.records} records, {len(self.runs)} runs, {len(self.aborted())} aborted"
        running = len(self.in_progress())
        return text + (f", {running} in progress" if running else "")

    def as_dict(self) -> dict:
        return {
            "ok": self.ok,
            "msg": self.summary(),
            "records": self.records,
            "runs": len(self.runs),
            "aborted_runs": [r.as_dict() for r in self.aborted()],
            "in_progress_runs": [r.as_dict() for r in self.in_progress()],
            "broken": None if self.broken is None else vars(self.broken).copy(),
            "head_sha256": self.head_sha256,
            "head_seq": self.head_seq,
        }


def _link_failure(index: int, record: dict, hashes: list[str], prev_seq: int) -> Broken:  # noqa: PLR0911
    """Classify a record whose prev_sha256 does not match the line before it."""
    number = index + 1
    run_id = record.get("run_id")
    seq = record["seq"]
    later = [i for i in range(index + 1, len(hashes)) if hashes[i] == record["prev_sha256"]]
    if later:
        return Broken(number, run_id, "reordered", f"it follows line {later[0] + 1}, which now comes after it")
    if record["prev_sha256"] == ZERO_SHA256 and index > 0:
        return Broken(number, run_id, "reordered", "the first record of the chain is not on the first line")
    if seq > prev_seq + 1:
        missing = seq - prev_seq - 1
        if index == 0:
            return Broken(number, run_id, "missing at the start", f"{missing} record(s) before it are missing")
        detail = f"{missing} record(s) before it are missing (seq {prev_seq} -> {seq})"
        return Broken(number, run_id, "missing in the middle", detail)
    if seq <= prev_seq:
        return Broken(number, run_id, "reordered", f"its seq {seq} comes after seq {prev_seq}")
    if index == 0:
        return Broken(number, run_id, "edited", "the first record does not start a chain (prev_sha256 is not zeros)")
    # The seq follows on but the link does not: the line before was changed and hashed again.
    return Broken(number - 1, None, "edited", f"it was changed and re-hashed: line {number} no longer chains to it")


def note_run(report: Report, record: dict, number: int) -> None:
    run = report.runs.setdefault(record["run_id"], Run(record["run_id"]))
    if record["kind"] == "start":
        run.start_line = number
        run.playbook = record.get("playbook")
        run.started_at = record.get("started_at")
        run.controller = record.get("controller") or {}
    elif record["kind"] == "end":
        run.end_line = number
        run.outcome = record.get("outcome") or "unknown"
        run.playbook = run.playbook or record.get("playbook")
        run.started_at = run.started_at or record.get("started_at")


def verify_lines(lines: list[bytes], key: AuditKey | None = None, current_run_id: str | None = None) -> Report:
    """Verify a chain given as lines (without newlines); stops at the first broken record.

    With `key`, every record must carry a valid seal of that key; without it, seals are not checked
    (`Report.sealed` counts the records that carry one, so that the caller can insist on the key).
    """
    report = Report()
    hashes = [sha256_hex(line) for line in lines]
    prev_seq = 0
    for index, raw in enumerate(lines):
        record, reason, detail = check_record(raw, key)
        run_id = record.get("run_id") if isinstance(record, dict) else None
        run_id = run_id if isinstance(run_id, str) else None
        if reason is not None:
            report.broken = Broken(index + 1, run_id, reason, detail)
            break
        expected = ZERO_SHA256 if index == 0 else hashes[index - 1]
        if record["prev_sha256"] != expected or (index == 0 and record["seq"] != 1):
            report.broken = _link_failure(index, record, hashes, prev_seq)
            break
        if record["seq"] != prev_seq + 1:
            detail = f"its seq {record['seq']} does not follow seq {prev_seq} (changed and re-hashed)"
            report.broken = Broken(index + 1, run_id, "edited", detail)
            break
        prev_seq = record["seq"]
        report.records += 1
        report.sealed += "seal" in record
        report.head_sha256, report.head_seq = hashes[index], prev_seq
        note_run(report, record, index + 1)
    return mark_aborted(report, current_run_id)


def mark_aborted(report: Report, current_run_id: str | None = None) -> Report:
    """Runs without an end record whose controller is gone are aborted (no end record)."""
    for run in report.runs.values():
        if run.end_line is None and run.run_id != current_run_id and not controller_alive(run.controller):
            run.outcome = ABORTED_NO_END
    return report
