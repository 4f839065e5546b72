"""A clock that moves only when someone sleeps: inject it as `clock` and `sleep` (HttpClient, the barrier,
the Optimizely fake's rate limiter) so that tests of waits and budgets take no wall-clock time and
their timings are exact."""

from __future__ import annotations

import threading


class FakeClock:
    def __init__(self, start: float = 1000.0):
        self.now = start
        self.sleeps: list[float] = []
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.sleeps.append(seconds)
            self.now += max(0.0, seconds)

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds
