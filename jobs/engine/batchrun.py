"""A message of several job ids, run by one worker process: claims in chunks, outcomes grouped.

Each id of a message used to be claimed in a statement of its own and its success committed in
another: two round trips and two commits per job. Here (jobs.tasks.run_batch):

- the next ids are claimed in one statement (store.claim_many), a chunk of
  decisions.claim_chunk(...) ids: 1 at first (in a process) and after a slow job, doubling while
  jobs run fast, at most decisions.BATCH_CHUNK_CAP (carried from one message to the next),
  so that a job that turns out slow holds few ids claimed and not started. Those are kept
  leased by the heartbeat until they run, and handed back (store.release_claimed) with the
  message's rest when it gives it back (decisions.gives_back_rest); an id claimed ahead is one with an attempt to spare (a crash
  before it starts costs it one, as a reaped run);
- the successes that nothing follows wait in a group (jobs.engine.grouped) and are committed
  with the next chunk's claim, in one round trip and one transaction; alone before a job of a
  type not known to be fast in this process starts, once they have waited
  decisions.BATCH_PENDING_SECONDS, and before the task returns (decisions.keeps_outcomes_pending);
- an id the chunk did not claim (a type with limits, a paused queue, a row locked or ended, a
  database away) takes the one-job path (`fallback`: jobs.tasks.claim_and_run), the group
  committed first.

A chain's step, a failure, an atomic type and a run with an on_finish hook or a concurrency slot
end through the runner's own path, committed before the next job starts.
"""
from __future__ import annotations

import logging
import time
from collections import deque
from typing import Callable

from django.conf import settings

from jobs.engine import decisions, grouped, publish, registry, runner, store, tracing
from jobs.engine.context import Context

log = logging.getLogger("conveyor.tasks")

#: How long the last run of each job type took in this process (seconds): what says a type is fast.
LAST_RUN: dict[str, float] = {}
#: The last chunk claimed in this process and how long its last job ran: a message starts from
#: there (a process running short jobs claims a small message's ids at once), not from 1.
CARRIED: list = [0, None]


def run(ids: list[int], worker: str, fallback: Callable[[int], str]) -> list[str]:
    """Run a message's ids in order; return their outcomes, one per id ("given back" for the rest given back)."""
    started, hold = time.monotonic(), settings.CONVEYOR["BATCH_HOLD_SECONDS"]
    fast, bound = settings.CONVEYOR["BATCH_FAST_SECONDS"], settings.CONVEYOR["BATCH_PENDING_SECONDS"]
    lease, limited = runner.lease_seconds(), registry.limited()
    outcomes: list[str] = []
    slots: deque[tuple[int, store.Claimed | None]] = deque()
    group = grouped.Group()
    place: dict[int, int] = {}  # job id -> its index in outcomes

    def changed(job_id: int, status: str) -> None:
        index = place.get(job_id)
        if index is not None:
            before = outcomes[index]
            outcomes[index] = runner.Outcome(status, getattr(before, "attempt", None), getattr(before, "max_attempts", None))

    group.on_changed = changed
    taken, (chunk, last_run) = 0, CARRIED  # ids[:taken] are in slots or done
    claim_started = 0
    try:
        with grouped.collecting(group):
            while taken < len(ids) or slots:
                left = len(ids) - taken + len(slots)
                if outcomes and decisions.gives_back_rest(time.monotonic() - started, left, hold):
                    if _give_back(ids[taken:], slots, group, started):
                        # One outcome per id, as the monitors read them (jobs.interfaces.monitoring).
                        return outcomes + [runner.Outcome("given back")] * (len(ids) - len(outcomes))
                    taken = len(ids)  # not published (Redis away): run them here, one by one
                if not slots:
                    chunk = decisions.claim_chunk(chunk, last_run, len(ids) - taken, fast=fast)
                    chunk_ids = ids[taken:taken + chunk]
                    taken += len(chunk_ids)
                    claim_started = tracing.now_ns() if tracing.on else 0
                    claimed = {c.id: c for c in group.flush_and_claim(chunk_ids, worker, lease, limited)}
                    for job_id in chunk_ids:
                        one = claimed.pop(job_id, None)  # an id twice in a message runs once
                        slots.append((job_id, one))
                        if one is not None:
                            runner.heartbeat.track(_placeholder(one))  # leased until it runs
                job_id, one = slots.popleft()
                if one is None:  # not claimed by the chunk: the one-job path, the group committed first
                    group.flush()
                    outcomes.append(fallback(job_id))
                    last_run = None
                    continue
                if not decisions.keeps_outcomes_pending(len(group), group.age(), LAST_RUN.get(one.type), bound=bound, fast=fast):
                    group.flush()
                runner.heartbeat.untrack(_placeholder(one))  # the run tracks its own context
                begun = time.monotonic()
                place[job_id] = len(outcomes)
                # Traced: the chunk's claim is its first job's span; the others' claim took no time of theirs.
                started_ns, claim_started = claim_started or (tracing.now_ns() if tracing.on else 0), 0
                outcomes.append(runner.run_claimed(one, worker, claim_started=started_ns))
                last_run = LAST_RUN[one.type] = time.monotonic() - begun
            group.flush()
    finally:
        if len(group):  # an error ended the message early: what ran is recorded if it can be
            try:
                group.flush()
            except Exception as exc:  # their leases lapse: the reaper runs them again
                log.warning("recording %d grouped outcome(s) failed: %s", len(group), exc)
        _release_quietly(slots)
        CARRIED[:] = [chunk, last_run]
    return outcomes


