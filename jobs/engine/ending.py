"""Every end of a job passes here: `ended(...)` does what follows an end, in one order.

The callers write the row first, through the job store, then call `ended` in the same
transaction ("store.X, then ended(...)"):

| how (`How`)    | caller                          | the row (store)          | statuses it may leave      |
|----------------|---------------------------------|--------------------------|----------------------------|
| RAN, success   | runner._succeed (or _atomic)    | store.succeed (*)        | succeeded, cancelled       |
| RAN, failure   | runner._fail (TimeLimit too)    | store.fail               | failed (a retry left), dead (incl. Permanent), cancelled |
| REAPED         | recovery.reap                   | store.reap               | pending, dead, cancelled   |
| HANDED_BACK    | recovery.hand_back              | store.hand_back          | pending, dead (a crash on its last attempt), cancelled |
| CANCELLED      | control.cancel (an operator's)  | store.cancel             | cancelled (a waiting job)  |

(*) or store.succeed_continuing (jobs.engine.continuing), which inserts the chain's next step in
the same statement: then `ended` is called without `success` (the chain's step is done).

The order, for each end:

1. the row, written by the caller (its NOTIFY for the waiters is in the same statement);
2. the chain or group (`_chain`): a success releases the next step or ends the chain, or counts
   toward its group's fan-in (`chains.member_ended`); a dead or cancelled job ends its chain, or
   counts toward its group's fan-in when the group collects failures. The chain's row is locked
   here (a success's statement locked it already);
3. the limit slots (`limits.released`): a job that was running frees its concurrency slot and
   releases the oldest row waiting for it. After the chain: every path takes the chain's row
   lock before a scope's advisory lock, so two ends never wait on each other;
4. the type's `on_finish` hook, exactly once per final end (succeeded, dead, cancelled), never for
   an attempt that will run again;
5. the waiters: nothing to do here, the row's and the chain's statements notified them
   (`conveyor_job_ended`, `conveyor_chain_ended`), delivered at commit;
6. the metrics, after commit (`transaction.on_commit`): reaped rows and ends outside a run are
   counted here (`telemetry.reaped`, `telemetry.ended`); a run's own (run time, queue wait) are
   counted by `runner.execute` when its outcome has committed (`telemetry.Run.done`).

What each end does to a chain is decided by pure functions (jobs.engine.decisions), unit-tested
without a server.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from django.db import transaction

from jobs.engine import chains, decisions, limits, registry, store, telemetry
from jobs.models import ChainStatus, Status


class How(str, enum.Enum):
    """Who ended the job (see the table in the module's docstring)."""

    RAN = "ran"
    REAPED = "reaped"
    HANDED_BACK = "handed back"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class Success:
    """What a run's success hands on to its chain (the runner's `Context` and the success's row)."""

    done: store.Succeeded
    chain_index: int | None
    member: int | None
    #: Steps the handler continued with (ctx.continue_with, ctx.fan_out): spliced after its step.
    continuations: list[dict[str, Any]] = field(default_factory=list)


def ended(rows: Sequence[store.Ended], how: How, *, success: Success | None = None, hook: bool = True) -> None:
    """What follows the end of `rows`, just written by the store in the caller's transaction.

    `success`: the run succeeded (rows is its one row): its chain continues. `hook`: False when
    the run knows its type's on_finish has nothing to do after a success (ctx.finish_hook_needed);
    a dead or cancelled end always runs it."""
    for row in rows:
        _chain(row, success)
    if how is not How.CANCELLED:  # a waiting job held no slot
        limits.released(list(rows))
    for row in rows:
        if row.status in (Status.DEAD, Status.CANCELLED) or (row.status == Status.SUCCEEDED and hook):
            finish = on_finish(row.type)
            if finish is not None:
                finish(row.id, row.status)
    metrics = _METRICS.get(how)
    if metrics is not None and rows:
        counted = list(rows)
        transaction.on_commit(lambda: metrics(counted))


_METRICS: dict[How, Callable[[list[store.Ended]], None]] = {
    How.REAPED: telemetry.reaped,
    How.HANDED_BACK: telemetry.ended,
    How.CANCELLED: telemetry.ended,
}


def on_finish(type_name: str) -> Callable[[int, str], None] | None:
    try:
        return registry.get(type_name).on_finish
    except registry.InvalidJob:  # a row of a type removed from the code
        return None


def _chain(row: store.Ended, success: Success | None) -> None:
    """Step 2: what this end does to its chain or group."""
    if success is not None and row.status == Status.SUCCEEDED:
        _continue(row, success)
        return
    if row.chain_id is None or not decisions.ends_chain(row.status):
        return
    if row.member is not None and row.chain_index is not None:
        locked = store.chain_step(row.chain_id, row.chain_index, lock=True, next_step=False)
        if locked is not None and decisions.counts_in_group(locked.on_failure):
            chains.member_ended(row.chain_id, row.chain_index, locked.status, row.id)
            return
    store.finish_chain(row.chain_id, decisions.chain_status_after(row.status))


def _continue(row: store.Ended, success: Success) -> None:
    """A success, inside its transaction: insert the chain's next step, or finish the chain.

    `success.done` carries the chain's plan and status, read under its row lock (none for a lone
    job that continued: it becomes step 0 of a new chain). A group's member releases the next
    step only when it is the group's last to end (chains.member_ended); a handler's
    continuations are spliced into the plan right after its own step."""
    done = success.done
    if row.chain_id is None and not success.continuations:
        return
    if success.member is not None:
        chains.member_ended(row.chain_id, success.chain_index, done.chain_status, row.id)
        return
    if row.chain_id is None:
        steps = [{"type": row.type, "input": done.input}, *success.continuations]
        chain_id, index, status = store.start_chain_from(row.id, steps), 0, ChainStatus.RUNNING
    else:
        chain_id, index, status = row.chain_id, success.chain_index or 0, done.chain_status
        steps = decisions.spliced(done.chain_steps or [], index, success.continuations)
        if success.continuations:
            store.set_chain_steps(chain_id, steps)
    if status != ChainStatus.RUNNING:
        store.finish_chain(chain_id, status)
    else:
        chains.advance(chain_id, index, steps, row.id)
