"""The one Celery task: a message is a job id; the row says everything else."""
from __future__ import annotations

import os

from celery import shared_task

from jobs import runner


@shared_task(name="conveyor.run", bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def run_job(self, job_id: int) -> str:  # noqa: ANN001 - Celery's bound task
    return runner.execute(int(job_id), f"{self.request.hostname}/{os.getpid()}")


@shared_task(name="conveyor.tick", ignore_result=True)
def tick(schedule: str, type: str, input: dict | None = None) -> int:  # noqa: A002
    """Fallback for a beat not running Conveyor's scheduler: the tick time is the current second."""
    import datetime as dt

    from jobs.beat import enqueue_tick

    at = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    return enqueue_tick(schedule, type, input or {}, at).pk
