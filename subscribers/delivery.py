"""A subscriber's deliveries as jobs: the delivery job type's handler, and per-key order.

Per-key order is a lane per (subscriber, key) (subscribers.models.Lane): the one job running a
delivery of the key in its order. A keyed delivery emitted while its key has a lane waits
(`released_at` is null); when the lane's job ends (succeeded, dead, cancelled), the transaction
that records it hands the lane to the key's next waiting delivery, released now, or deletes it
when none waits (`release_next`, the delivery job type's on_finish). Every read or move of a lane
happens under a transaction-scoped advisory lock on (subscriber, key), so an emitter's check and
a completion's release see each other.

A retry of an ended delivery job, or a replay, runs outside its key's order: its job does not hold
the lane, so its end releases nothing, and a replayed delivery's first job keeps the lane until it
ends. A key never has two deliveries running in its order.

This module knows subscribers by name only, so the registry can import it to declare the job
types without an import cycle.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from django.db import connection, transaction

from jobs import Context, InvalidJob, Step, new_job, submit
from jobs.engine import store
from jobs.engine.creation import platform_key
from jobs.models import FINISHED, Job
from subscribers import statements
from subscribers.models import Delivery, Lane

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


# The key's lane with its holder's status, and whether a delivery of the key waits: index probes
# (one_lane_per_key, the jobs primary key, delivery_waiting_idx).
LANE_SQL = """
SELECT l.id, j.status,
       EXISTS (SELECT 1 FROM subscribers_delivery w
                WHERE w.subscriber = %(sub)s AND w.key = %(key)s AND w.released_at IS NULL)
  FROM (VALUES (1)) AS one (x)
  LEFT JOIN subscribers_lane l ON l.subscriber = %(sub)s AND l.key = %(key)s
  LEFT JOIN jobs_job j ON j.id = l.job_id
"""


def lane_state(lane_id: int | None, holder_status: str | None, waiting: bool) -> str:
    """A key's lane as read under its lock: `held` by an unfinished job, `free` (no lane, none
    waiting), or `stuck`: a lane whose holder ended without handing it on (a job type whose hook
    did not run) or is gone, or deliveries waiting with no lane (rows from before lanes)."""
    if lane_id is not None and holder_status is not None and holder_status not in FINISHED:
        return "held"
    if lane_id is None and not waiting:
        return "free"
    return "stuck"


def _lane(subscriber: str, key: str) -> tuple[int | None, str]:
    """Take the key's lock for the rest of the transaction; return its lane's id and state."""
    lock_key(subscriber, key)
    with connection.cursor() as cursor:
        cursor.execute(LANE_SQL, {"sub": subscriber, "key": key})
        lane_id, holder_status, waiting = cursor.fetchone()
    return lane_id, lane_state(lane_id, holder_status, waiting)


# emit's keyed lanes for all its subscribers at once: the locks, in subscriber order as one at a
# time took them (an ending job takes one), then, in a statement of its own (READ COMMITTED: its
# snapshot is taken once it holds them), each lane as LANE_SQL reads it.
LOCK_KEYS_SQL = "SELECT pg_advisory_xact_lock(hashtext(u.sub), hashtext(%(key)s)) FROM unnest(%(subs)s::text[]) AS u(sub)"
LANES_SQL = """
SELECT l.id, j.status,
       EXISTS (SELECT 1 FROM subscribers_delivery w
                WHERE w.subscriber = u.sub AND w.key = %(key)s AND w.released_at IS NULL)
  FROM unnest(%(subs)s::text[]) WITH ORDINALITY AS u(sub, n)
  LEFT JOIN subscribers_lane l ON l.subscriber = u.sub AND l.key = %(key)s
  LEFT JOIN jobs_job j ON j.id = l.job_id
 ORDER BY u.n
