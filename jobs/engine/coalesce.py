"""Coalescing the publishes of jobs enqueued one by one in one process (issue 28), Nagle-style.

Every job enqueued alone (`jobs.enqueue`, `task.delay()`, an HTTP `POST /api/jobs`) used to be a
Celery message of its own, and a worker pays Celery's cost per message (about 1.1 ms of CPU on the
bench's machine) on top of the job's claim and outcome. Here, after its commit, a job's message
goes out at once when this process sent none of its (queue, priority, type) in the last
`CONVEYOR_PUBLISH_COALESCE_MS`; otherwise its id waits for the end of that window and goes out with
the ids of that kind committed meanwhile, in one message of several ids, as `enqueue_many`'s
batches do (`jobs.tasks` claims and runs them one after the other). At most `cap` ids share one.
What decides is pure (`decisions.coalesce_deadline`, `coalescable`, `coalesce_full`).

Durability is the row's: an id waits here only after its row committed (published_at set), so a
process that dies with ids waiting loses no job: the relay's stale scan publishes them again, as
after any crash between commit and publish (`recovery.relay`, `store.mark_stale`).

One `Coalescer` per process, one daemon thread sending what waits when its window ends, started
on the first id that waits. A fork (Celery's prefork pool, gunicorn) starts the child empty,
with a new lock and no thread (`os.register_at_fork`, and the pid checked on every call): the
ids waiting at the fork are the parent's to send. At exit what waits is sent (atexit).
"""
from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from typing import Callable, Hashable, Sequence, TypeVar

from jobs.engine import decisions

log = logging.getLogger("conveyor.publish")
M = TypeVar("M")
#: Kinds remembered before those idle for a window are forgotten (a worker's messages have its
#: task as their parent: a kind per task).
MAX_KINDS = 256
#: send(messages of one kind, in one message; the key they share)
Send = Callable[[list, Hashable], object]


class _Slot:
    __slots__ = ("last_sent", "waiting", "deadline")

    def __init__(self) -> None:
        self.last_sent: float | None = None
        self.waiting: list = []
        self.deadline = 0.0


class Coalescer:
    """Per key (a message's queue, priority, type and parent task): `add` returns the messages
    to send at once; the others wait for their window's end and go out through `send`."""

    def __init__(self, send: Send, clock: Callable[[], float] = time.monotonic) -> None:
        self._send = send
        self._clock = clock
        self._reset()
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._cond = threading.Condition(threading.Lock())
        self._slots: dict[Hashable, _Slot] = {}
        self._thread: threading.Thread | None = None

    def add(self, messages: Sequence[M], key: Callable[[M], Hashable], window: float, cap: int) -> list[M]:
        """Take messages committed together (each coalescable); return those to send now, one
        message each, as before coalescing. A kind's ids that fill `cap` are sent here too, in
        one message (through `send`)."""
        if self._pid != os.getpid():  # forked without register_at_fork's reset
            self._reset()
        now_, full = [], []
        with self._cond:
            now = self._clock()
            if len(self._slots) > MAX_KINDS:
                self._prune(now, window)
            wake = False
            for message in messages:
                slot = self._slots.get(key(message))
                if slot is None:
                    slot = self._slots[key(message)] = _Slot()
                if not slot.waiting:
                    deadline = decisions.coalesce_deadline(slot.last_sent, now, window)
                    if deadline is None:
                        slot.last_sent = now
                        now_.append(message)
                        continue
                    slot.deadline = deadline
                    wake = True
                slot.waiting.append(message)
                if decisions.coalesce_full(len(slot.waiting), cap):
                    full.append((key(message), slot.waiting))
                    slot.waiting, slot.last_sent = [], now
            if wake:
                self._ensure_thread()
                self._cond.notify()
        for kind, batch in full:
            self._send(batch, kind)
        return now_

    def due(self, now: float, everything: bool = False) -> list[tuple[Hashable, list]]:
        """Take the waiting ids whose window has ended (all of them: `everything`), and forget the
        kinds idle for long (a worker's task ids as parents would otherwise pile up)."""
        out = []
        for kind, slot in list(self._slots.items()):
            if slot.waiting and (everything or slot.deadline <= now):
                out.append((kind, slot.waiting))
                slot.waiting, slot.last_sent = [], now
            elif not slot.waiting and (slot.last_sent is None or now - slot.last_sent > 60):
                del self._slots[kind]
        return out

    def _prune(self, now: float, window: float) -> None:
        for kind, slot in list(self._slots.items()):
            if not slot.waiting and (slot.last_sent is None or now - slot.last_sent >= window):
                del self._slots[kind]

    def next_deadline(self) -> float | None:
        deadlines = [slot.deadline for slot in self._slots.values() if slot.waiting]
        return min(deadlines) if deadlines else None

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, args=(self._pid,), name="conveyor-coalesce", daemon=True)
            self._thread.start()

    def _run(self, pid: int) -> None:
        while True:
            with self._cond:
                if pid != os.getpid() or pid != self._pid:
                    return
                deadline = self.next_deadline()
                now = self._clock()
                if deadline is None:
                    self._cond.wait(5.0)
                    continue
                if deadline > now:
                    self._cond.wait(deadline - now)
                    continue
                batches = self.due(now)
            for kind, batch in batches:
                try:
                    self._send(batch, kind)
                except Exception:  # the rows are committed: the relay sends them; keep the thread
                    log.exception("coalesced publish of %d job(s) failed; the relay will send them", len(batch))

    def flush(self) -> int:
        """Send everything waiting now (at exit; tests). Returns how many ids were sent."""
        if self._pid != os.getpid():
            return 0
        with self._cond:
            batches = self.due(self._clock(), everything=True)
        for kind, batch in batches:
            self._send(batch, kind)
        return sum(len(batch) for _, batch in batches)

    def waiting(self) -> int:
        """How many ids wait (tests, the no-loss case)."""
        with self._cond:
            return sum(len(slot.waiting) for slot in self._slots.values())

    def drop(self) -> int:
        """Forget what waits without sending it, as a process killed before its flush would
        (the no-loss test). Returns how many ids were dropped."""
        with self._cond:
            dropped = sum(len(slot.waiting) for slot in self._slots.values())
            self._slots.clear()
            return dropped


def at_exit(coalescer: Coalescer) -> None:
    """Send what waits when the process exits normally (a script that enqueues and ends)."""
    atexit.register(coalescer.flush)
