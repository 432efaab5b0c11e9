"""Why is this job waiting? The facts about a job that has not started, gathered from its row
(store.why_row: the row, PostgreSQL's now, its queue's and type's pauses), its queue (store.ahead)
its limits (store.holders) and the workers' heartbeats (jobs.engine.consumers); the answer is
decisions.why's, a pure function of them.

Every read is an index probe or a bounded count: asking costs a few milliseconds, whatever the
size of the table. A delivery waiting for its event key's lane has no job yet: the event bus asks
with the lane's holder as `lane` (subscribers.why).
"""
from __future__ import annotations

from typing import Any, Callable

from django.conf import settings

from jobs.engine import consumers, decisions, limits, registry, store
from jobs.engine.decisions import WaitFacts, Why


class NoSuchJob(LookupError):
    pass


def facts(job_id: int) -> WaitFacts | None:
    """What is known of job `job_id` (None: no such job)."""
    row = store.why_row(job_id)
    if row is None:
        return None
    base = WaitFacts(
        status=row.status, now=row.now, run_after=row.run_after, queue=row.queue, type=row.type,
        attempt=row.attempt, held=row.held, published=row.published_at is not None,
        pauses=tuple(row.pauses), limit_key=row.limit_key, sweep_seconds=limits.SWEEP_SECONDS,
        relay_seconds=float(settings.CONVEYOR["RECOVERY_INTERVAL"]),
    )
    if row.status not in ("pending", "failed") or row.cancel_requested:
        return base._replace(status=row.status if not row.cancel_requested else "cancelled")
    extra: dict[str, Any] = {"consumers": consumers.per_queue([row.queue])[row.queue]}
    if row.held in ("concurrency", "key"):
        try:
            jt = registry.get(row.type)
            slots = jt.concurrency_per_key if row.held == "key" else jt.concurrency
        except registry.InvalidJob:
            slots = None
        key = (row.limit_key or "") if row.held == "key" else None
        # Every holder up to one past the slots: fewer holders than slots is a leaked slot.
        extra.update(holders=tuple(store.holders(row.type, key, limit=max(50, (slots or 0) + 1))), slots=slots)
    elif row.published_at is not None and row.held == "" and row.run_after <= row.now and not row.pauses:
        extra["ahead"] = store.ahead(job_id, row.queue, row.priority, row.published_at)
    return base._replace(**extra)


def why(job_id: int) -> Why | None:
    """Why job `job_id` has not started (None: it is running or ended). Raises NoSuchJob."""
    found = facts(job_id)
    if found is None:
        raise NoSuchJob(f"no job {job_id}")
    return decisions.why(found)


#: Other things that wait and have no job yet, by name (`delivery`: the event bus registers it,
#: subscribers/apps.py): fn(id) -> (status, Why or None), raising NoSuchJob.
SOURCES: dict[str, Callable[[int], tuple[str, Why | None]]] = {}


def add_source(kind: str, explain: Callable[[int], tuple[str, Why | None]]) -> None:
    SOURCES[kind] = explain


def explain(kind: str, row_id: int) -> tuple[str, Why | None]:
    """(its status, why it waits) for a job (`kind` "job") or a registered source's row."""
    if kind == "job":
        found = facts(row_id)
        if found is None:
            raise NoSuchJob(f"no job {row_id}")
        return found.status, decisions.why(found)
    if kind not in SOURCES:
        raise NoSuchJob(f"{kind!r} is not something that waits (job, {', '.join(SOURCES) or 'nothing else'})")
    return SOURCES[kind](row_id)


def lane_why(queue: str, type_name: str, lane: dict[str, Any]) -> Why:
    """Why a delivery that has no job yet waits: its key's lane is held by `lane` ({"delivery",
    "job", "key", "subscriber"}); a pause of its queue or type comes first, a queue without a
    consumer is an alarm."""
    now, pauses = store.pauses_of(queue, type_name)
    return decisions.why(WaitFacts(status="waiting", now=now, run_after=now, queue=queue, type=type_name,
                                   consumers=consumers.per_queue([queue])[queue], lane=lane, pauses=tuple(pauses)))


def queues() -> list[dict[str, Any]]:
    """Each queue with jobs due and waiting for a worker, or with a worker: how many wait, how long
    the oldest has waited, how many workers consume it (None: unknown) and whether that is an alarm
    (waiting jobs, no consumer); and how many jobs a pause (of the queue or of a type in it) holds
    in the database (`held_by_pause`: not counted as waiting, no worker may take them)."""
    waiting = store.waiting_queues()
    held = store.held_by_pause()
    names = sorted(set(registry.queues()) | set(waiting) | set(held))
    counts = consumers.per_queue(names)
    rows = []
    for name in names:
        jobs, oldest = waiting.get(name, (0, None))
        rows.append({"queue": name, "waiting": jobs, "oldest_waiting_seconds": oldest, "consumers": counts[name],
                     "alarm": jobs > 0 and counts[name] == 0, "held_by_pause": held.get(name, 0)})
    return rows
