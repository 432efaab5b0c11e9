"""Grouped outcomes: the successes of a multi-id message's short jobs, committed together.

A worker running a message of several job ids (jobs.engine.batchrun) collects here the successes
that nothing follows (decisions.outcome_deferrable: no chain, no continuation, no on_finish hook,
no concurrency slot, not atomic) instead of committing each in a statement of its own; they are
committed together, in one statement, with the message's next claim in the same round trip and
transaction (store.succeed_many_and_claim), or alone (store.succeed_many) before a job that is
not known to be fast starts, before the message's task returns, and once they have waited
decisions.BATCH_PENDING_SECONDS.

Until then they are not committed: the rows are still running under this process's lease. If the
process dies first, those jobs run again (the reaper or a hand-back), at least once as ever; none
completes twice, as every outcome is fenced by its attempt (a run whose row was taken over records
nothing, reported "lost"). Only `runner._succeed`'s one-statement success defers here.
"""
from __future__ import annotations

import contextvars
import logging
import time
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence, TypeVar

from django.db import InterfaceError, OperationalError, connections

from jobs.engine import decisions, store
from jobs.engine.ending import How, ended
from jobs.models import Status

log = logging.getLogger("conveyor.grouped")
T = TypeVar("T")

#: How long an outcome's write is tried again while PostgreSQL is away (a restart, a failover).
RETRY_SECONDS = 30.0


class Group:
    """The successes waiting to be committed, with what each became once they were."""

    def __init__(self) -> None:
        self.outcomes: list[tuple[int, int, str]] = []
        self.since = 0.0
        #: Called with (job id, status) for each run whose recorded end is not "succeeded"
        #: ("cancelled", "lost"): the caller's report of it is corrected.
        self.on_changed: Callable[[int, str], None] = lambda job_id, status: None

    def __len__(self) -> int:
        return len(self.outcomes)

    def age(self) -> float:
        return time.monotonic() - self.since if self.outcomes else 0.0

    def add(self, job_id: int, attempt: int, output_json: str) -> None:
        if not self.outcomes:
            self.since = time.monotonic()
        self.outcomes.append((job_id, attempt, output_json))

    def flush(self) -> None:
        """Commit the waiting successes alone (one statement), retried while PostgreSQL is away."""
        if self.outcomes:
            self._recorded(retried(lambda: store.succeed_many(self.outcomes), f"{len(self.outcomes)} grouped outcome(s)"))

    def flush_and_claim(self, ids: Sequence[int], worker: str, lease_seconds: float, limited: Sequence[str]) -> list[store.Claimed]:
        """Commit the waiting successes and claim `ids` in one round trip. PostgreSQL away: the
        successes are committed alone (retried), and nothing is claimed (the caller claims each
        id its own way, with its patience)."""
        if not self.outcomes:
            return store.claim_many(ids, worker, lease_seconds, limited)
        try:
            done, claimed = store.succeed_many_and_claim(self.outcomes, ids, worker, lease_seconds, limited)
        except (OperationalError, InterfaceError) as exc:
            log.warning("recording %d outcome(s) with the next claim failed (%s); recording them alone", len(self.outcomes), exc)
            _close()
            self.flush()
            return []
        self._recorded(done)
        return claimed

    def _recorded(self, done: list[store.Done]) -> None:
        outcomes, self.outcomes = self.outcomes, []
        recorded = {row.id: row for row in done}
        for job_id, attempt, _ in outcomes:
            row = recorded.get(job_id)
            if row is None:
                log.warning("job %s attempt %s lost its lease before completing", job_id, attempt)
                self.on_changed(job_id, "lost")
            elif row.status == Status.CANCELLED:  # cancelled while it ran: its type's hook runs
                ended([store.Ended(row.id, row.type, row.status, None)], How.RAN, hook=False)
                self.on_changed(job_id, row.status)


def retried(write: Callable[[], T], what: str) -> T:
    """Run an outcome's write until PostgreSQL takes it, for up to RETRY_SECONDS (runner._record's
    and the grouped outcomes'). A handler that ran must not run again because its outcome met a
    restarting database: every outcome is fenced by its attempt, so writing it again after an
    unknown commit is safe (a second write finds the row ended and records nothing)."""
    deadline, delay = time.monotonic() + RETRY_SECONDS, 0.1
    while True:
        try:
            return write()
        except (OperationalError, InterfaceError) as exc:
            if time.monotonic() + delay > deadline:
                raise
            log.warning("%s: recording the outcome failed (%s); trying again", what, exc)
            _close()
            time.sleep(delay)
            delay = min(2.0, delay * 2)


def _close() -> None:
    for alias in ("default", store.CLAIMS):
        connections[alias].close()


_group: contextvars.ContextVar[Group | None] = contextvars.ContextVar("conveyor_grouped", default=None)


@contextmanager
def collecting(group: Group) -> Iterator[Group]:
    """Around a multi-id message's runs: the successes that may wait are collected in `group`."""
    token = _group.set(group)
    try:
        yield group
    finally:
        _group.reset(token)


def defer(job_id: int, attempt: int, output_json: str, *, in_chain: bool, continued: bool, hook: bool,
          holds_slots: bool, atomic: bool) -> bool:
    """Collect this success instead of committing it now, if a group collects and the success
    may wait (decisions.outcome_deferrable); False: the caller commits it as ever."""
    group = _group.get()
    if group is None or not decisions.outcome_deferrable(in_chain, continued, hook, holds_slots, atomic):
        return False
    group.add(job_id, attempt, output_json)
    return True
