# Copyright: contributors to the emergency-rollback runbook
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The audit callback: wires Ansible's events to the audited run of plugins/module_utils/audit_run.py."""

from __future__ import annotations

DOCUMENTATION = r"""
name: rollback_audit
type: notification
short_description: The sealed audit record of every rollback run (JSONL file, and PostgreSQL)
description:
  - >-
    Writes, for each audited playbook run, a C(start) record when it starts, a C(request) record as
    soon as the guard (lookup C(rollback_guard), evaluated in the first play's C(hosts)) has checked the
    request - who, why, ticket, environment, whether it is production-like, or the one sentence
    refusing it - and an C(end) record when the run finishes, fails, is refused or interrupted
    (SIGINT, SIGTERM, SIGHUP; a run killed by SIGKILL keeps its start and request records).
  - >-
    Records are canonical JSON lines chained by sha256 and sealed with an HMAC keyed with
    C(ROLLBACK_AUDIT_KEY) (format - C(plugins/module_utils/audit_chain.py)). They go to an append-only
    file (opened with O_NOFOLLOW, refused if others can write it) and, with C(ROLLBACK_AUDIT_PG_DSN),
    to the PostgreSQL table C(runbook.audit_log), one chain across every run, which the runbook's role
    can only INSERT into (C(playbooks/audit_setup.yml) creates it). A production-like environment
    needs both the key and the PostgreSQL copy - the guard refuses to start without them.
    C(ansible-playbook playbooks/audit_verify.yml) checks both copies.
  - >-
    This is not a collection plugin, so its name is C(rollback_audit). ansible-runner (and so AWX)
    sets C(ANSIBLE_CALLBACK_PLUGINS), which hides ansible.cfg's C(callback_plugins); there the
    callback is found through C(playbooks/callback_plugins), a link to this folder.
  - >-
    B(Steps.) Each role is a step, named after the role without its C(rollback_) prefix; see
    C(plugins/module_utils/audit_steps.py). A play that matches no host fails the run's outcome.
  - >-
    B(Facts.) The roles publish what the audit keeps with C(ansible.builtin.set_stats)
    (C(per_host - false), C(data.rollback_audit)), one place per step (docs/interfaces.md); those dicts
    are deep-merged into the end record. The callback reads nothing else of any task result.
  - >-
    B(Secrets.) Results of no_log tasks are never read. Values under keys that look secret become
    C(<censored - secret>), and so does every occurrence of the value of an environment variable or
    extra variable whose name looks secret (FF_API_KEY, ROLLBACK_DB_DSN, PGPASSWORD, ROLLBACK_AUDIT_KEY...).
  - >-
    B(Outcome.) C(succeeded), C(refused), C(failed at <step>), or C(aborted by signal <SIGINT|SIGTERM|SIGHUP>).
  - >-
    B(Environment set for the roles.) C(ROLLBACK_AUDIT_RUN_ID) and C(ROLLBACK_AUDIT_FILE), to name the run
    in messages. Nothing decides anything from them.
requirements:
  - psycopg2 on the controller, for the PostgreSQL copy
options:
  path:
    description:
      - The audit file (JSONL). A relative path is taken relative to the directory of the
        ansible.cfg in use (the project root), or of the playbook when there is no ansible.cfg.
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
      - A libpq DSN of the audit database (table C(runbook.audit_log)). A secret - give it through the
        environment (AWX - the audit credential), never in ansible.cfg. Required for production-like
        environments.
    type: str
    default: null
    env:
      - name: ROLLBACK_AUDIT_PG_DSN
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

import atexit
import fnmatch
import os
import runpy
import signal
from pathlib import Path

from ansible import constants as C
from ansible import context
from ansible.playbook.handler import Handler
from ansible.plugins.callback import CallbackBase
from ansible.release import __version__ as ansible_version

runpy.run_path(str(Path(__file__).resolve().parent.parent / "plugin_utils" / "module_utils_path.py"))[
    "add_module_utils_path"
]()
from ansible.module_utils import audit_redact as redaction
from ansible.module_utils import audit_run
from ansible.module_utils import audit_steps as steps_model

SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")
_INCLUDES = ("include_role", "import_role", "include_tasks", "import_tasks")
INCLUDE_ACTIONS = frozenset(f"{ns}{name}" for name in _INCLUDES for ns in ("", "ansible.builtin.", "ansible.legacy."))


def role_of(task) -> str | None:
    """The name of the role a task comes from, through Task.get_name()'s public "<role> : <name>" form."""
    own = task.name or task.action
    full = task.get_name(include_role_fqcn=False)
    suffix = f" : {own}"
    return full[: -len(suffix)] if full != own and full.endswith(suffix) else None


