# Copyright: contributors to the emergency-rollback runbook
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""One audited run: its records (start, request, end), its steps, its facts, and whether the audit works.

The `rollback_audit` callback creates the `AuditSession` at playbook start and registers it as
this controller process's active session (`active()`); it then feeds it Ansible's events. The
guard (lookup plugin `rollback_guard`, evaluated in the first play's `hosts:`) hands it the
checked request, which is written at once as the `request` record, so that who, why, ticket and
environment are in the audit from the first moment they are known, whatever fails later; the
guard then reads this run's records back from every sink (`audit_problem`) before it lets the
run go on. Nothing here trusts an environment variable a caller could set: the registry is this
process's memory, and the records are read back from the sinks.

The environment variables ROLLBACK_AUDIT_RUN_ID and ROLLBACK_AUDIT_FILE are set for the roles
to name the run and the file in their messages; nothing decides anything from them.
"""

from __future__ import annotations

import getpass
import os
import socket
import time
import uuid

from ansible.module_utils import audit_redact as redaction
from ansible.module_utils.audit_chain import AuditKey, AuditKeyError, check_record, controller_identity
from ansible.module_utils.audit_guard import NOTHING_DONE, Verdict
from ansible.module_utils.audit_sinks import FILE, POSTGRESQL, AuditWriter, WriteResult
from ansible.module_utils.audit_steps import Steps, merge_facts, outcome_of, utc_now

SCHEMA_VERSION = 2
PLAN_FACT = "plan"
PLAN_FACTS = ("plan", "target_revision", "flag")
_ACTIVE: AuditSession | None = None


def active() -> AuditSession | None:
    """The session of the run this process audits (None when the callback is not running)."""
    session = _ACTIVE
    if session is None:
        return None
    # A forked worker of the controller may read (never write) its parent's session.
    return session if os.getpid() == session.pid or os.getppid() == session.pid else None


def register(session: AuditSession | None) -> None:
    global _ACTIVE  # noqa: PLW0603 - the process-wide registry is the point
    _ACTIVE = session


class AuditSession:
    def __init__(
        self,
        *,
        path: str,
        playbook_file: str,
        check_mode: bool,
        ansible_version: str,
        group: str | None = None,
        pg_dsn: str | None = None,
        environ: dict | None = None,
    ):
        environ = dict(os.environ if environ is None else environ)
        self.warnings: list[str] = []
        try:
            self.key = AuditKey.from_env(environ)
        except AuditKeyError as exc:
            self.key = None
            self.warnings.append(str(exc))
        self.key_error = self.warnings[0] if self.warnings else None
        self.pg_configured = bool(pg_dsn)
        self.writer = AuditWriter(path, self.key, group, pg_dsn)
        self.secrets = redaction.secret_values_from_env(environ) | redaction.secret_values(pg_dsn or "")
        self.run_id = str(uuid.uuid4())
        self.pid = os.getpid()
        self.started = time.monotonic()
        self.head = {
            "schema": SCHEMA_VERSION,
            "run_id": self.run_id,
            "playbook": os.path.basename(playbook_file),
            "playbook_path": os.path.abspath(playbook_file) if playbook_file else "",
            "started_at": utc_now(),
            "check_mode": check_mode,
            "controller": {"user": _user(), "ansible_version": ansible_version, **controller_identity()},
        }
        self.steps = Steps()
        self.metadata: dict = {}
        self.request: dict | None = None
        self.refusal: str | None = None
        self.request_problem: str | None = None
        self.start_error: str | None = None
        self.status = "ok"
        self.finished = False
        self.writing = False
        self.pending = None
        self.play_name = "play"

    @property
    def path(self) -> str:
        return self.writer.file.path

    # -- writing -------------------------------------------------------------------------------
    def _warn(self, message: str) -> str:
        message = redaction.scrub(message, self.secrets)
        self.warnings.append(message)
        return message

    def _write(self, body: dict) -> WriteResult:
        self.writing = True
        try:
            result = self.writer.write(redaction.scrub_all(body, self.secrets))
        finally:
            self.writing = False
        if self.pending is not None:  # a signal arrived during the append: act on it now
            pending, self.pending = self.pending, None
            pending()
        if result.pg_error:
            where = f" (file seq {result.record['seq']})" if result.record and not result.file_error else ""
            self._warn(f"the PostgreSQL copy did not take the {body['kind']} record{where}: {result.pg_error}")
        return result

    def start(self) -> None:
        os.environ["ROLLBACK_AUDIT_RUN_ID"] = self.run_id
        os.environ["ROLLBACK_AUDIT_FILE"] = self.path
        result = self._write({"kind": "start", **self.head, "status": "running"})
        if result.file_error:
            self.start_error = result.file_error
            self.file_broken(result.file_error, "at start")

    def file_broken(self, reason: str, when: str) -> str:
        self.status = f"error: {reason}"
        return self._warn(f"the audit file cannot be written ({when}): {reason}")

    def probe(self, before_step: str) -> str | None:
        """A warning when the file broke since the last record (checked at every step change)."""
        if self.status != "ok":
            return None
        try:
            self.writer.probe()
        except Exception as exc:
            return self.file_broken(str(exc), f"before step {before_step}")
        return None

    # -- the request ---------------------------------------------------------------------------
    def record_request(self, verdict: Verdict) -> str | None:
        """Write the request record (once); returns why the run may not go on, or None."""
        if self.request is not None:
            return self.refusal or self.request_problem
        self.request = redaction.redact(verdict.request, self.secrets)
        self.refusal = verdict.refusal or self._readiness(bool(verdict.request.get("production_like")))
        body = {"kind": "request", **self.head, **self.request, "status": "refused" if self.refusal else "accepted"}
        if self.refusal:
            body["refused"] = self.refusal
        self._write(body)
        if self.refusal is None:
            self.request_problem = self.audit_problem()
        return self.refusal or self.request_problem

    def _readiness(self, production_like: bool) -> str | None:
        """What the configuration lacks for this environment (checked before the request record)."""
        fix = f"{NOTHING_DONE}."
        if self.key_error:
            return f"{self.key_error}; {fix}"
        if self.start_error:
            return (
                f"the audit record cannot be written ({self.start_error}): fix ROLLBACK_AUDIT_FILE or its directory"
                f" and run again; {fix}"
            )
        env = (self.request or {}).get("environment")
        if production_like and self.key is None:
            return (
                f"{env} is production-like: its audit must be sealed: set ROLLBACK_AUDIT_KEY"
                f" (AWX: the audit credential); {fix}"
            )
        if production_like and not self.pg_configured:
            return (
                f"{env} is production-like: its audit must also go to PostgreSQL: set ROLLBACK_AUDIT_PG_DSN"
                f" (AWX: the audit credential); {fix}"
            )
        if self.pg_configured and self.key is None:
            return (
                f"ROLLBACK_AUDIT_PG_DSN is set but ROLLBACK_AUDIT_KEY is not: the PostgreSQL copy is sealed:"
                f" set the key; {fix}"
            )
        return None

    def audit_problem(self) -> str | None:
        """Read this run's records back from every sink: both there, sealed, written by this process?"""
        fix = f"fix the audit and run again; {NOTHING_DONE}."
        try:
            copies = self.writer.lines_of_run(self.run_id)
        except Exception as exc:
            return f"the audit cannot be read back ({redaction.scrub(str(exc), self.secrets)}): {fix}"
        me = controller_identity()
        for sink, lines in copies.items():
            where = "the audit file" if sink == FILE else "the PostgreSQL copy"
            records = []
            for line in lines:
                record, reason, detail = check_record(line, self.key)
                if reason is not None:
                    return f"this run's record in {where} does not verify ({reason}: {detail}): {fix}"
                records.append(record)
            kinds = [r["kind"] for r in records]
            if kinds[:2] != ["start", "request"]:
                return f"{where} lacks this run's start and request records: {fix}"
            writer = records[0].get("controller") or {}
            if any(writer.get(name) != me[name] for name in ("host", "pid", "pid_start")):
                return f"the start record in {where} was not written by this process: {fix}"
        if self.pg_configured and POSTGRESQL not in copies:
            return f"the PostgreSQL copy is configured but not written: {fix}"
        return None

    # -- steps and facts -----------------------------------------------------------------------
    def enter_step(self, name: str):
        step, changed = self.steps.enter(name)
        warning = self.probe(name) if changed and len(self.steps.steps) > 1 else None
        return step, warning

    def facts(self, data: dict) -> None:
        """Merge a step's published facts; the plan is also written at once, as the `plan` record, so that
        the plan the schema step must apply is in the audit before that step begins (even if the run dies)."""
        merge_facts(self.metadata, data, self.secrets, self.warnings)
        if PLAN_FACT in data and not self.finished:
            plan = {key: self.metadata[key] for key in PLAN_FACTS if key in self.metadata}
            self._write({"kind": "plan", **self.head, **(self.request or {}), **plan})

    def add_secrets(self, values: set[str]) -> None:
        self.secrets |= values

    # -- the end record ------------------------------------------------------------------------
    def finish(self, recap: dict | None = None, signal_name: str | None = None, error: str | None = None) -> str | None:
        """Write the end record (once); returns the file's error, None if it was written."""
        if self.finished:
            return None
        self.finished = True
        active_step = self.steps.close()
        failed_hosts = any(s.get("failures") or s.get("unreachable") for s in (recap or {}).values())
        status, outcome = outcome_of(
            self.steps, active_step, failed_hosts, signal_name=signal_name, error=error, refused=self.refusal
        )
        record = {**redaction.redact(self.metadata, self.secrets), "kind": "end", **self.head, **(self.request or {})}
        record.update(
            {
                "ended_at": utc_now(),
                "duration_seconds": round(time.monotonic() - self.started, 3),
                "status": status,
                "outcome": outcome,
                "steps": self.steps.as_list(),
            }
        )
        for name, value in (("recap", recap), ("error", error), ("refused", self.refusal or self.request_problem)):
            if value is not None:
                record[name] = value
        if self.warnings:
            record["audit_warnings"] = list(self.warnings)
        result = self._write(record)
        if result.file_error:
            self.file_broken(result.file_error, "at the end: this run has no end record in the file")
        return result.file_error


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def hostname() -> str:
    return socket.gethostname()