def _placeholder(claimed: store.Claimed) -> Context:
    """What the heartbeat needs to extend a claimed, not yet started run's lease (the run's own
    context replaces it under the same key when it starts)."""
    return Context(job_id=claimed.id, type=claimed.type, attempt=claimed.attempt, max_attempts=claimed.max_attempts,
                   chain_id=claimed.chain_id, chain_index=claimed.chain_index, parent_id=claimed.parent_id,
                   idempotency_key="")


def _give_back(rest: list[int], slots: deque[tuple[int, store.Claimed | None]], group: grouped.Group, started: float) -> bool:
    """Give the message's ids not started back to their queue as new messages: the claimed ones
    released, the others marked published. False (Redis away): the slots are left unclaimed,
    for the caller to run one by one."""
    group.flush()
    claimed = [(one.id, one.attempt) for _, one in slots if one is not None]
    released = store.release_claimed(claimed)
    for _, one in slots:
        if one is not None:
            runner.heartbeat.untrack(_placeholder(one))
    unclaimed = [job_id for job_id, one in slots if one is None] + rest
    order = {job_id: i for i, (job_id, _) in enumerate(slots)}
    order.update({job_id: len(order) + i for i, job_id in enumerate(rest)})
    messages = sorted(released + store.give_back(unclaimed), key=lambda m: order[m.job_id])
    if publish.publish(messages) == len(messages):
        log.info("gave %d job(s) of this message back to their queue after %.2fs", len(messages), time.monotonic() - started)
        # A claim not released (its cancel was asked) is left to its lease: the reaper ends it cancelled.
        slots.clear()
        return True
    unstarted = [job_id for job_id, _ in slots] + rest  # released or never claimed: claimed again one by one
    slots.clear()
    slots.extend((job_id, None) for job_id in unstarted)
    return False


def _release_quietly(slots: deque[tuple[int, store.Claimed | None]]) -> None:
    """A message that ended early (an error) hands back what it claimed and did not start."""
    claimed = [one for _, one in slots if one is not None]
    if not claimed:
        return
    for one in claimed:
        runner.heartbeat.untrack(_placeholder(one))
    try:
        store.release_claimed([(one.id, one.attempt) for one in claimed])
    except Exception as exc:  # their leases lapse instead: the reaper runs them again
        log.warning("handing back %d claimed job(s) failed: %s", len(claimed), exc)
