"""A chain step's next message published before its outcome's statement has answered (issue 28).

The one-statement success of a chain's step (jobs.engine.continuing) publishes the next step's
message early (jobs.engine.early: before the COMMIT's answer), but only after the statement's
answer, which gives the new row's id. Here the id is known before: the step's claim took it from
the jobs' sequence (store._RESERVED: "<id> <type>", the plan's next step's type), so the runner
sends the statement (with the transaction's BEGIN, pipelined) and publishes the next step's
message while PostgreSQL runs it (store.succeed_continuing's `meanwhile`): the message's trip
to the next worker overlaps the statement's round trip as well as the COMMIT's.

What keeps it safe, the statement's lock not yet taken when the message may arrive:
- the statement inserts the next step with the reserved id only when its planned type is the one
  reserved for, and holds that id's early lock to its transaction's end whatever it decides; a
  fenced-out success (the lease lost) writes nothing and takes no lock;
- the message says which outcome it waits for (AFTER_HEADER: the step's id and attempt); its
  claim (store.claim_after_outcome) waits on the id's early lock, then looks, in one round trip,
  whether that step still runs that attempt (in a snapshot taken before the claim's);
- claimed: it runs, as any early message's job;
- nothing to claim and the step still running that attempt: the outcome has not committed (its
  statement may not even have begun, the lock not yet taken): the claim is tried again, a few
  times within PATIENCE_MS, then the message is dropped (a commit later than that leaves a row
  the relay publishes again when stale: late, never lost; a worker killed before its commit
  leaves no row: its step runs again, and that run's success reserves another id);
- nothing to claim and the step no longer running that attempt: its outcome committed without
  this row (a cancel asked meanwhile, the plan changed) or was fenced out: dropped, nothing runs.

Exactly once holds as before: one claim per row (SKIP LOCKED, runnable) and outcomes fenced by
their attempt; an outcome written again (runner._record) reuses the same reserved id, and its
duplicate message claims nothing more. The id is used only when the step's run was short
(decisions.reserved_id_usable): ids stay close to their rows' creation order.
"""
from __future__ import annotations

import time
from typing import Any, Callable

from jobs.engine import decisions, early, handoff, publish, registry, store
from jobs.engine.context import Context

#: The message header naming the outcome its row waits for: [step id, attempt].
AFTER_HEADER = "conveyor_after"
#: How long a claim tries again while the outcome it waits for has not committed, at most.
PATIENCE_MS = 200


def message(ctx: Context, reserved: str | None, ran_seconds: float) -> publish.Message | None:
    """The next step's message the claim reserved an id for, if this success may publish it before
    its statement's answer: a reservation, a short run, a declared type on a queue this worker
    does not take itself (such a step is handed off here: jobs.engine.handoff)."""
    if reserved is None or not decisions.reserved_id_usable(ran_seconds):
        return None
    id_text, _, type_name = reserved.partition(" ")
    jt = registry.find(type_name)
    if jt is None or jt.queue in handoff.local_queues(ctx.offer):
        return None
    return publish.Message(int(id_text), jt.queue, jt.priority, jt.name, ctx.chain_id, (ctx.chain_index or 0) + 1)


def send(next_message: publish.Message, ctx: Context) -> Callable[[], int]:
    """The publish of `next_message`, for store.succeed_continuing to call once its statement is sent."""
    headers: dict[str, object] = {early.EARLY_HEADER: 1, AFTER_HEADER: [ctx.job_id, ctx.attempt]}
    return lambda: publish.publish([next_message], headers=headers)


def after(request: Any) -> tuple[int, int] | None:
    """The outcome a message's claim must wait for (AFTER_HEADER), from Celery's request; None: none."""
    value = getattr(request, AFTER_HEADER, None)
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        return None
    return int(value[0]), int(value[1])


def claim(job_id: int, worker: str, lease_seconds: float, limited: list[str], waits_for: tuple[int, int]) -> store.Claimed | None:
    """Claim `job_id` once the outcome `waits_for` (step id, attempt) has committed, trying again
    while it has not (PATIENCE_MS at most); None: nothing to claim."""
    deadline = time.monotonic() + PATIENCE_MS / 1000
    # Tried again at once first: the outcome's statement, sent before the message, has most often
    # begun by then (it may have queued behind this claim's wait: the lock is then held), and the
    # claim waits on its lock; then with pauses, for an outcome that does not come (a crash).
    pause = 0.0
    while True:
        claimed, pending = store.claim_after_outcome(job_id, worker, lease_seconds, limited, early.AWAIT_MS, waits_for)
        if claimed is not None or not pending or time.monotonic() + pause > deadline:
            return claimed
        if pause:
            time.sleep(pause)
        pause = min(pause * 2, 0.05) if pause else 0.0005
