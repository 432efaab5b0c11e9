"""A chain step's success and its next step in one statement: the outcome's one round trip.

In a run's success (runner._succeed_in), the general path is the success's statement (which locks
the chain), then `ending.ended` -> chains.advance -> creation.submit: the next step's row built in
Python and inserted in a round trip of its own, before the COMMIT is sent and the message
published (jobs.engine.early). Here, for the success of a chain's one-job step whose outcome does
nothing but continue its chain (no continuation, no on_finish hook, no limit slot, no group
member, no trace to write), the success, the chain's lock and the next step's insert, with its
early lock, are ONE statement (store.SUCCEED_CONTINUING_SQL), sent with the transaction's BEGIN:
one round trip before the publish instead of two, and none of the chain's Python path.

It inserts what the general path would have: the plan's next step when it is one job of a
declared type, published early when its queue is one this worker does not take itself, or, when
it is (the local handoff, jobs.engine.handoff: decisions.hands_off_here), claimed for this worker
in the same statement, with no message, and run next by the runner after the commit (`ctx.handed`):
the success, the next row and its claim in one round trip, where the general path took three
(succeed, insert, claim) and its Python. A step on such a queue whose type has limits or whose
queue or type is paused, and everything else (a group, the end of the plan, a cancelled row, a
chain no longer running, a type an adapter declares lazily), is left to the general path: the
statement records the success alone and returns the row with the plan, and the general path goes
on in the same transaction from there: no round trip more than before. A fenced-out success (its
lease lost) writes and inserts nothing, as store.succeed.

The next row's queue, priority and attempts are its type's (the registry's table, written into
the statement once per change of the registry), its input the plan's, validated when the chain
was planned (the general path validates it again: the same input, as the handler's parse runs
on it anyway).
"""
from __future__ import annotations

from typing import Sequence

from jobs.engine import decisions, early, handoff, registry, store, tracing
from jobs.engine.context import Context


def applies(ctx: Context, hook: bool, holds_slots: bool) -> bool:
    """Whether this success may take `succeed` (decisions.continues_in_one_statement), with a
    statement to take (a type declared)."""
    return decisions.continues_in_one_statement(
        in_chain=ctx.chain_id is not None, member=ctx.member is not None, continuations=bool(ctx.continuations),
        hook=hook, holds_slots=holds_slots, traced=tracing.on, publishing_early=early.pending() is not None,
    ) and _statement() is not None


def succeed(ctx: Context, output_json: str) -> tuple[store.Succeeded, bool] | None:
    """Where `applies`: the success and, where it is one job the general path would publish, the
    chain's next step, in one statement, its message collected for early.send. (The row as
    store.succeed returns it, whether the next step was inserted: then nothing is left to do);
    None: the lease was lost, nothing written."""
    assert ctx.chain_id is not None
    offer = ctx.offer
    continued = store.succeed_continuing(
        _statement() or "", ctx.job_id, ctx.attempt, output_json, ctx.chain_id, ctx.chain_index or 0,
        sorted(handoff.local_queues(offer)), worker=offer.worker if offer else "", lease_seconds=offer.lease_seconds if offer else 0.0,
    )
    if continued is None:
        return None
    done, message, claimed = continued
    if message is not None:
        collected = early.pending()
        assert collected is not None  # applies() checked it
        collected.append(message)
    ctx.handed = claimed  # run next by the runner once this transaction has committed
    return done, message is not None or claimed is not None


_statements: tuple[int, str | None] = (-1, None)


def _statement() -> str | None:
    """The statement with the registry's types written in, made once per change of the registry
    (None: no type declared)."""
    global _statements
    version, sql = _statements
    if version != registry.version():
        version = registry.version()
        types: Sequence[tuple[str, str, str, int, int, bool]] = [
            (key, jt.name, jt.queue, jt.priority, jt.retries + 1, jt.limited)
            for jt in registry.all_types() for key in (jt.name, *jt.aliases)
        ]
        sql = store.succeed_continuing_sql(types) if types else None
        _statements = (version, sql)
    return sql
