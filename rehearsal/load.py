"""Steady load against the app instances: R requests/s of `POST /transform`, open loop, for D seconds.

Request i is due at start + i/R and goes to instance i mod n, so the rate does not drop when the
app slows down (up to `workers` requests in flight; beyond that requests start late, and the lag is
recorded). Every response is recorded with its wall-clock time, status (0 = no HTTP response),
latency, and the path (`new`/`legacy`) the app reported. The raw series goes to a JSONL file as it
comes in; the summary (count of failed requests, p50/p99 latency) at the end, also after SIGTERM.

In-process:  gen = LoadGenerator(urls, rate=200, duration=None, out=path).start(); ...; summary = gen.stop()
Subprocess:  python -m rehearsal load --rate 200 --duration 30 --out series.jsonl   (SIGTERM stops it)
"""

from __future__ import annotations

import http.client
import itertools
import json
import os
import queue
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit


@dataclass
class Sample:
    t: float  # epoch seconds when the request was sent
    seq: int
    instance: str
    status: int  # 0: no HTTP response (connection refused, reset, timeout)
    latency_ms: float
    lag_ms: float  # how late the request started against its schedule
    path: str | None = None
    error: str | None = None


def percentile(values: list[float], pct: float) -> float | None:
    """Nearest-rank percentile of unsorted values (None for no values)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(pct / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def summarize(samples: list[Sample], started: float, ended: float, rate: float) -> dict:
    latencies = [s.latency_ms for s in samples]
    by_status: dict[str, int] = {}
    by_path: dict[str, int] = {}
    for s in samples:
        by_status[str(s.status)] = by_status.get(str(s.status), 0) + 1
        if s.path:
            by_path[s.path] = by_path.get(s.path, 0) + 1
    failed = sum(1 for s in samples if not 200 <= s.status < 300)
    elapsed = max(ended - started, 1e-9)
    return {
        "requests": len(samples),
        "failed": failed,
        "by_status": by_status,
        "by_path": by_path,
        "target_rate": rate,
        "achieved_rate": round(len(samples) / elapsed, 1),
        "duration_s": round(elapsed, 2),
        "p50_ms": _round(percentile(latencies, 50)),
        "p99_ms": _round(percentile(latencies, 99)),
        "max_ms": _round(max(latencies) if latencies else None),
        "late_over_50ms": sum(1 for s in samples if s.lag_ms > 50),
        "first_failure_t": min((s.t for s in samples if not 200 <= s.status < 300), default=None),
        "last_failure_t": max((s.t for s in samples if not 200 <= s.status < 300), default=None),
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


class LoadGenerator:
    """Open-loop load: a scheduler thread, a fixed pool of keep-alive workers, a writer thread."""

    def __init__(
        self,
        urls: list[str],
        rate: float,
        duration: float | None = None,
        *,
        out: str | Path | None = None,
        workers: int = 16,
        timeout: float = 15.0,
        endpoint: str = "/transform",
    ):
        if rate <= 0:
            raise ValueError("rate must be a positive number of requests per second")
        if not urls:
            raise ValueError("no target URLs: give the app instances' base URLs")
        self.targets = [urlsplit(u.rstrip("/")) for u in urls]
        for target in self.targets:
            if target.scheme != "http" or not target.hostname:
                raise ValueError(f"target {target.geturl()!r} is not an http:// base URL")
        self.urls = [t.geturl() for t in self.targets]
        self.rate, self.duration, self.workers, self.timeout, self.endpoint = rate, duration, workers, timeout, endpoint
        self.out = Path(out) if out else None
        self.run_id = f"{os.getpid()}-{int(time.time())}"
        self.samples: list[Sample] = []
        self._due: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.started = self.ended = 0.0
        self._written = 0

    # -- life cycle ----------------------------------------------------------------------------
    def start(self) -> LoadGenerator:
        self.started = time.time()
        self._t0 = time.perf_counter()
        self._threads = [
            threading.Thread(target=self._worker, name=f"load-{n}", daemon=True) for n in range(self.workers)
        ]
        self._threads.append(threading.Thread(target=self._schedule, name="load-schedule", daemon=True))
        for thread in self._threads:
            thread.start()
        self._writer = threading.Thread(target=self._write, name="load-writer", daemon=True)
        self._writer.start()
        return self

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the end of the duration; True when finished."""
        self._threads[-1].join(timeout)
        return not self._threads[-1].is_alive()

    def request_stop(self) -> None:
        """Ask the generator to stop (safe from a signal handler); stop() then collects the summary."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def stop(self) -> dict:
        """Stop sending, let requests in flight finish (bounded by the timeout), write out; the summary."""
        self._stop.set()
        for _ in range(self.workers):
            self._due.put(None)
        for thread in self._threads:
            thread.join(self.timeout + 1)
        self.ended = time.time()
        self._writer.join(5)
        self._flush(final=True)
        return self.summary()

    def run(self) -> dict:
        """Blocking: run for the duration (or until stop() from another thread); the summary."""
        self.start()
        self.wait()
        return self.stop()

    def summary(self) -> dict:
        summary = summarize(list(self.samples), self.started, self.ended or time.time(), self.rate)
        summary["urls"] = self.urls
        summary["out"] = str(self.out) if self.out else None
        return summary

    # -- threads -------------------------------------------------------------------------------
    def _schedule(self) -> None:
        interval = 1.0 / self.rate
        for seq in itertools.count():
            due = seq * interval
            if self.duration is not None and due >= self.duration:
                break
            delay = due - (time.perf_counter() - self._t0)
            if delay > 0 and self._stop.wait(delay):
                break
            if self._stop.is_set():
                break
            self._due.put((seq, due))
        self._stop.set()
        for _ in range(self.workers):
            self._due.put(None)

    def _worker(self) -> None:
        connections: dict[int, http.client.HTTPConnection] = {}
        while True:
            item = self._due.get()
            if item is None:
                break
            seq, due = item
            index = seq % len(self.targets)
            target = self.targets[index]
            conn = connections.get(index)
            if conn is None:
                conn = connections[index] = http.client.HTTPConnection(
                    target.hostname, target.port, timeout=self.timeout
                )
            body = json.dumps({"external_ref": f"load-{self.run_id}-{seq}", "payload": {"seq": seq, "source": "load"}})
            sent_at, start = time.time(), time.perf_counter()
            lag_ms = (start - self._t0 - due) * 1000
            status, path, error = 0, None, None
            try:
                conn.request("POST", target.path + self.endpoint, body, {"Content-Type": "application/json"})
                response = conn.getresponse()
                data = response.read()
                status = response.status
                if response.getheader("Content-Type", "").startswith("application/json"):
                    path = json.loads(data).get("path")
            except (OSError, http.client.HTTPException, ValueError) as exc:
                error = type(exc).__name__
                conn.close()
                connections.pop(index, None)
            latency_ms = (time.perf_counter() - start) * 1000
            self.samples.append(
                Sample(
                    sent_at, seq, self.urls[index], status, round(latency_ms, 3), round(max(lag_ms, 0), 3), path, error
                )
            )
        for conn in connections.values():
            conn.close()

    def _write(self) -> None:
        while not self._stop.wait(1.0):
            self._flush()

    def _flush(self, final: bool = False) -> None:
        if not self.out:
            return
        end = len(self.samples)
        if end == self._written and not final:
            return
        self.out.parent.mkdir(parents=True, exist_ok=True)
        mode = "a" if self._written else "w"
        batch = self.samples[self._written : end]
        with self.out.open(mode) as out:
            out.writelines(json.dumps(asdict(s)) + "\n" for s in batch)
        self._written = end
        if final:
            summary_path = self.out.with_name(self.out.stem + ".summary.json")
            summary_path.write_text(json.dumps(self.summary(), indent=2) + "\n")


def format_summary(summary: dict) -> str:
    return (
        f"load: {summary['requests']} requests in {summary['duration_s']} s "
        f"({summary['achieved_rate']}/s of {summary['target_rate']}/s), failed {summary['failed']}, "
        f"p50 {summary['p50_ms']} ms, p99 {summary['p99_ms']} ms, max {summary['max_ms']} ms; "
        f"by status {summary['by_status']}, by path {summary['by_path']}"
    )
