# Copyright: contributors to the emergency-rollback runbook
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The audit callback: one correlated, hash-chained record of every rollback run."""

from __future__ import annotations

import atexit
import fnmatch
import getpass
import os
import runpy
import signal
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from ansible import constants as C
from ansible import context
from ansible.playbook.block import Block
from ansible.playbook.handler import Handler
from ansible.plugins.callback import CallbackBase
from ansible.release import __version__ as ansible_version

DOCUMENTATION = r"""
name: rollback_audit
type: notification
short_description: One hash-chained audit record per rollback run (JSONL, optionally PostgreSQL)
description:
  - >-
    Writes a C(start) record when an audited playbook starts and an C(end) record when it finishes,
    fails, or is interrupted (SIGINT, SIGTERM, SIGHUP), to an append-only JSONL file whose records
    form a sha256 chain; optionally also to the PostgreSQL table C(runbook.audit_log).
  - >-
    This is not a collection plugin, so its name is C(rollback_audit), not a fully qualified name.
    Enable it with C(callbacks_enabled = rollback_audit) in ansible.cfg. ansible-runner (and so AWX)
    sets C(ANSIBLE_CALLBACK_PLUGINS), which hides ansible.cfg's C(callback_plugins); there the
    callback is found through C(playbooks/callback_plugins), a link to this folder next to the
    playbooks.
  - >-
    B(Record chain.) Each line is the canonical JSON (sorted keys, no spaces, UTF-8) of one record
    with C(seq) (1, 2, ...), C(prev_sha256) (sha256 of the previous line's exact bytes, 64 zeros for
    the first) and C(sha256) (of the record's canonical JSON without C(sha256)). Records are appended
    with O_APPEND under an exclusive flock, flushed and fsynced; concurrent runs share a file
    safely. The file is created 0600 (0640 with I(file_group)), its parent directory 0700 (0750).
    C(ansible-playbook playbooks/audit_verify.yml) checks the chain.
  - >-
    B(Environment set for the playbook.) At playbook start the callback sets, in the controller
    process (where C(lookup('ansible.builtin.env', ...)) runs), C(ROLLBACK_AUDIT_RUN_ID),
    C(ROLLBACK_AUDIT_FILE) (the resolved path) and C(ROLLBACK_AUDIT_STATUS) -
    C(ok) once the start record is written, C(error: <reason>) when it could not be (the preflight
    refuses to start), or C(off: <playbook> is not audited) for a playbook outside I(only_playbooks).
    If the file breaks mid-run (checked at every step change) the run continues, a warning is
    shown and C(ROLLBACK_AUDIT_STATUS) becomes C(error: <reason>) so that the notify step alerts.
  - >-
    B(Steps.) Each role is a step, named after the role without its C(rollback_) prefix; tasks
    outside a role count under the play's name; handler tasks count under their role, or
    C(notify). Per step - name, outcome (C(ok), C(changed), C(failed), C(skipped), or C(rescued)
    when a rescue block handled its failure), start, end, duration, number of hosts, and for a
    failure the failed task's name, host and message (C(<censored: no_log>) for a no_log task).
  - >-
    B(Run metadata.) Every C(rollback_audit) dict that a task sends with C(ansible.builtin.set_stats)
    (C(data.rollback_audit), per_host false) is deep-merged into the end record. The preflight
    sends operator, operator_source, environment, reason, ticket, awx_job_id, awx_job_url,
    awx_job_template, target_revision, plan; later steps send flag, databases, notifications,
    warnings. Keys of the record itself (run_id, seq, steps, outcome, ...) cannot be overwritten.
    Nothing else is copied from results, and the module results of two actions are read through a
    whitelist - C(feature_flag) (provider, previous_state, state, changed, attempts,
    change_reference, into C(flag)) and C(schema_migration) (from_revision, to_revision, changed,
    sql_sha256, archive, attempts, lock_wait_seconds, duration_seconds, into C(databases) under the
    host's name, or under each item's C(name) when the result has a C(databases) list).
  - >-
    B(Secrets.) Results of no_log tasks are never read. Values under keys that look secret
    (password, token, api_key, secret, dsn, webhook, credential, private_key) become
    C(<censored: secret>), and so does every occurrence of a value of an environment variable or
    extra variable whose name looks secret (FF_API_KEY, ROLLBACK_DB_DSN, PGPASSWORD, ...).
  - >-
    B(Outcome.) C(succeeded), C(failed at <step>), or C(aborted by signal <SIGINT|SIGTERM|SIGHUP>).
    A playbook stopped by an Ansible error before its recap ends C(failed at <step>) with C(error).
    A run killed by SIGKILL leaves only its start record - verify reports it as
    C(aborted (no end record)).
requirements:
  - psycopg2 on the controller, only for I(pg_dsn)
options:
  path:
    description:
      - The audit file (JSONL). A relative path is taken relative to the directory of the
        ansible.cfg in use (the project root), or of the playbook when there is no ansible.cfg.
      - In AWX, where each job runs in a fresh copy of the project, set it to a persistent path.
    type: str
    default: .run/audit/rollback-audit.jsonl
    env:
      - name: ROLLBACK_AUDIT_FILE
    ini:
      - section: callback_rollback_audit
        key: path
  file_group:
    description:
      - A group that may read the audit file; the file is then 0640 and its new parent
        directories 0750, owned by that group. Unset, the file is 0600 and its directory 0700.
    type: str
    default: null
    env:
      - name: ROLLBACK_AUDIT_GROUP
    ini:
      - section: callback_rollback_audit
        key: file_group
  pg_dsn:
    description:
      - A libpq DSN of a PostgreSQL database that receives a copy of every record in the table
        C(runbook.audit_log) (created if missing). A secret - give it through the environment, never
        in ansible.cfg. When that database cannot be written, the run goes on with a warning.
    type: str
    default: null
    env:
      - name: ROLLBACK_AUDIT_PG_DSN
    ini:
      - section: callback_rollback_audit
        key: pg_dsn
  only_playbooks:
    description:
      - Basenames (shell patterns) of the playbooks to audit; other playbooks are not recorded.
    type: list
    elements: str
    default: [rollback.yml, deploy.yml, archive_purge.yml]
    env:
      - name: ROLLBACK_AUDIT_PLAYBOOKS
    ini:
      - section: callback_rollback_audit
        key: only_playbooks
"""


runpy.run_path(str(Path(__file__).resolve().parent.parent / "plugin_utils" / "module_utils_path.py"))[
    "add_module_utils_path"
]()
from ansible.module_utils import audit_chain as chain  # noqa: E402
from ansible.module_utils import audit_redact as redaction  # noqa: E402

SCHEMA_VERSION = 1
STEP_PREFIX = "rollback_"
HANDLER_STEP = "notify"
OUTCOMES = ("failed", "rescued", "changed", "ok", "skipped")
SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")
INCLUDE_ACTIONS = frozenset(C._ACTION_ALL_INCLUDE_ROLE_TASKS + C._ACTION_ALL_PROPER_INCLUDE_IMPORT_ROLES)
RESERVED_KEYS = frozenset(
    {
        "audit_warnings",
        "check_mode",
        "controller",
        "duration_seconds",
        "ended_at",
        "error",
        "kind",
        "outcome",
        "playbook",
        "playbook_path",
        "prev_sha256",
        "recap",
        "run_id",
        "schema",
        "seq",
        "sha256",
        "started_at",
        "status",
        "steps",
    }
)
FLAG_KEYS = ("provider", "previous_state", "state", "changed", "attempts", "change_reference")
SCHEMA_KEYS = (
    "from_revision",
    "to_revision",
    "changed",
    "sql_sha256",
    "archive",
    "attempts",
    "lock_wait_seconds",
    "duration_seconds",
)
PG_DDL = """
CREATE SCHEMA IF NOT EXISTS runbook;
CREATE TABLE IF NOT EXISTS runbook.audit_log (
    id bigserial PRIMARY KEY,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    run_id text NOT NULL,
    kind text NOT NULL,
    seq bigint NOT NULL,
    sha256 text NOT NULL,
    prev_sha256 text NOT NULL,
    in_file boolean NOT NULL,
    line text NOT NULL,
    record jsonb NOT NULL
);
"""
PG_INSERT = (
    "INSERT INTO runbook.audit_log (run_id, kind, seq, sha256, prev_sha256, in_file, line, record)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s::jsonb)"
)


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def result_data(result) -> dict:
    """The callback copy of a task result (`result.result` since ansible-core 2.19)."""
    data = getattr(result, "result", None)
    if data is None:
        data = getattr(result, "_result", None)
    return data if isinstance(data, dict) else {}


def is_censored(data: dict) -> bool:
    return bool(data.get("_ansible_no_log")) or "censored" in data


def will_be_rescued(task) -> bool:
    """True if a failure of `task` runs a rescue section (the task sits in the block part of a block with one)."""
    child, parent = task, getattr(task, "_parent", None)
    while parent is not None:
        if isinstance(parent, Block) and parent.rescue:
            uuid_ = getattr(child, "_uuid", None)
            if any(getattr(item, "_uuid", None) == uuid_ for item in parent.block):
                return True
        child, parent = parent, getattr(parent, "_parent", None)
    return False


def short_action(task) -> str:
    return str(getattr(task, "action", "") or "").rsplit(".", 1)[-1]


@dataclass
class Step:
    name: str
    started_at: str
    ended_at: str | None = None
    seconds: float = 0.0
    hosts: set[str] = field(default_factory=set)
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    failure: dict | None = None
    failed_first: float | None = None  # monotonic time of its first failed result ("failed at" names the earliest)

    def outcome(self) -> str:
        """The first of failed, rescued, changed, ok that any result had; skipped if none."""
        return next((name for name in OUTCOMES if self.counts[name]), "skipped")

    def as_dict(self) -> dict:
        out = {
            "name": self.name,
            "outcome": self.outcome(),
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "duration_seconds": round(self.seconds, 3),
            "hosts": len(self.hosts),
        }
        if self.failure is not None:
            out["failure"] = self.failure
        return out


@dataclass
class AuditRun:
    run_id: str
    path: str
    playbook: str
    playbook_path: str
    started_at: str
    started: float
    check_mode: bool
    controller: dict
    pid: int
    metadata: dict = field(default_factory=dict)
    steps: dict[str, Step] = field(default_factory=dict)
    current: str | None = None
    segment_started: float = 0.0
    play_name: str = "play"
    warnings: list[str] = field(default_factory=list)
    secrets: set[str] = field(default_factory=set)
    status: str = "ok"
    identity: tuple[int, int] | None = None
    finished: bool = False
    writing: bool = False
    in_signal: bool = False
    pending_signal: int | None = None
    previous_handlers: dict[int, object] = field(default_factory=dict)

    def head(self) -> dict:
        """The fields of the start record, repeated in the end record."""
        return {
            "schema": SCHEMA_VERSION,
            "run_id": self.run_id,
            "playbook": self.playbook,
            "playbook_path": self.playbook_path,
            "started_at": self.started_at,
            "check_mode": self.check_mode,
            "controller": self.controller,
        }


class CallbackModule(CallbackBase):
    """Audit every audited playbook run: see DOCUMENTATION."""

    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "notification"
    CALLBACK_NAME = "rollback_audit"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, display=None, options=None):
        self._path_option = ".run/audit/rollback-audit.jsonl"
        self._file_group = None
        self._pg_dsn = None
        self._only_playbooks = ["rollback.yml", "deploy.yml", "archive_purge.yml"]
        self._run: AuditRun | None = None
        super().__init__(display=display, options=options)

    # -- options -------------------------------------------------------------------------------
    def set_options(self, task_keys=None, var_options=None, direct=None):
        super().set_options(task_keys=task_keys, var_options=var_options, direct=direct)
        self._path_option = self.get_option("path")
        self._file_group = self.get_option("file_group") or None
        self._pg_dsn = self.get_option("pg_dsn") or None
        self._only_playbooks = [str(p) for p in self.get_option("only_playbooks") or []]

    def resolve_path(self, playbook_dir: str) -> str:
        """The audit file: relative paths are relative to ansible.cfg's directory (else the playbook's)."""
        path = os.path.expanduser(str(self._path_option))
        if not os.path.isabs(path):
            config_file = C.CONFIG_FILE
            base = os.path.dirname(os.path.abspath(config_file)) if config_file else playbook_dir
            path = os.path.join(base, path)
        return os.path.normpath(path)

    def is_audited(self, playbook_file: str) -> bool:
        name = os.path.basename(playbook_file)
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self._only_playbooks)

    # -- writing -------------------------------------------------------------------------------
    def _set_status(self, status: str) -> None:
        run = self._run
        if run is not None:
            run.status = status
        os.environ["ROLLBACK_AUDIT_STATUS"] = status

    def _write(self, record: dict) -> str | None:
        """Append a record to the file (then to PostgreSQL); returns the file error, None if it was written."""
        run = self._run
        run.writing = True
        error = None
        sealed = None
        try:
            sealed = chain.append_record(run.path, record, group=self._file_group)
            run.identity = chain.file_identity(run.path)
        except chain.AuditWriteError as exc:
            error = str(exc)
        except OSError as exc:
            error = f"cannot write {run.path}: {exc.strerror or exc}"
        finally:
            run.writing = False
        if self._pg_dsn:
            self._write_pg(sealed if sealed is not None else chain.seal(record, None, -1)[0], sealed is not None)
        if run.pending_signal is not None:
            signum, run.pending_signal = run.pending_signal, None
            self._on_signal(signum, None)
        return error

    def _write_pg(self, record: dict, in_file: bool) -> None:
        run = self._run
        try:
            import psycopg2  # noqa: PLC0415 - optional, only for the PostgreSQL sink
        except ImportError:
            self._audit_warning("pg_dsn is set but psycopg2 is not installed on the controller: no PostgreSQL copy")
            return
        line = chain.canonical(record).decode()
        try:
            conn = psycopg2.connect(self._pg_dsn, connect_timeout=5, application_name="rollback_audit")
            try:
                with conn, conn.cursor() as cur:
                    cur.execute(PG_DDL)
                    keys = (record["kind"], record["seq"], record["sha256"], record["prev_sha256"])
                    cur.execute(PG_INSERT, (run.run_id, *keys, in_file, line, line))
            finally:
                conn.close()
        except psycopg2.Error as exc:
            reason = " ".join(str(exc).split()) or type(exc).__name__
            self._audit_warning(f"cannot write the PostgreSQL copy of the audit record: {reason}")

    def _audit_warning(self, message: str) -> None:
        run = self._run
        message = redaction.scrub(message, run.secrets | redaction.secret_values({"dsn": self._pg_dsn or ""}))
        run.warnings.append(message)
        if not run.in_signal:  # the display may be mid-write when a signal arrives
            self._display.warning(f"rollback_audit: {message}")

    def _file_failed(self, reason: str, when: str) -> None:
        self._set_status(f"error: {reason}")
        self._audit_warning(f"the audit file cannot be written ({when}): {reason}")

    # -- run life cycle ------------------------------------------------------------------------
    def v2_playbook_on_start(self, playbook):
        if self._run is not None:
            return  # several playbooks on one command line: one run
        playbook_file = str(getattr(playbook, "_file_name", "") or "")
        playbook_dir = str(getattr(playbook, "_basedir", "") or os.getcwd())
        path = self.resolve_path(playbook_dir)
        os.environ["ROLLBACK_AUDIT_FILE"] = path
        if not self.is_audited(playbook_file):
            os.environ.pop("ROLLBACK_AUDIT_RUN_ID", None)
            name = os.path.basename(playbook_file)
            os.environ["ROLLBACK_AUDIT_STATUS"] = f"off: {name} is not audited (only_playbooks)"
            return
        try:
            user = getpass.getuser()
        except (KeyError, OSError):
            user = str(os.getuid())
        controller = {"user": user, "ansible_version": ansible_version, **chain.controller_identity()}
        self._run = run = AuditRun(
            run_id=str(uuid.uuid4()),
            path=path,
            playbook=os.path.basename(playbook_file),
            playbook_path=os.path.abspath(playbook_file) if playbook_file else "",
            started_at=utc_now(),
            started=time.monotonic(),
            check_mode=bool(context.CLIARGS.get("check", False)),
            controller=controller,
            pid=os.getpid(),
            secrets=redaction.secret_values_from_env(os.environ) | redaction.secret_values(self._pg_dsn or ""),
        )
        os.environ["ROLLBACK_AUDIT_RUN_ID"] = run.run_id
        self._install_signal_handlers()
        atexit.register(self._at_exit)
        error = self._write({"kind": "start", **run.head(), "status": "running"})
        if error:
            self._file_failed(error, "at start")
        else:
            self._set_status("ok")

    def _install_signal_handlers(self) -> None:
        run = self._run
        for name in SIGNALS:
            signum = getattr(signal, name)
            try:
                run.previous_handlers[signum] = signal.signal(signum, self._on_signal)
            except (ValueError, OSError) as exc:  # not the main thread
                run.warnings.append(f"cannot catch {name}: {exc}")

    def _restore_signal_handlers(self) -> None:
        run = self._run
        for signum, handler in run.previous_handlers.items():
            try:
                signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
            except (ValueError, OSError, TypeError):
                continue

    def _on_signal(self, signum, frame):
        """Write the end record (aborted by signal), then let the previous handler act on the signal."""
        run = self._run
        if run is None or os.getpid() != run.pid:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        if run.writing:  # interrupted our own append: finish it first, then come back here
            run.pending_signal = signum
            return
        previous = run.previous_handlers.get(signum, signal.SIG_DFL)
        if not run.finished:
            run.in_signal = True
            self._finish(signal_name=signal.Signals(signum).name)
        self._restore_signal_handlers()
        if callable(previous):
            previous(signum, frame)
        elif previous != signal.SIG_IGN:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    def _at_exit(self) -> None:
        run = self._run
        if run is not None and not run.finished and os.getpid() == run.pid:
            self._finish(error="Ansible stopped before its recap (an error in the playbook or engine: see its output)")

    # -- steps -------------------------------------------------------------------------------
    def _step_name(self, task, handler: bool) -> str:
        role = getattr(task, "_role", None)
        if role is not None:
            name = role.get_name(include_role_fqcn=False)
            return name[len(STEP_PREFIX) :] if name.startswith(STEP_PREFIX) and len(name) > len(STEP_PREFIX) else name
        return HANDLER_STEP if handler else self._run.play_name

    def _close_segment(self) -> None:
        run = self._run
        if run.current is not None:
            step = run.steps[run.current]
            step.seconds += time.monotonic() - run.segment_started
            step.ended_at = utc_now()

    def _enter_step(self, name: str) -> Step:
        run = self._run
        if run.current != name:
            self._close_segment()
            if run.current is not None and run.status == "ok":
                try:
                    chain.probe(run.path, run.identity)
                except chain.AuditWriteError as exc:
                    self._file_failed(str(exc), f"before step {name}")
            run.current = name
            run.segment_started = time.monotonic()
        if name not in run.steps:
            run.steps[name] = Step(name=name, started_at=utc_now())
        return run.steps[name]

    def _task_started(self, task, handler: bool) -> None:
        if self._run is None or self._run.finished or getattr(task, "action", None) in INCLUDE_ACTIONS:
            return
        self._enter_step(self._step_name(task, handler))

    def _step_of_result(self, result) -> Step:
        return self._enter_step(self._step_name(result.task, isinstance(result.task, Handler)))

    def _record_result(self, result, outcome: str) -> Step | None:
        run = self._run
        if run is None or run.finished:
            return None
        task = result.task
        if getattr(task, "action", None) in INCLUDE_ACTIONS and outcome != "failed":
            return None
        step = self._step_of_result(result)
        step.hosts.add(result.host.get_name())
        if outcome == "ok" and result_data(result).get("changed"):
            outcome = "changed"
        if outcome == "failed" and step.failed_first is None:
            step.failed_first = time.monotonic()
        step.counts[outcome] += 1
        return step

    def _record_failure(self, result, prefix: str = "") -> None:
        rescued = not prefix and will_be_rescued(result.task)
        step = self._record_result(result, "rescued" if rescued else "failed")
        if step is None or rescued or step.failure is not None:
            return
        host = result.host.get_name()
        data = result_data(result)
        if is_censored(data) or getattr(result.task, "no_log", False) is True:
            message = redaction.MARK_NO_LOG
        else:
            message = data.get("msg")
            if not message and isinstance(data.get("results"), list):
                failed_items = [i for i in data["results"] if isinstance(i, dict) and i.get("failed")]
                message = failed_items[0].get("msg") if failed_items and not is_censored(failed_items[0]) else None
            message = prefix + str(message if message is not None else "failed without a message")
        failure = {"task": result.task.get_name(), "host": host, "message": message}
        step.failure = redaction.redact(failure, self._run.secrets)

    # -- metadata ----------------------------------------------------------------------------
    def _merge_metadata(self, data: dict) -> None:
        run = self._run
        clean = redaction.redact(data, run.secrets)
        for key in sorted(set(clean) & RESERVED_KEYS):
            run.warnings.append(f"set_stats key {key!r} is reserved for the audit record: ignored")
            del clean[key]
        redaction.deep_merge(run.metadata, clean)

    def _collect(self, result) -> None:
        """Take run metadata from set_stats and the whitelisted module results of a successful task."""
        data = result_data(result)
        if is_censored(data):
            return
        stats = data.get("ansible_stats")
        if isinstance(stats, dict) and isinstance(stats.get("data"), dict):
            audit = stats["data"].get("rollback_audit")
            if isinstance(audit, dict):
                self._merge_metadata(audit)
        if self._run.check_mode or getattr(result.task, "check_mode", None) is True:
            # A read in check mode (the preflight's plan, the verification's read-back) changes
            # nothing: it must not overwrite what the step that acted recorded.
            return
        action = short_action(result.task)
        items = data["results"] if isinstance(data.get("results"), list) else [data]
        items = [i for i in items if isinstance(i, dict) and not is_censored(i)]
        if action == "feature_flag":
            for item in items:
                self._merge_metadata({"flag": {k: item[k] for k in FLAG_KEYS if k in item}})
        elif action == "schema_migration":
            host = result.host.get_name()
            for item in items:
                for name, entry in self._schema_entries(host, item).items():
                    self._merge_metadata({"databases": {name: {k: entry[k] for k in SCHEMA_KEYS if k in entry}}})

    @staticmethod
    def _schema_entries(host: str, item: dict) -> dict[str, dict]:
        databases = item.get("databases")
        if not isinstance(databases, list):
            return {host: item}
        entries = {}
        for index, entry in enumerate(databases):
            if isinstance(entry, dict):
                entries[str(entry.get("name") or f"{host}[{index}]")] = entry  # the module's unique name
        return entries

    # -- hooks ---------------------------------------------------------------------------------
    def v2_playbook_on_play_start(self, play):
        run = self._run
        if run is None:
            return
        run.play_name = str(play.get_name() or "play").strip() or "play"
        manager = play.get_variable_manager() if hasattr(play, "get_variable_manager") else None
        extra_vars = getattr(manager, "extra_vars", None)
        if isinstance(extra_vars, dict):
            run.secrets |= redaction.secret_values_in(extra_vars)

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._task_started(task, handler=False)

    def v2_playbook_on_handler_task_start(self, task):
        self._task_started(task, handler=True)

    def v2_runner_on_ok(self, result):
        if self._record_result(result, "ok") is not None:
            self._collect(result)

    def v2_runner_on_failed(self, result, ignore_errors=False):
        if ignore_errors:
            self._record_result(result, "ok")
        else:
            self._record_failure(result)

    def v2_runner_on_skipped(self, result):
        self._record_result(result, "skipped")

    def v2_runner_on_unreachable(self, result):
        self._record_failure(result, prefix="unreachable: ")

    def v2_runner_on_async_failed(self, result):
        self._record_failure(result)

    def v2_playbook_on_stats(self, stats):
        run = self._run
        if run is None or run.finished:
            return
        recap = {host: stats.summarize(host) for host in sorted(stats.processed)}
        self._finish(recap=recap)

    # -- the end record --------------------------------------------------------------------------
    def _finish(self, recap: dict | None = None, signal_name: str | None = None, error: str | None = None) -> None:
        run = self._run
        self._close_segment()
        active, run.current = run.current, None
        failed_hosts = [h for h, s in (recap or {}).items() if s.get("failures") or s.get("unreachable")]
        steps = [step.as_dict() for step in run.steps.values()]
        # The step that failed first (a role may run twice, e.g. notify after the flag and at the end).
        failed = sorted((s for s in run.steps.values() if s.failed_first is not None), key=lambda s: s.failed_first)
        failed_step = failed[0].name if failed else next((s["name"] for s in steps if s["outcome"] == "failed"), None)
        if signal_name is not None:
            status, outcome = "aborted", f"aborted by signal {signal_name}"
        elif error is not None or failed_hosts:
            last = active or (steps[-1]["name"] if steps else "start")
            status, outcome = "failed", f"failed at {failed_step or last}"
        else:
            status, outcome = "completed", "succeeded"
        run.finished = True
        record = {**redaction.redact(run.metadata, run.secrets), "kind": "end", **run.head()}
        ended = time.monotonic()
        record.update(
            {
                "ended_at": utc_now(),
                "duration_seconds": round(ended - run.started, 3),
                "status": status,
                "outcome": outcome,
                "steps": steps,
            }
        )
        if recap is not None:
            record["recap"] = recap
        if error is not None:
            record["error"] = error
        if run.warnings:
            record["audit_warnings"] = list(run.warnings)
        file_error = self._write(redaction.scrub_all(record, run.secrets))
        if os.getpid() == run.pid:
            self._restore_signal_handlers()
            atexit.unregister(self._at_exit)
        if file_error:
            self._file_failed(file_error, "at the end: this run has no end record")