"""


def lanes_taken(subscribers: list[str], key: str) -> list[bool]:
    """`lane_taken` for each of `subscribers` (emit's, in order), in two statements, not two per
    subscriber: must each one's new delivery of the key wait?"""
    if not subscribers:
        return []
    params = {"subs": list(subscribers), "key": key}
    with store.prepared() as cursor:
        cursor.execute(LOCK_KEYS_SQL, params)
        cursor.fetchall()
        cursor.execute(LANES_SQL, params)
        lanes = cursor.fetchall()
    taken = []
    for subscriber, (lane_id, holder_status, waiting) in zip(subscribers, lanes, strict=True):
        state = lane_state(lane_id, holder_status, waiting)
        taken.append(_hand_on(subscriber, key, lane_id) if state == "stuck" else state == "held")
    return taken


def lane_taken(subscriber: str, key: str) -> bool:
    """For emit: must a new delivery of the key wait? It waits while the key's lane is held.

    A stuck key is set right first, as its holder's end would have: the first waiting delivery is
    released and takes the lane, and the new one queues behind it.
    """
    lane_id, state = _lane(subscriber, key)
    if state == "stuck":
        return _hand_on(subscriber, key, lane_id)
    return state == "held"


def take_lanes(released: list[Delivery]) -> None:
    """Keyed deliveries just released by emit (their keys had no lane) take their keys' lanes."""
    Lane.objects.bulk_create(
        [Lane(subscriber=d.subscriber, key=d.key, job_id=d.job_id, delivery=d) for d in released if d.key is not None]
    )


def next_waiting(subscriber: str, key: str) -> Delivery | None:
    """The key's oldest waiting delivery: a probe of delivery_waiting_idx."""
    return Delivery.objects.filter(subscriber=subscriber, key=key, released_at__isnull=True).order_by("id").first()


def _hand_on(subscriber: str, key: str, lane_id: int | None) -> bool:
    """Under the key's lock: release the key's next waiting delivery and give it the lane (True),
    or, none waiting, delete the lane (False)."""
    waiting = next_waiting(subscriber, key)
    if waiting is None:
        if lane_id is not None:
            Lane.objects.filter(pk=lane_id).delete()
        return False
    (waiting.job,) = submit([delivery_job(waiting.event_id, subscriber)])
    waiting.released_at = waiting.job.created_at
    waiting.save(update_fields=["job", "released_at"])
    if lane_id is None:
        Lane.objects.create(subscriber=subscriber, key=key, job=waiting.job, delivery=waiting)
    else:
        Lane.objects.filter(pk=lane_id).update(job=waiting.job, delivery=waiting)
    return True


def release_next(job_id: int, status: str) -> None:
    """on_finish of every delivery job: if it held its key's lane, hand the lane on.

    A job that holds no lane (an unkeyed delivery, a retry of an ended job, a replay) releases
    nothing. The lane is read before the key's lock: only this job's end moves a lane it holds
    (`unstick` leaves a lane alone while its holder has not ended, and this end is not committed).
    """
    lane = Lane.objects.filter(job_id=job_id).values_list("pk", "subscriber", "key").first()
    if lane is None:
        return
    lane_id, subscriber, key = lane
    lock_key(subscriber, key)
    _hand_on(subscriber, key, lane_id)


# Keys left stuck: a lane whose holder ended without handing it on (or is gone), or deliveries
# waiting with no lane at all (rows from before lanes).
STUCK_SQL = """
(SELECT l.subscriber, l.key FROM subscribers_lane l LEFT JOIN jobs_job j ON j.id = l.job_id
  WHERE j.id IS NULL OR j.status = ANY(%(finished)s) LIMIT %(limit)s)
UNION
(SELECT DISTINCT w.subscriber, w.key FROM subscribers_delivery w
  WHERE w.released_at IS NULL AND w.key IS NOT NULL
    AND NOT EXISTS (SELECT 1 FROM subscribers_lane l WHERE l.subscriber = w.subscriber AND l.key = w.key)
  LIMIT %(limit)s)
"""


def unstick(limit: int = 100) -> int:
    """Set right up to `limit` stuck keys, each in its own transaction under its lock; return how
    many. A key of a subscriber gone from the code is left as it is."""
    with connection.cursor() as cursor:
        cursor.execute(STUCK_SQL, {"finished": list(FINISHED), "limit": limit})
        keys = cursor.fetchall()
    fixed = 0
    for subscriber, key in keys:
        try:
            with transaction.atomic():
                lane_id, state = _lane(subscriber, key)  # again, under the lock: it may have moved on
                if state == "stuck":
                    _hand_on(subscriber, key, lane_id)
                    fixed += 1
        except InvalidJob:  # deliver:<subscriber> is no longer declared
            continue
    return fixed


def handler(subscriber: Callable[..., Any], name: str) -> Callable[[Context, dict[str, Any]], Any]:
    """The job handler of a subscriber's deliveries: load the event, call the subscriber."""

    def deliver(ctx: Context, data: dict[str, Any]) -> Any:
        # One prepared primary-key probe (no queryset built per delivery: issue 28).
        found = statements.event(data["event"])
        if found is None:
            raise LookupError(f"event {data['event']} no longer exists (deleted by retention?)")
        name, event_data, key = found
        # An unkeyed event's delivery never holds a lane: its success has nothing to hand on.
        ctx.finish_hook_needed = key is not None
        return subscriber(ctx, EventData(data["event"], name, event_data, key))

    deliver.__qualname__ = deliver.__name__ = f"deliver_{name}"
    deliver.__module__ = subscriber.__module__
    return deliver
