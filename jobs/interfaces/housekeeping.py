"""The platform's own job types: housekeeping of the jobs tables (imported by JobsConfig.ready)."""
from __future__ import annotations

import datetime as dt
import time

from django.conf import settings
from django.utils import timezone

from jobs.engine.context import Context
from jobs.engine.registry import job_type
from jobs.engine.schedules import Schedule

#: Rows per delete: a short transaction, locks on a thousand rows at most.
BATCH = 1000
#: Seconds of deletes per run: under the schedule's minute, far under the type's timeout.
BUDGET_SECONDS = 45.0


@job_type("conveyor.cleanup", queue="default", timeout=300, schedule=Schedule(every=60))
def cleanup(ctx: Context, data: dict) -> dict:
    """Delete finished jobs and chains older than CONVEYOR_RETENTION_DAYS, in batches.

    A chain's jobs only with the chain, once it has ended (store.delete_ended_chains): a member of
    a chain that still runs is never deleted from under its group's fan-in.
    Old finished rows slow every scan of the jobs table (docs/architecture.md, "Guarantees").
    """
    from jobs.engine import store

    cutoff = timezone.now() - dt.timedelta(days=int(settings.CONVEYOR["RETENTION_DAYS"]))
    deleted = 0
    # Batches until done or the time budget is spent (the next tick continues), not a count of
    # batches: 100 batches a minute capped retention at ~1,600 rows/s, and the work may come
    # faster than that (bench/history.py measures the rate; docs/architecture.md, "Retention").
    budget = time.monotonic() + BUDGET_SECONDS
    after = store.EPOCH
    while time.monotonic() < budget:
        batch, last = store.delete_finished_from(cutoff, after, BATCH)
        if not batch:
            break
        deleted += batch
        after = last
    chains = 0
    for _ in range(100):
        ended, of_chains = store.delete_ended_chains(cutoff, 100)
        if not ended:
            break
        chains += ended
        deleted += of_chains
    return {"deleted_jobs": deleted, "deleted_chains": chains, "cutoff": cutoff.isoformat()}
