"""Functions the worker-pool tests run in worker processes (imported there by name)."""

from __future__ import annotations

import os
import threading
import time


def work(job: dict) -> dict:
    """Do what the job says: answer, print (which must not reach the result), hang, or die."""
    kind = job["kind"]
    if kind == "print":
        print("a migration printing to stdout")
    if kind == "hang":
        threading.Event().wait()  # like a child asleep on an inherited lock: never returns
    if kind == "die":
        os._exit(3)
    if kind == "sleep":
        time.sleep(job["seconds"])
    return {"name": job["name"], "pid": os.getpid(), "kind": kind}
