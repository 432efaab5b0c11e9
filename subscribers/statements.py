"""The event bus's own statements: an emit in one round trip, and a delivery's read of its event.

`EMIT_SQL` writes an event, one delivery per subscriber and a job per released delivery (and,
for a keyed event, the lanes its released deliveries take) in ONE statement: one round trip,
prepared once per connection, no Django model built per row (issue 28: emit's client CPU was
three ORM inserts, a transaction's BEGIN and COMMIT, and a model instance per delivery and job).

Its jobs are the rows `jobs.engine.store.insert` writes for `delivery.delivery_job` (same
columns, same values: `tests/integration/test_emit_statement.py` compares them column by column),
so a delivery job claims, runs, retries and shows like any other. The store is the one writer of
the jobs tables everywhere else; this statement is the bus's exception, kept beside the bus
because it writes the bus's tables too, and checked against the store's rows by that test.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Sequence

from jobs.engine import registry, store
from jobs.engine.creation import PLATFORM_KEY_PREFIX

#: A delivery job's idempotency key, as `delivery.delivery_job` makes it (`conveyor:delivery:<event>:<subscriber>`).
_DELIVERY_KEY = f"'{PLATFORM_KEY_PREFIX}delivery:' || e.id || ':' || s.subscriber"

# The subscribers in order (one array each: name, job type, queue, priority, max attempts,
# released now). A released delivery's job is due now and published after commit, as
# store.INSERT_SQL makes a job with no run_after; a waiting one (behind its key's lane) has none.
# Each delivery finds its job by the job's idempotency key (unique, made from the new event's id).
EMIT_SQL = f"""
WITH e AS (
  INSERT INTO subscribers_event (name, data, key, created_at)
  VALUES (%(name)s, %(data)s::jsonb, %(key)s, now())
  RETURNING id, created_at
), s AS (
  SELECT * FROM unnest(%(subscribers)s::text[], %(types)s::text[], %(queues)s::text[], %(priorities)s::int[],
                       %(max_attempts)s::int[], %(released)s::bool[])
         WITH ORDINALITY AS s(subscriber, type, queue, priority, max_attempts, released, n)
), j AS (
  INSERT INTO jobs_job (type, queue, input, priority, max_attempts, idempotency_key, run_after, published_at,
                        status, attempt, worker, progress, progress_message, cancel_requested, error,
                        created_at, updated_at)
  SELECT s.type, s.queue, jsonb_build_object('event', e.id), s.priority, s.max_attempts, {_DELIVERY_KEY},
         now(), now(), 'pending', 0, '', 0, '', false, '', now(), now()
    FROM e, s
   WHERE s.released
   ORDER BY s.n
  RETURNING id, idempotency_key, created_at
), d AS (
  INSERT INTO subscribers_delivery (event_id, subscriber, key, job_id, released_at, replays, created_at)
  SELECT e.id, s.subscriber, %(key)s, j.id, j.created_at, 0, now()
    FROM e CROSS JOIN s LEFT JOIN j ON j.idempotency_key = {_DELIVERY_KEY}
   ORDER BY s.n
  RETURNING id, subscriber, job_id
), l AS (
  -- A keyed event's released deliveries take their keys' lanes (the emitter holds each key's lock).
  INSERT INTO subscribers_lane (subscriber, key, job_id, delivery_id)
  SELECT d.subscriber, %(key)s, d.job_id, d.id FROM d WHERE %(key)s::text IS NOT NULL AND d.job_id IS NOT NULL
)
SELECT e.id, e.created_at, d.subscriber, d.id, d.job_id FROM e LEFT JOIN d ON true
"""


@dataclass(frozen=True)
class Written:
    """What EMIT_SQL wrote: the event, and per subscriber its delivery and its job (None: waits)."""

    event_id: int
    created_at: Any
    deliveries: dict[str, tuple[int, int | None]]


def emit_rows(name: str, data: dict[str, Any], key: str | None, subscribers: Sequence[str],
              types: Sequence[registry.JobType], released: Sequence[bool]) -> Written:
    """Run EMIT_SQL: the i-th subscriber's delivery job is of `types[i]` (`deliver:<name>`), made
    now when `released[i]` (otherwise it waits for its key's lane)."""
    params = {
        "name": name,
        "data": json.dumps(data),
        "key": key,
        "subscribers": list(subscribers),
        "types": [jt.name for jt in types],
        "queues": [jt.queue for jt in types],
        "priorities": [jt.priority for jt in types],
        "max_attempts": [jt.retries + 1 for jt in types],
        "released": list(released),
    }
    with store.prepared() as cursor:
        cursor.execute(EMIT_SQL, params)
        rows = cursor.fetchall()
    event_id, created_at = rows[0][0], rows[0][1]
    return Written(event_id, created_at, {row[2]: (row[3], row[4]) for row in rows if row[2] is not None})


EVENT_SQL = "SELECT name, data, key FROM subscribers_event WHERE id = %s"


def event(event_id: int) -> tuple[str, dict[str, Any], str | None] | None:
    """A delivery's event (name, data, key), or None when retention deleted it: one prepared
    primary-key probe, no queryset built per delivery."""
    with store.prepared() as cursor:
        cursor.execute(EVENT_SQL, [event_id])
        row = cursor.fetchone()
    if row is None:
        return None
    data = row[1]
    # Django has psycopg hand jsonb over as text (its JSONField decodes it): decoded here.
    return row[0], json.loads(data) if isinstance(data, (str, bytes)) else data, row[2]
