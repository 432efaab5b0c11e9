"""emit(): an event row and one delivery per subscriber, in the caller's transaction.

Deliveries are jobs, published after commit. A keyed event's delivery to a subscriber waits
while that subscriber still has an unfinished delivery of the same key; the outcome of that one
releases the next, in the transaction that records it. A transaction-scoped advisory lock on
(subscriber, key) makes the emitter's check and the completion's release see each other.
"""
from __future__ import annotations

import re
from typing import Any, Callable

from django.db import connection, transaction

from jobs.api_python import Step, build, publish_due
from jobs.context import Context
from jobs.models import FINISHED, Job
from jobs.registry import InvalidJob
from subscribers import registry
from subscribers.models import Delivery, Event
from subscribers.registry import EventData, Subscriber

EVENT_NAME = re.compile(r"^[a-z0-9][a-z0-9_.\-]{0,199}$")


def emit(name: str, data: dict[str, Any] | None = None, *, key: str | None = None) -> Event:
    """Record an event and one delivery per subscriber of `name`; publish after commit.

    A rolled-back transaction emits nothing. An event with no subscriber is still recorded.
    """
    if not isinstance(name, str) or not EVENT_NAME.match(name):
        raise InvalidJob("bad event name", {"name": "lowercase letters, digits and . _ - (at most 200)"})
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InvalidJob("event data must be a JSON object", {"data": "must be a JSON object"})
    if key is not None and (not isinstance(key, str) or not 0 < len(key) <= 200):
        raise InvalidJob("bad key", {"key": "a string of 1 to 200 characters"})
    with transaction.atomic():
        event = Event.objects.create(name=name, data=data, key=key)
        deliveries = []
        for sub in registry.matching(name):
            delivery = Delivery(event=event, subscriber=sub.name, key=key)
            if key is None or not _key_busy(sub.name, key):
                delivery.job = _delivery_job(event.pk, sub)
                delivery.released_at = delivery.job.created_at
            deliveries.append(delivery)
        Delivery.objects.bulk_create(deliveries)
        # One publish, over one producer connection, for all the deliveries released now.
        publish_due([d.job for d in deliveries if d.job is not None])
    return event


def _lock_key(subscriber: str, key: str) -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(hashtext(%s), hashtext(%s))", [subscriber, key])


def _key_busy(subscriber: str, key: str) -> bool:
    """Does the subscriber still have an unfinished (or waiting) delivery of this key?"""
    _lock_key(subscriber, key)
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


def _delivery_job(event_id: int, sub: Subscriber, replay: int = 0) -> Job:
    """The delivery's job row; the caller publishes it (after commit, with publish_due)."""
    idempotency_key = f"delivery:{event_id}:{sub.name}" + (f":replay-{replay}" if replay else "")
    job = build(Step(sub.job_type, {"event": event_id}, idempotency_key=idempotency_key))
    job.save(force_insert=True)
    return job


def release_next(job_id: int, status: str) -> None:
    """on_finish of every delivery job: start the next waiting delivery of the same key."""
    finished = Delivery.objects.filter(job_id=job_id).values_list("subscriber", "key").first()
    if finished is None or finished[1] is None:
        return
    subscriber, key = finished
    _lock_key(subscriber, key)
    waiting = Delivery.objects.filter(subscriber=subscriber, key=key, released_at__isnull=True).order_by("id").first()
    if waiting is not None:
        waiting.job = _delivery_job(waiting.event_id, registry.get(subscriber))
        waiting.released_at = waiting.job.created_at
        waiting.save(update_fields=["job", "released_at"])
        publish_due([waiting.job])


def replay(event: Event, subscriber: str | None = None) -> list[Delivery]:
    """Deliver an event again to one subscriber or to every subscriber it matches now.

    A replay is an operator's decision: it runs at once, outside its key's order.
    """
    subs = [registry.get(subscriber)] if subscriber else registry.matching(event.name)
    replayed = []
    with transaction.atomic():
        for sub in subs:
            delivery, _ = Delivery.objects.select_for_update().get_or_create(
                event=event, subscriber=sub.name, defaults={"key": event.key}
            )
            delivery.replays += 1
            delivery.job = _delivery_job(event.pk, sub, replay=delivery.replays)
            delivery.released_at = delivery.released_at or delivery.job.created_at
            delivery.save(update_fields=["replays", "job", "released_at"])
            replayed.append(delivery)
        publish_due([d.job for d in replayed])
    return replayed


def delivery_handler(sub: Subscriber) -> Callable[[Context, dict[str, Any]], Any]:
    """The job handler of a subscriber's deliveries: load the event, call the subscriber."""

    def deliver(ctx: Context, data: dict[str, Any]) -> Any:
        event = Event.objects.get(pk=data["event"])
        return sub.handler(ctx, EventData(event.pk, event.name, event.data, event.key))

    deliver.__qualname__ = deliver.__name__ = f"deliver_{sub.name}"
    deliver.__module__ = sub.handler.__module__
    return deliver
