"""Deadlines of a process: one thread calls each callback when its time comes, none per run.

The runner enforces time limits itself where Celery does not (the threads and solo pools, and
each job of a batch message: `runner.TimeLimit`). A `threading.Timer` per run started a thread per
job (measured: about 0.2 ms of CPU a job, a third of the runner's own cost); here every run of the
process shares one thread, which sleeps until the earliest deadline.

A cancelled deadline stays in the heap until it is popped or the heap is rebuilt (when more than
half of it is cancelled), so a process that runs many short jobs with long limits holds at most
about twice its live deadlines, not one entry per job it ever ran.

A callback runs in the deadlines' thread, outside its lock: it must be short (setting an
exception in another thread), or be the last thing the process does (the hard limit's kill).
"""
from __future__ import annotations

import heapq
import itertools
import logging
import os
import threading
import time
from typing import Callable

from jobs.engine import cpu_policy

log = logging.getLogger("conveyor.runner")


class Deadline:
    """One scheduled callback; `cancel()` before it is due and it never runs."""

    __slots__ = ("at", "callback", "cancelled")

    def __init__(self, at: float, callback: Callable[[], None]) -> None:
        self.at, self.callback, self.cancelled = at, callback, False


class Deadlines:
    def __init__(self) -> None:
        self._lock = threading.Condition(threading.Lock())
        self._heap: list[tuple[float, int, Deadline]] = []
        self._cancelled = 0
        self._order = itertools.count()
        self._thread: threading.Thread | None = None
        self._pid = 0

    def after(self, seconds: float, callback: Callable[[], None]) -> Deadline:
        """Call `callback` in `seconds` (monotonic), unless the returned Deadline is cancelled first."""
        deadline = Deadline(time.monotonic() + seconds, callback)
        with self._lock:
            self._ensure_thread()
            earliest = self._heap[0][0] if self._heap else None
            heapq.heappush(self._heap, (deadline.at, next(self._order), deadline))
            if earliest is None or deadline.at < earliest:
                self._lock.notify()  # the thread sleeps until a later time: wake it to sleep less
        return deadline

    def start(self) -> None:
        """Start this process's thread now, before its job threads lower their CPU policy
        (WORKER_CPU_POLICY=idle, jobs.engine.cpu_policy): a thread inherits its creator's."""
        with self._lock:
            self._ensure_thread()

    def _ensure_thread(self) -> None:
        # After a fork the parent's thread is gone (and so are its deadlines' runs).
        if self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
            self._heap, self._cancelled, self._pid = [], 0, os.getpid()
            self._thread = threading.Thread(target=self._loop, name="conveyor-deadlines", daemon=True)
            self._thread.start()

    def cancel(self, deadline: Deadline) -> None:
        with self._lock:
            if deadline.cancelled:
                return
            deadline.cancelled = True
            self._cancelled += 1
            if self._cancelled * 2 > len(self._heap):  # mostly dead entries: keep the live ones
                self._heap = [entry for entry in self._heap if not entry[2].cancelled]
                heapq.heapify(self._heap)
                self._cancelled = 0

    def pending(self) -> int:
        """How many deadlines are scheduled and not cancelled (for tests and monitors)."""
        with self._lock:
            return sum(1 for entry in self._heap if not entry[2].cancelled)

    def _loop(self) -> None:
        cpu_policy.keep_normal("deadlines")  # a hard limit's kill must not wait for an idle core
        while True:
            due = []
            with self._lock:
                while not due:
                    now = time.monotonic()
                    while self._heap and (self._heap[0][2].cancelled or self._heap[0][0] <= now):
                        _, _, deadline = heapq.heappop(self._heap)
                        if deadline.cancelled:
                            self._cancelled -= 1
                        else:
                            deadline.cancelled = True  # it runs now: a cancel is too late
                            due.append(deadline)
                    if not due:
                        self._lock.wait(self._heap[0][0] - now if self._heap else None)
            for deadline in due:
                try:
                    deadline.callback()
                except Exception:  # one callback's failure must not end the others' thread
                    log.exception("a deadline's callback failed")


#: The process's deadlines (the runner's time limits).
deadlines = Deadlines()
