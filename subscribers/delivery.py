"""A subscriber's deliveries as jobs: the delivery job type's handler, and per-key order.

A keyed delivery waits (`released_at` is null) while the same subscriber has an unfinished
delivery of the same key; when that one ends, its outcome releases the next, in the transaction
that records it (`release_next`, the delivery job type's on_finish). A transaction-scoped
advisory lock on (subscriber, key) makes an emitter's check and a completion's release see each
other.

This module knows subscribers by name only, so the registry can import it to declare the job
types without an import cycle.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from django.db import connection

from jobs import Context, Step, new_job, submit
from jobs.creation import platform_key
from jobs.models import FINISHED, Job
from subscribers.models import Delivery, Event

JOB_PREFIX = "deliver:"


@dataclass(frozen=True)
class EventData:
    """What a subscriber's handler receives."""

    id: int
    name: str
    data: dict[str, Any]
    key: str | None


def job_type(subscriber: str) -> str:
    """The job type that carries a subscriber's deliveries (`deliver:<name>`)."""
    return JOB_PREFIX + subscriber


def delivery_job(event_id: int, subscriber: str, replay: int = 0) -> Job:
    """An unsaved job row for one delivery; save it with jobs.submit."""
    key = platform_key("delivery", event_id, subscriber) + (f":replay-{replay}" if replay else "")
    return new_job(Step(job_type(subscriber), {"event": event_id}, idempotency_key=key))


def lock_key(subscriber: str, key: str) -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(hashtext(%s), hashtext(%s))", [subscriber, key])


def key_busy(subscriber: str, key: str) -> bool:
    """Does the subscriber still have an unfinished (or waiting) delivery of this key?"""
    lock_key(subscriber, key)
    latest = (
        Delivery.objects.filter(subscriber=subscriber, key=key)
        .order_by("-id")
        .values_list("released_at", "job_id", "job__status")
        .first()
    )
    if latest is None:
        return False
    released_at, job_id, status = latest
    if released_at is None:
        return True  # it waits itself: the new one queues behind it
    # A released delivery's job deleted by retention had finished long ago.
    return job_id is not None and status not in FINISHED


def release_next(job_id: int, status: str) -> None:
    """on_finish of every delivery job: start the next waiting delivery of the same key."""
    finished = Delivery.objects.filter(job_id=job_id).values_list("subscriber", "key").first()
    if finished is None or finished[1] is None:
        return
    subscriber, key = finished
    lock_key(subscriber, key)
    waiting = Delivery.objects.filter(subscriber=subscriber, key=key, released_at__isnull=True).order_by("id").first()
    if waiting is not None:
        (waiting.job,) = submit([delivery_job(waiting.event_id, subscriber)])
        waiting.released_at = waiting.job.created_at
        waiting.save(update_fields=["job", "released_at"])


def handler(subscriber: Callable[..., Any], name: str) -> Callable[[Context, dict[str, Any]], Any]:
    """The job handler of a subscriber's deliveries: load the event, call the subscriber."""

    def deliver(ctx: Context, data: dict[str, Any]) -> Any:
        event = Event.objects.get(pk=data["event"])
        return subscriber(ctx, EventData(event.pk, event.name, event.data, event.key))

    deliver.__qualname__ = deliver.__name__ = f"deliver_{name}"
    deliver.__module__ = subscriber.__module__
    return deliver
