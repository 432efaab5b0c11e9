"""The platform's own job types: housekeeping of the jobs tables."""
from __future__ import annotations

import datetime as dt

from django.conf import settings
from django.utils import timezone

from jobs.context import Context
from jobs.registry import job_type
from jobs.schedules import Schedule


@job_type("conveyor.cleanup", queue="default", timeout=300, schedule=Schedule(every=60))
def cleanup(ctx: Context, data: dict) -> dict:
    """Delete finished jobs and chains older than CONVEYOR_RETENTION_DAYS, in batches.

    Old finished rows slow every scan of the jobs table (DESIGN.md, "Where the time goes").
    """
    from jobs.models import FINISHED, Chain, Job

    cutoff = timezone.now() - dt.timedelta(days=int(settings.CONVEYOR["RETENTION_DAYS"]))
    deleted = 0
    for _ in range(100):  # at most 100 batches a run; the next tick continues
        ids = list(Job.objects.filter(status__in=FINISHED, finished_at__lt=cutoff).values_list("id", flat=True)[:1000])
        if not ids:
            break
        deleted += Job.objects.filter(id__in=ids).delete()[0]
    chains = Chain.objects.filter(finished_at__lt=cutoff, jobs__isnull=True).delete()[0]
    return {"deleted_jobs": deleted, "deleted_chains": chains, "cutoff": cutoff.isoformat()}
