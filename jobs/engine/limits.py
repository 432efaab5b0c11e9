"""Global limits per job type, over every worker of every host: a rate, a concurrency, and a
concurrency per key (docs/architecture.md, "Limits").

Declared on the type (`@job_type(..., rate_limit="20/s", concurrency=3, concurrency_per_key=1)`)
and, for the per-key limit, on the job (`enqueue(..., limit_key="customer-7")`). Celery's own
`rate_limit` counts per worker process; these count in PostgreSQL, which every worker shares.

A claim of a limited type is one transaction on the `claims` connection (`claim`): the row is
locked, then its scopes (an advisory lock per type, then per type and key), the running rows of
each scope are counted, and the row is either

- claimed (it runs now);
- held for its key (`held = 'key'`) or its type (`'concurrency'`) when a scope is full: the
  message is acked, the row waits in the table with no message (published_at NULL, so the relay
  leaves it alone), until a running job of the scope ends: that end's transaction releases the
  scope's oldest waiting row (`release`), published after commit, like the event bus's lanes; or
- booked on the type's next rate slot (`held = 'rate'`, run_after = the slot) when the rate's
  next free slot is in the future: the relay publishes it when the slot comes, and its claim
  then starts it on the slot it has (unless it comes so late that it would start in a burst
  with others: it is booked again, `_rate_slot`).

A running job ended by its worker's death frees its slot when recovery reaps or hands it back
(`release` runs there too). A release that never came (its job of code without limits, a
released row cancelled before its claim) is made up by `sweep`, which recovery runs every
SWEEP_SECONDS: a full scope wakes nobody, a scope with free slots releases as many rows.
"""
from __future__ import annotations

import datetime as dt
import logging
import time

from django.conf import settings
from django.db import transaction

from jobs.engine import decisions, registry, store
from jobs.models import Held
from jobs.engine.publish import publish_on_commit

log = logging.getLogger("conveyor.limits")

#: How often recovery looks for scopes whose waiting rows nobody will release (seconds).
SWEEP_SECONDS = 5.0
#: At most this many rows are released at once by the sweep of a scope that has no limit any more.
SWEEP_BATCH = 100


def _type(name: str) -> registry.JobType | None:
    try:
        return registry.get(name)
    except registry.InvalidJob:  # a row of a type removed from the code
        return None


def claim(job_id: int, worker: str, lease_seconds: float) -> store.Claimed | str | None:
    """Claim a job of a limited type: the claimed row, the reason it is held (`Held`: it waits
    in the table, its message may be acked), or None (locked, finished, cancelled, not yet due)."""
    with transaction.atomic(using=store.CLAIMS):
        row = store.lock_limited(job_id)
        if row is None:
            return None
        jt = _type(row.type)
        if jt is None or not jt.limited:  # no limits in this code: claimed as the fast path would
            return store.claim_limited(job_id, worker, lease_seconds)
        key = (row.limit_key or None) if jt.concurrency_per_key is not None else None
        # Scopes in one order everywhere (type, then key): no two transactions wait on each other.
        if jt.concurrency is not None:
            store.lock_scope(row.type, alias=store.CLAIMS)
        if key is not None:
            store.lock_scope(row.type, key, alias=store.CLAIMS)
        # Counted after the locks, in statements of their own: every end committed before is seen.
        if key is not None and store.running(row.type, key) >= jt.concurrency_per_key:
            store.hold(job_id, Held.KEY)
            return Held.KEY.value
        if jt.concurrency is not None and store.running(row.type) >= jt.concurrency:
            store.hold(job_id, Held.CONCURRENCY)
            return Held.CONCURRENCY.value
        if jt.rate_limit is not None:
            slot = _rate_slot(row, jt.rate_limit)
            if slot is not None:
                store.hold(job_id, Held.RATE, run_after=slot)
                return Held.RATE.value
        return store.claim_limited(job_id, worker, lease_seconds)


def burst(rate: registry.Rate) -> float:
    """How far (seconds) starts may run ahead of the rate: one interval, or the relay's period,
    which publishes the booked rows that came due since its last pass together."""
    return max(rate.interval, float(settings.CONVEYOR["RECOVERY_INTERVAL"]))


def _rate_slot(row: store.LimitedRow, rate: registry.Rate) -> dt.datetime | None:
    """Under the type's rate clocks (locked until commit): None to start now, or the slot to book
    (the arithmetic: decisions.rate_slot, two GCRA clocks)."""
    booked, started, now = store.rate_clocks(row.type)
    decided = decisions.rate_slot(booked, started, now, rate.interval, burst(rate), row.held == Held.RATE)
    store.set_rate_clocks(row.type, decided.booked, decided.started)
    return decided.slot


_UNREAD = object()  # release's `key` when the caller has not read it


def release(job_id: int, type_name: str, key: object = _UNREAD) -> None:
    """Inside the transaction that ends a running job (its outcome, its reaping, its hand-back):
    release the oldest row waiting for the slot it held, in its key and in its type; their
    messages go out after commit. `key`: the job's limit_key when the caller has read it."""
    jt = _type(type_name)
    if jt is None or not jt.holds_slots:
        return
    if jt.concurrency_per_key is None:
        key = None
    elif key is _UNREAD:
        key = store.limit_key(job_id)
    key = key or None
    if jt.concurrency is not None:
        store.lock_scope(type_name)
    if key is not None:
        store.lock_scope(type_name, key)
    messages = store.release_waiting(type_name, key, 1) if key is not None else []
    if jt.concurrency is not None:
        messages += store.release_waiting(type_name, None, 1)
    publish_on_commit(messages)


def released(rows: list[store.Ended]) -> None:
    """`release` for rows that were running and were just ended or returned to pending (a
    hand-back's), in the order of their scopes, (type, key): two transactions releasing the same
    scopes take their locks in one order and never wait on each other."""
    limited = [(row, store.limit_key(row.id) or "") for row in rows if (jt := _type(row.type)) is not None and jt.holds_slots]
    for row, key in sorted(limited, key=lambda pair: (pair[0].type, pair[1], pair[0].id)):
        release(row.id, row.type, key)


def sweep(limit: int = 100) -> int:
    """Release waiting rows of scopes with free slots that no end will release; return how many.

    Each scope in its own transaction under its lock. A scope whose type no longer declares the
    limit it waits for (or is gone from the code) releases its rows SWEEP_BATCH at a time."""
    count = 0
    for type_name, key in store.waiting_scopes(limit):
        jt = _type(type_name)
        cap = (jt.concurrency if key is None else jt.concurrency_per_key) if jt is not None else None
        with transaction.atomic():
            store.lock_scope(type_name, key)
            free = SWEEP_BATCH if cap is None else cap - store.running(type_name, key, alias="default")
            if free > 0:
                messages = store.release_waiting(type_name, key, free)
                publish_on_commit(messages)
                count += len(messages)
    if count:
        log.warning("limits: released %d waiting job(s) that no end had released", count)
    return count


_last_sweep = 0.0


def sweep_due() -> int:
    """`sweep`, at most every SWEEP_SECONDS in this process (recovery calls it every pass)."""
    global _last_sweep
    now = time.monotonic()
    if now - _last_sweep < SWEEP_SECONDS:
        return 0
    _last_sweep = now
    return sweep()


def reset_sweep() -> None:
    """Let the next pass sweep again (after a failed sweep)."""
    global _last_sweep
    _last_sweep = 0.0
