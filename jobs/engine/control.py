"""An operator's decisions on a job, from the API or the admin: cancel and retry."""
from __future__ import annotations

from django.db import transaction

from jobs.engine import registry, store
from jobs.engine.ending import How, ended
from jobs.models import Job
from jobs.engine.publish import Message, publish_on_commit


def cancel(job: Job) -> bool:
    """Cancel a waiting job at once; ask a running one to stop (it sees ctx.cancelled).

    Returns False when the job has already finished.
    """
    with transaction.atomic():
        result = store.cancel(job.pk)
        if isinstance(result, store.Ended):
            ended([result], How.CANCELLED)
            return True
        return result


def retry(job: Job) -> bool:
    """Give a dead, failed or cancelled job a fresh budget of attempts; its chain runs again."""
    try:
        retries = registry.get(job.type).retries
    except registry.InvalidJob:
        retries = 0
    with transaction.atomic():
        if not store.retry(job.pk, retries):
            return False
        # The row as the retry left it, read before its message can reach a worker. A row
        # due later is published by the relay when its time comes.
        job.refresh_from_db()
        if job.published_at is not None:
            publish_on_commit([Message.of(job)])
    return True
