"""The event bus's own job type: housekeeping of the event log (autodiscovered by jobs.engine.registry).

`subscribers.cleanup`, every minute like conveyor.cleanup (which keeps the jobs tables):
- sets right keys left stuck (subscribers.delivery.unstick): a lane whose holder ended without
  handing it on, or deliveries waiting with no lane (rows from before lanes);
- deletes, in batches, the events older than CONVEYOR_RETENTION_DAYS whose deliveries have all
  ended before then, with their deliveries. An event with a delivery waiting, running or due to
  run again, or one whose delivery still holds its key's lane, is kept, however old.
"""
from __future__ import annotations

import datetime as dt

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone
from pydantic import BaseModel, Field

from jobs.engine.context import Context
from jobs.models import FINISHED
from jobs.engine.registry import job_type
from jobs.engine.schedules import Schedule
from subscribers import delivery

#: An event none of whose deliveries waits, holds its key's lane, or has a job that has not ended
#: before the cutoff (a delivery whose job row retention deleted had ended long ago).
ENDED = """
NOT EXISTS (
  SELECT 1 FROM subscribers_delivery d LEFT JOIN jobs_job j ON j.id = d.job_id
   WHERE d.event_id = e.id
     AND (d.released_at IS NULL
          OR (j.id IS NOT NULL AND (j.status <> ALL(%(finished)s) OR j.finished_at >= %(cutoff)s))
          OR EXISTS (SELECT 1 FROM subscribers_lane l WHERE l.delivery_id = d.id)))
"""

# Oldest first (event_created_idx); an event a replay is writing (it locks the row) is skipped.
CANDIDATES_SQL = f"""
SELECT e.id FROM subscribers_event e
 WHERE e.created_at < %(cutoff)s AND {ENDED}
 ORDER BY e.created_at
 LIMIT %(batch)s
   FOR UPDATE OF e SKIP LOCKED
"""

# Checked again on the locked rows in a new statement, which sees what committed meanwhile (a
# retry of a delivery's job); the deliveries go with their events.
DELETE_SQL = f"""
WITH gone AS (SELECT e.id FROM subscribers_event e WHERE e.id = ANY(%(ids)s) AND {ENDED}),
     deliveries AS (DELETE FROM subscribers_delivery d USING gone WHERE d.event_id = gone.id RETURNING d.id),
     events AS (DELETE FROM subscribers_event e USING gone WHERE e.id = gone.id RETURNING e.id)
SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM deliveries)
"""


class Cleanup(BaseModel):
    #: Events deleted per transaction.
    batch: int = Field(1000, ge=1, le=10_000)
    #: Batches per run at most; the next run continues.
    batches: int = Field(100, ge=1, le=1000)


def delete_ended_events(cutoff: dt.datetime, batch: int) -> tuple[int, int, int]:
    """Delete one batch of ended events older than `cutoff` with their deliveries, in one
    transaction; return (events found, events deleted, deliveries deleted)."""
    params = {"cutoff": cutoff, "batch": batch, "finished": list(FINISHED)}
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(CANDIDATES_SQL, params)
        ids = [row[0] for row in cursor.fetchall()]
        if not ids:
            return 0, 0, 0
        cursor.execute(DELETE_SQL, {**params, "ids": ids})
        events, deliveries = cursor.fetchone()
    return len(ids), events, deliveries


@job_type("subscribers.cleanup", queue="default", input=Cleanup, timeout=300, schedule=Schedule(every=60))
def cleanup(ctx: Context, data: Cleanup) -> dict:
    """Set right stuck keys; delete ended events older than CONVEYOR_RETENTION_DAYS, in batches."""
    unstuck = delivery.unstick()
    cutoff = timezone.now() - dt.timedelta(days=int(settings.CONVEYOR["RETENTION_DAYS"]))
    events = deliveries = batches = 0
    for _ in range(data.batches):
        found, deleted, gone = delete_ended_events(cutoff, data.batch)
        if not found:
            break
        batches += 1
        events, deliveries = events + deleted, deliveries + gone
        if found < data.batch:
            break
    return {
        "deleted_events": events,
        "deleted_deliveries": deliveries,
        "batches": batches,
        "unstuck_keys": unstuck,
        "cutoff": cutoff.isoformat(),
    }
