"""The one Celery task: a message is a job id; the row says everything else."""
from __future__ import annotations

import os

from celery import shared_task

from jobs import runner, store
from jobs.monitoring import JobFailed, reported
from jobs.publish import TASK

#: The supervisor's token for this start of the node (see jobs.store.worker_name).
INSTANCE = os.environ.get("CONVEYOR_INSTANCE", "")


# Monitors see the job (jobs.monitoring): its FAILURE (JobFailed, after the outcome is committed)
# is acked like a success, and logged by Celery at INFO without a traceback (`throws`).
@shared_task(name=TASK, bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True,
             acks_on_failure=True, throws=(JobFailed,))
@reported
def run_job(self, job_id: int) -> str:  # noqa: ANN001 - Celery's bound task
    return runner.execute(int(job_id), store.worker_name(self.request.hostname, os.getpid(), INSTANCE))
