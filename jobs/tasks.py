"""The one Celery task: a message is a job id; the row says everything else."""
from __future__ import annotations

import os

from celery import shared_task

from jobs import runner
from jobs.publish import TASK


@shared_task(name=TASK, bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def run_job(self, job_id: int) -> str:  # noqa: ANN001 - Celery's bound task
    return runner.execute(int(job_id), f"{self.request.hostname}/{os.getpid()}")
