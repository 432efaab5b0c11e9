"""emit() and replay(): an event row and one delivery per subscriber, in the caller's transaction.

Deliveries are jobs (subscribers.delivery), made with jobs.new_job and jobs.submit like every
job, and published after commit. A keyed event's delivery waits while its key's lane (for that
subscriber) is held by an unfinished delivery; released at once, it takes the lane.
"""
from __future__ import annotations

import re
from typing import Any

from django.db import transaction

from api.validation import problems

from jobs import submit
from jobs.engine import registry as job_registry
from jobs.engine import tracing
from jobs.engine.publish import Message, publish_on_commit
from subscribers import delivery, registry, statements
from subscribers.models import Delivery, Event
from subscribers.registry import InvalidEvent

EVENT_NAME = re.compile(r"^[a-z0-9][a-z0-9_.\-]{0,199}$")


def emit(name: str, data: dict[str, Any] | None = None, *, key: str | None = None) -> Event:
    """Record an event and one delivery per subscriber of `name`; publish after commit.

    A rolled-back transaction emits nothing. An event with no subscriber is still recorded.
    """
    if not isinstance(name, str) or not EVENT_NAME.match(name):
        raise InvalidEvent("bad event name", {"name": "lowercase letters, digits and . _ - (at most 200)"})
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InvalidEvent("event data must be a JSON object", {"data": "must be a JSON object"})
    if key is not None and (not isinstance(key, str) or not 0 < len(key) <= 200):
        raise InvalidEvent("bad key", {"key": "a string of 1 to 200 characters"})
    if found := problems(data, "data") | problems(key, "key"):
        raise InvalidEvent("the event holds what PostgreSQL cannot store", found)
    subs = registry.matching(name)
    if not tracing.on:
        return _emit(name, data, key, subs)
    # Traced: the emit is a span, each delivery's job is enqueued (and later runs) under it.
    with tracing.span("conveyor.event.emit", {"conveyor.event.name": name, "conveyor.event.key": key}) as span, \
            transaction.atomic():
        event = Event.objects.create(name=name, data=data, key=key)
        deliveries = [Delivery(event=event, subscriber=sub.name, key=key) for sub in subs]
        if span is not None:
            span.set_attributes({"conveyor.event.id": event.pk, "conveyor.deliveries": len(deliveries)})
        released = [d for d in deliveries if key is None or not delivery.lane_taken(d.subscriber, key)]
        # One INSERT and one publish for all the deliveries released now.
        jobs = submit([delivery.delivery_job(event.pk, d.subscriber) for d in released])
        for d, job in zip(released, jobs, strict=True):
            d.job, d.released_at = job, job.created_at
        Delivery.objects.bulk_create(deliveries)
        if key is not None:
            delivery.take_lanes(released)
    return event


def _emit(name: str, data: dict[str, Any], key: str | None, subs: list[registry.Subscriber]) -> Event:
    """emit's rows in one statement (subscribers.statements.EMIT_SQL), its messages after commit.

    An unkeyed event is that one statement: atomic on its own, so no transaction is opened for it
    (in the caller's, if any). A keyed one first takes each subscriber's key lock and reads its
    lane (`delivery.lanes_taken`: two statements for all), in a transaction that the statement then joins.
    """
    # The job types exist (each declared with its subscriber); one removed from the code raises here.
    names, types = [sub.name for sub in subs], [job_registry.get(sub.job_type) for sub in subs]
    if key is None:
        written = statements.emit_rows(name, data, None, names, types, [True] * len(subs))
    else:
        with transaction.atomic():
            released = [not taken for taken in delivery.lanes_taken(names, key)]
            written = statements.emit_rows(name, data, key, names, types, released)
    # One publish (one pipelined round trip) for all the deliveries released now.
    publish_on_commit([
        Message(job_id, jt.queue, jt.priority, jt.name)
        for sub, jt in zip(names, types, strict=True)
        if (job_id := written.deliveries[sub][1]) is not None
    ])
    event = Event(pk=written.event_id, name=name, data=data, key=key, created_at=written.created_at)
    event._state.adding, event._state.db = False, "default"
    return event


def replay(event: Event, subscriber: str | None = None) -> list[Delivery]:
    """Deliver an event again to one subscriber or to every subscriber it matches now.

    A replay is an operator's decision: it runs at once, outside its key's order. It neither takes
    nor releases the key's lane: a delivery still running in its key's order keeps the lane with
    its first job, and a waiting one replayed is delivered now and no longer waits.
    """
    subs = [registry.get(subscriber)] if subscriber else registry.matching(event.name)
    replayed = []
    with transaction.atomic():
        # Retention deletes an event only once it holds this row's lock and saw nothing of it run.
        if not Event.objects.select_for_update(no_key=True).filter(pk=event.pk).values_list("pk", flat=True):
            raise InvalidEvent(f"event {event.pk} no longer exists", {"event": "deleted by retention"})
        for sub in subs:
            d, _ = Delivery.objects.select_for_update().get_or_create(
                event=event, subscriber=sub.name, defaults={"key": event.key}
            )
            d.replays += 1
            (d.job,) = submit([delivery.delivery_job(event.pk, sub.name, replay=d.replays)])
            d.released_at = d.released_at or d.job.created_at
            d.save(update_fields=["replays", "job", "released_at"])
            replayed.append(d)
    return replayed
