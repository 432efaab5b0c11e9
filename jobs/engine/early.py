"""Early publish: a chain's next step's message goes out while its outcome's COMMIT is in flight.

The commit of a success that inserts the chain's next step waits for the WAL flush (it must: the
outcome is durable). Sent after it, the next step's message starts its trip (Redis, the next
worker's main process, its pool process, the claim) only once the flush is done. The runner
sends the COMMIT without waiting (store.send_commit), publishes, then reads the COMMIT's result:
the flush, the publish and the message's trip overlap (issue 28: the handoff across workers).

What keeps a message that arrives before its row is visible from being lost:
- the insert holds each inserted row's early lock, a two-key advisory lock
  (`decisions.early_lock_key`, store.INSERT_EARLY_SQL), until its transaction ends;
- the message carries the header EARLY_HEADER; its claim first waits for that lock, then claims
  (store.claim_after_commit: both statements in one pipelined round trip; the claim's snapshot,
  taken when it starts, sees the commit the wait ended on; jobs.engine.runner.execute);
- committed: the claim takes the row, as it would have after a publish after commit;
- rolled back (the commit failed, the worker died before it): there is no row, the message
  claims nothing and is dropped. The step whose outcome it was is still running in the table
  (its outcome is retried, or its lease lapses and it runs again), and its next step is inserted
  and published again by that outcome;
- a wait longer than AWAIT_MS (a transaction stuck before its COMMIT): the message is dropped;
  the row, once committed, is published again by the relay when stale (`published_at` is set),
  as for any message lost between commit and publish.

Exactly once holds as before: a row is claimed by one claim (SKIP LOCKED, runnable), whatever
the number of messages naming it, and an outcome is fenced by its attempt.

Only the non-atomic success of a run publishes early (runner._succeed): what its transaction
inserts (the chain's next step, a continuation, a job its on_finish hook enqueues) goes out once
its COMMIT is sent, before its result is read; a COMMIT that failed raises there, as it would
have at the end of the transaction block. Everything else publishes after commit, as before.

One round trip before the publish (jobs.engine.continuing): the success of a chain's one-job step
whose outcome has nothing else to do (no continuation, hook, slot, group or trace) records the
success, locks the chain and inserts the next step (with its early lock) in ONE statement
(store.SUCCEED_CONTINUING_SQL, sent with the transaction's BEGIN), instead of the success's
statement, then the chain's Python path and the insert's own round trip. It inserts only what
that path would have (a plan's next step of one job, on a queue this worker does not take
itself); otherwise it has recorded the success alone and the general path goes on in the same
transaction, with no round trip more than before. A fenced-out success (the lease lost) writes
nothing and inserts nothing.
"""
from __future__ import annotations

import contextvars
from contextlib import contextmanager
from typing import Iterator

from jobs.engine import publish

#: The message header that says "sent before its row's transaction committed".
EARLY_HEADER = "conveyor_early"
#: How long a claim waits for the transaction that inserted its row, at most.
AWAIT_MS = 5_000

_pending: contextvars.ContextVar[list[publish.Message] | None] = contextvars.ContextVar("conveyor_early", default=None)


@contextmanager
def collecting() -> Iterator[list[publish.Message]]:
    """Around an outcome's transaction body: the messages of the rows inserted meanwhile are
    collected here (`pending`) instead of being published after commit."""
    messages: list[publish.Message] = []
    token = _pending.set(messages)
    try:
        yield messages
    finally:
        _pending.reset(token)


def pending() -> list[publish.Message] | None:
    """The list collecting early messages, or None outside `collecting` (publish after commit)."""
    return _pending.get()


def send(messages: list[publish.Message]) -> int:
    """Publish the collected messages, their transaction's COMMIT sent and not yet answered."""
    return publish.publish(messages, headers={EARLY_HEADER: 1}) if messages else 0
