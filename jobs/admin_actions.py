"""Cancel and retry, shared by the API and the admin."""
from __future__ import annotations

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from jobs import registry
from jobs.publish import publish_on_commit
from jobs.api_python import message
from jobs.models import Chain, ChainStatus, Job, Status


def cancel(job: Job) -> bool:
    """Cancel a waiting job at once; ask a running one to stop (it sees ctx.cancelled).

    Returns False when the job has already finished.
    """
    now = timezone.now()
    with transaction.atomic():
        waiting = Job.objects.filter(pk=job.pk, status__in=[Status.PENDING, Status.FAILED]).update(
            status=Status.CANCELLED, cancel_requested=True, finished_at=now, updated_at=now
        )
        if waiting:
            from jobs.runner import settle

            settle(job.pk, job.type, Status.CANCELLED, job.chain_id)
            return True
        return bool(
            Job.objects.filter(pk=job.pk, status=Status.RUNNING).update(cancel_requested=True, updated_at=now)
        )


def retry(job: Job) -> bool:
    """Give a dead, failed or cancelled job a fresh budget of attempts; its chain runs again."""
    try:
        retries = registry.get(job.type).retries
    except registry.InvalidJob:
        retries = 0
    now = timezone.now()
    with transaction.atomic():
        updated = Job.objects.filter(pk=job.pk, status__in=[Status.DEAD, Status.FAILED, Status.CANCELLED]).update(
            status=Status.PENDING,
            cancel_requested=False,
            max_attempts=F("attempt") + retries + 1,
            run_after=now,
            published_at=now,
            finished_at=None,
            updated_at=now,
        )
        if updated:
            # The row as the retry left it, read before its message can reach a worker.
            job.refresh_from_db()
            publish_on_commit([message(job)])
            if job.chain_id:
                Chain.objects.filter(pk=job.chain_id).update(status=ChainStatus.RUNNING, finished_at=None)
    return bool(updated)
