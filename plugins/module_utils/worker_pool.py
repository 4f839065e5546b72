# Copyright: contributors to the emergency-rollback runbook
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Run one function over many jobs in worker processes, fork-safely, with a watchdog per job.

Why not `multiprocessing`'s fork pool: the runbook's logic runs inside Ansible's worker process (an
action plugin) or an AnsiballZ module, processes that have or may have other threads. A child forked
from such a process inherits their locks in whatever state they were; one held at the moment of the
fork is never released in the child, which then sleeps on a futex forever (seen here with a
100-database revert). So every worker here is a NEW interpreter (fork immediately followed by exec,
which inherits no lock), started once and given many jobs in turn:

- the parent sends each job as one JSON line on the worker's stdin and reads the result, one JSON
  line, from a pipe; whatever the job prints goes to /dev/null (a module's stdout is its result);
- the worker imports the target function by name (`"package.module:function"`) with the parent's
  `sys.path` and `ansible.module_utils` search path, so it finds the runbook's module_utils both on
  the controller (plugins/module_utils) and inside an AnsiballZ payload;
- a watchdog gives every job `budget(job)` seconds (a new worker's first job also STARTUP_BUDGET
  until the worker has imported what it needs): a worker that has not answered by then is killed
  (SIGKILL; a database session it held is ended by the server, which rolls its transaction back)
  and the job is reported as failed with `on_failure(job, reason)`, like a worker that died; a new
  worker takes the remaining jobs, and every other job is still run and reported.

Results come back in job order. Jobs and results are plain JSON values.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
import typing
from collections.abc import Callable
from dataclasses import dataclass

STARTUP_BUDGET = 60.0  # seconds a new worker may take to start and import the target

# Run by each worker: `python -c WORKER_MAIN <config JSON>`. Reads jobs from stdin, one JSON line
# each, and writes `{"index", "result"}` lines to the result pipe (fd 3... given in the config).
WORKER_MAIN = r"""
import json, os, sys
config = json.loads(sys.argv[1])
results = os.fdopen(config["result_fd"], "w", buffering=1)
devnull = os.open(os.devnull, os.O_WRONLY)
os.dup2(devnull, 1)
sys.stdout = open(os.devnull, "w")
sys.path[:0] = [p for p in config["sys_path"] if p not in sys.path]
import ansible.module_utils
for folder in config["module_utils_path"]:
    if folder not in ansible.module_utils.__path__:
        ansible.module_utils.__path__.append(folder)
module_name, function_name = config["target"].split(":")
import importlib
function = getattr(importlib.import_module(module_name), function_name)
results.write(json.dumps({"ready": True}) + "\n")
for line in sys.stdin:
    request = json.loads(line)
    result = function(request["job"])
    results.write(json.dumps({"index": request["index"], "result": result}, default=str) + "\n")
"""


@dataclass
class _Worker:
    process: subprocess.Popen
    results: int  # read end of the result pipe
    stderr: typing.IO[bytes]  # what it wrote there: the last line explains a crash
    buffer: bytes = b""
    index: int | None = None  # the job it works on
    deadline: float = 0.0
    ready: bool = False
    answered: bool = False


class WorkerPool:
    """`run(jobs)` -> results in job order; see the module docstring."""

    def __init__(
        self,
        target: str,
        parallel: int,
        budget: Callable[[dict], float],
        on_failure: Callable[[dict, str], dict],
        clock: Callable[[], float] = time.monotonic,
    ):
        self.target, self.parallel, self.clock = target, parallel, clock
        self.budget, self.on_failure = budget, on_failure
        self.selector = selectors.DefaultSelector()
        self.workers: list[_Worker] = []
        self.startup_failures = 0

    def _start(self) -> _Worker:
        import ansible.module_utils  # noqa: PLC0415 - its search path is handed to the worker

        read_end, write_end = os.pipe()
        stderr = tempfile.TemporaryFile()
        config = {
            "target": self.target,
            "sys_path": [p for p in sys.path if p],
            "module_utils_path": list(ansible.module_utils.__path__),
            "result_fd": write_end,
        }
        process = subprocess.Popen(
            [sys.executable, "-c", WORKER_MAIN, json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            pass_fds=(write_end,),
            close_fds=True,
        )
        os.close(write_end)
        worker = _Worker(process, read_end, stderr)
        self.selector.register(read_end, selectors.EVENT_READ, worker)
        self.workers.append(worker)
        return worker

    def _stop(self, worker: _Worker, kill: bool) -> None:
        """Stop `worker`: killed (hung, or the pool is closing), or, idle, asked to exit (end of its stdin)."""
        self.selector.unregister(worker.results)
        os.close(worker.results)
        self.workers.remove(worker)
        if kill:
            worker.process.send_signal(signal.SIGKILL)
        with contextlib.suppress(OSError):
            worker.process.stdin.close()
        try:
            worker.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            worker.process.kill()
            worker.process.wait()
        worker.stderr.close()

    def _give(self, worker: _Worker, queue: list[int], jobs: list[dict]) -> None:
        """The next job to `worker`, or, with none left, let it exit."""
        if not queue:
            self._stop(worker, kill=False)
            return
        index = queue.pop(0)
        startup = 0.0 if worker.ready else STARTUP_BUDGET
        worker.index, worker.deadline = index, self.clock() + startup + float(self.budget(jobs[index]))
        try:
            worker.process.stdin.write((json.dumps({"index": index, "job": jobs[index]}) + "\n").encode())
            worker.process.stdin.flush()
        except OSError:
            pass  # it died before taking the job: its result pipe's end of file reports it

    def _lost(self, worker: _Worker, jobs: list[dict], results: list, queue: list[int], reason: str) -> None:
        """`worker` hung or died on its job: report the job, replace the worker for what is left."""
        results[worker.index] = self.on_failure(jobs[worker.index], reason)
        never_answered = not worker.answered
        self._stop(worker, kill=True)
        if never_answered:
            self.startup_failures += 1
        if queue and self.startup_failures >= 2:  # workers cannot even start: do not try every job
            for index in queue:
                results[index] = self.on_failure(jobs[index], f"not tried: {reason}")
            queue.clear()
        if queue:
            self._give(self._start(), queue, jobs)

    @staticmethod
    def _death(worker: _Worker) -> str:
        code = worker.process.wait()
        how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
        worker.stderr.seek(0)
        lines = [line.strip() for line in worker.stderr.read().decode(errors="replace").splitlines() if line.strip()]
        last = f": {lines[-1][:300]}" if lines else ""
        return f"its worker process ended unexpectedly ({how}){last}"

    def _read(self, worker: _Worker, jobs: list[dict], results: list, queue: list[int]) -> None:
        chunk = os.read(worker.results, 1 << 16)
        if not chunk:
            self._lost(worker, jobs, results, queue, self._death(worker))
            return
        worker.buffer += chunk
        while b"\n" in worker.buffer and worker.index is not None:
            line, worker.buffer = worker.buffer.split(b"\n", 1)
            try:
                answer = json.loads(line)
                if answer.get("ready"):  # imports done: the job's own budget starts now
                    worker.ready, worker.deadline = True, self.clock() + float(self.budget(jobs[worker.index]))
                    continue
                results[answer["index"]] = answer["result"]
            except (ValueError, KeyError, TypeError, IndexError):
                self._lost(worker, jobs, results, queue, "its worker process answered something that is not a result")
                return
            worker.index, worker.answered = None, True
            self._give(worker, queue, jobs)

    def run(self, jobs: list[dict]) -> list[dict]:
        """Every job's result (or `on_failure`'s), in job order."""
        results: list = [None] * len(jobs)
        queue = list(range(len(jobs)))
        if not jobs:
            return results
        try:
            for _ in range(max(1, min(self.parallel, len(jobs)))):
                self._give(self._start(), queue, jobs)
            while busy := [w for w in self.workers if w.index is not None]:
                wait = max(0.0, min(w.deadline for w in busy) - self.clock())
                for key, _events in self.selector.select(wait):
                    if key.data in self.workers and key.data.index is not None:
                        self._read(key.data, jobs, results, queue)
                now = self.clock()
                for worker in [w for w in self.workers if w.index is not None and now >= w.deadline]:
                    budget = float(self.budget(jobs[worker.index]))
                    reason = f"it did not finish within {budget:g} s: the watchdog stopped its worker process"
                    self._lost(worker, jobs, results, queue, reason)
        finally:
            self.close()
        return results

    def close(self) -> None:
        for worker in list(self.workers):
            self._stop(worker, kill=True)
        self.selector.close()


def run_jobs(
    target: str,
    jobs: list[dict],
    parallel: int,
    budget: Callable[[dict], float],
    on_failure: Callable[[dict, str], dict],
) -> list[dict]:
    """`WorkerPool(...).run(jobs)`: see the module docstring."""
    return WorkerPool(target, parallel, budget, on_failure).run(jobs)
