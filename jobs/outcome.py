"""What an ended job does to the rest: its chain ends the same way, and its type's hook runs.

Called inside the transaction that records the outcome, by the runner (a failed last attempt),
recovery (a reaped or handed-back row) and control (a cancel), so the chain and the event bus
never see a job end without its consequences.
"""
from __future__ import annotations

from typing import Callable

from jobs import chains, registry, store
from jobs.models import ChainStatus, Status


def settle(ended: store.Ended) -> None:
    """A job that ended without success (dead, cancelled) ends its chain the same way, and its
    type's on_finish hook runs (event deliveries: the next one of the key is released).

    A group's member ends its chain only when its group fails on failure; in a group that
    collects failures its end counts toward the fan-in instead, under the chain's lock, and the
    last member's end releases the next step (chains.member_ended)."""
    if ended.status not in (Status.DEAD, Status.CANCELLED):
        return
    if ended.chain_id is not None:
        locked = (
            store.chain_step(ended.chain_id, ended.chain_index, lock=True, next_step=False)
            if ended.member is not None and ended.chain_index is not None else None
        )
        if locked is not None and locked.on_failure == "collect":
            chains.member_ended(ended.chain_id, ended.chain_index, locked.status, ended.id)
        else:
            store.finish_chain(ended.chain_id, ChainStatus.FAILED if ended.status == Status.DEAD else ChainStatus.CANCELLED)
    hook = on_finish(ended.type)
    if hook:
        hook(ended.id, ended.status)


def on_finish(type_name: str) -> Callable[[int, str], None] | None:
    try:
        return registry.get(type_name).on_finish
    except registry.InvalidJob:  # a row of a type removed from the code
        return None