class CallbackModule(CallbackBase):
    """Audit every audited playbook run: see DOCUMENTATION."""

    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "notification"
    CALLBACK_NAME = "rollback_audit"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, display=None, options=None):
        self.session = None
        self._previous_handlers: dict[int, object] = {}
        self._writing_signal: int | None = None
        self._shown = 0
        super().__init__(display=display, options=options)

    def resolve_path(self, playbook_dir: str) -> str:
        """The audit file: relative paths are relative to ansible.cfg's directory (else the playbook's)."""
        path = os.path.expanduser(str(self.get_option("path")))
        if not os.path.isabs(path):
            base = os.path.dirname(os.path.abspath(C.CONFIG_FILE)) if C.CONFIG_FILE else playbook_dir
            path = os.path.join(base, path)
        return os.path.normpath(path)

    def _warn(self, message: str | None = None) -> None:
        """Show the session's warnings not shown yet (not from a signal handler: the display may be mid-write)."""
        session = self.session
        if session is None or self._writing_signal is not None:
            return
        for warning in session.warnings[self._shown :]:
            self._display.warning(f"rollback_audit: {warning}")
        self._shown = len(session.warnings)

    # -- run life cycle ------------------------------------------------------------------------
    def v2_playbook_on_start(self, playbook):
        if self.session is not None:
            return  # several playbooks on one command line: one run
        # The first playbook of the command line (public: context.CLIARGS); one run per command line.
        playbook_file = str((context.CLIARGS.get("args") or [""])[0])
        name = os.path.basename(playbook_file)
        if not any(fnmatch.fnmatchcase(name, p) for p in self.get_option("only_playbooks") or []):
            return
        self.session = audit_run.AuditSession(
            path=self.resolve_path(os.path.dirname(os.path.abspath(playbook_file)) if playbook_file else os.getcwd()),
            playbook_file=playbook_file,
            check_mode=bool(context.CLIARGS.get("check", False)),
            ansible_version=ansible_version,
            group=self.get_option("file_group") or None,
            pg_dsn=self.get_option("pg_dsn") or None,
        )
        audit_run.register(self.session)
        self._install_signal_handlers()
        atexit.register(self._at_exit)
        self.session.start()
        self._warn()

    def _install_signal_handlers(self) -> None:
        for name in SIGNALS:
            signum = getattr(signal, name)
            try:
                self._previous_handlers[signum] = signal.signal(signum, self._on_signal)
            except (ValueError, OSError) as exc:  # not the main thread
                self.session.warnings.append(f"cannot catch {name}: {exc}")

    def _restore_signal_handlers(self) -> None:
        for signum, handler in self._previous_handlers.items():
            try:
                signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
            except (ValueError, OSError, TypeError):
                continue

    def _on_signal(self, signum, frame):
        """Write the end record (aborted by signal), then let the previous handler act on the signal."""
        session = self.session
        if session is None or os.getpid() != session.pid:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        if session.writing:  # interrupted our own append: finish it first, then come back here
            session.pending = lambda: self._on_signal(signum, frame)
            return
        previous = self._previous_handlers.get(signum, signal.SIG_DFL)
        self._writing_signal = signum
        session.finish(signal_name=signal.Signals(signum).name)
        self._restore_signal_handlers()
        if callable(previous):
            previous(signum, frame)
        elif previous != signal.SIG_IGN:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    def _at_exit(self) -> None:
        session = self.session
        if session is not None and not session.finished and os.getpid() == session.pid:
            error = None if session.refusal else "Ansible stopped before its recap (an error in the playbook or engine)"
            session.finish(error=error)
            self._warn()

    # -- steps -------------------------------------------------------------------------------
    def _step(self, task, handler: bool):
        session = self.session
        name = steps_model.step_name(role_of(task), session.play_name, handler)
        step, _ = session.enter_step(name)
        self._warn()
        return step

    def _task_started(self, task, handler: bool) -> None:
        if self.session is None or self.session.finished or task.action in INCLUDE_ACTIONS:
            return
        self._step(task, handler)

    def _record(self, result, outcome: str):
        session = self.session
        if session is None or session.finished:
            return None
        if result.task.action in INCLUDE_ACTIONS and outcome != "failed":
            return None
        step = self._step(result.task, isinstance(result.task, Handler))
        if outcome == "ok" and result.result.get("changed"):
            outcome = "changed"
        session.steps.count(step, result.host.get_name(), outcome)
        return step

    def _record_failure(self, result, prefix: str = "") -> None:
        step = self._record(result, "failed")
        if step is None:
            return
        data = result.result
        if data.get("_ansible_no_log") or "censored" in data or result.task.no_log is True:
            message = redaction.MARK_NO_LOG
        else:
            message = data.get("msg")
            if not message and isinstance(data.get("results"), list):
                failed = [i for i in data["results"] if isinstance(i, dict) and i.get("failed")]
                message = failed[0].get("msg") if failed and "censored" not in failed[0] else None
            message = prefix + str(message if message is not None else "failed without a message")
        task_name = result.task.get_name()
        self.session.steps.fail(step, task_name, result.host.get_name(), message, self.session.secrets)

    # -- hooks ---------------------------------------------------------------------------------
    def v2_playbook_on_play_start(self, play):
        session = self.session
        if session is None:
            return
        session.play_name = str(play.get_name() or "play").strip() or "play"
        manager = play.get_variable_manager()
        extra_vars = getattr(manager, "extra_vars", None)
        if isinstance(extra_vars, dict):
            session.add_secrets(redaction.secret_values_in(extra_vars))

    def v2_playbook_on_no_hosts_matched(self):
        if self.session is not None:
            self.session.steps.no_hosts.append(self.session.play_name)
            self.session.warnings.append(f"the play {self.session.play_name!r} matched no host: the run cannot succeed")
            self._warn()

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._task_started(task, handler=False)

    def v2_playbook_on_handler_task_start(self, task):
        self._task_started(task, handler=True)

    def v2_runner_on_ok(self, result):
        if self._record(result, "ok") is not None:
            facts = steps_model.published_facts(result.result)
            if facts is not None:
                self.session.facts(facts)

    def v2_runner_on_failed(self, result, ignore_errors=False):
        if ignore_errors:
            self._record(result, "ok")
        else:
            self._record_failure(result)

    def v2_runner_on_skipped(self, result):
        self._record(result, "skipped")

    def v2_runner_on_unreachable(self, result):
        self._record_failure(result, prefix="unreachable: ")

    def v2_runner_on_async_failed(self, result):
        self._record_failure(result)

    def v2_playbook_on_stats(self, stats):
        session = self.session
        if session is None or session.finished:
            return
        recap = {host: stats.summarize(host) for host in sorted(stats.processed)}
        session.steps.rescued(recap)
        session.finish(recap=recap)
        self._restore_signal_handlers()
        atexit.unregister(self._at_exit)
        self._warn()
