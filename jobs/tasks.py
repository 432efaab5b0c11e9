"""The one Celery task: a message is a job id; the row says everything else.

PostgreSQL away at claim time: the claim failed before anything ran, so the message is kept (not
acked and dropped, which would leave the row to the stale relay): the broken connections are
closed and the claim tried again with backoff, for a bounded time, after which the message goes
back to its queue (Reject, requeue). Only a failed claim is retried so: a handler never runs twice
because of it (an error while recording an outcome is left to the lease and the reaper).
"""
from __future__ import annotations

import logging
import os
import time

from celery import shared_task
from celery.exceptions import Reject, SoftTimeLimitExceeded
from django.conf import settings
from django.db import connections

from jobs.engine import batchrun, decisions, early, publish, runner, store
from jobs.interfaces.monitoring import JobFailed, reported
from jobs.engine.publish import TASK

log = logging.getLogger("conveyor.tasks")

#: The supervisor's token for this start of the node (see jobs.engine.store.worker_name).
INSTANCE = os.environ.get("CONVEYOR_INSTANCE", "")

#: How long one delivery keeps trying its claim before giving its message back, at most; and at
#: most a quarter of the job's soft time limit (the wait comes out of the handler's time).
CLAIM_PATIENCE_SECONDS = 60.0
CLAIM_BACKOFF_START, CLAIM_BACKOFF_MAX = 0.2, 2.0


# Monitors see the job (jobs.interfaces.monitoring): its FAILURE (JobFailed, after the outcome is committed)
# is acked like a success, and logged by Celery at INFO without a traceback (`throws`).
@shared_task(name=TASK, bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True,
             acks_on_failure=True, throws=(JobFailed,), Request="jobs.interfaces.monitoring:Request")
@reported
def run_job(self, job_id: int, *more_ids: int) -> str | list[str]:  # noqa: ANN001 - Celery's bound task
    """Run the job a message names; a batch message names several, run one after the other
    (each claimed when its turn comes, so a job not yet started is still the others' to take
    when its message is redelivered or relayed)."""
    worker = store.worker_name(self.request.hostname, os.getpid(), INSTANCE)
    # A message sent before its rows' commit (jobs.engine.early: a large fan-out's members come in
    # batch messages too) says so in a header: each claim waits for that commit first.
    published_early = bool(getattr(self.request, early.EARLY_HEADER, False))
    if not more_ids:
        # A message without Celery time limits (a chain step's: jobs.engine.publish): the runner's.
        return claim_and_run(self, job_id, worker, own_time_limit=not any(self.request.timelimit or ()),
                             published_early=published_early)
    return run_batch(self, [job_id, *more_ids], worker, published_early)


def run_batch(self, ids: list[int], worker: str, published_early: bool) -> list[str]:  # noqa: ANN001 - Celery's bound task
    """Run a message's ids one after the other; once it has taken CONVEYOR_BATCH_HOLD_SECONDS, give the
    rest back to the queue as a message of their own (an idle worker takes them), unless that
    publish fails (Redis away): then run them here. A duplicate of the given-back message (this
    one redelivered after a crash) finds them claimed or done: nothing runs twice.

    jobs.engine.batchrun runs them (claims in chunks, short successes committed together); a
    message sent before its rows' commit (jobs.engine.early) is run here, one claim per id, each
    waiting for its row's commit."""
    if not published_early:
        # Claimed in chunks, short successes committed with the next claim (jobs.engine.batchrun).
        return batchrun.run(ids, worker, lambda one: claim_and_run(self, one, worker, own_time_limit=True))
    started, outcomes, hold = time.monotonic(), [], settings.CONVEYOR["BATCH_HOLD_SECONDS"]
    for index, one in enumerate(ids):
        rest = ids[index:]
        if index and decisions.gives_back_rest(time.monotonic() - started, len(rest), hold):
            messages = store.give_back(rest)
            if publish.publish(messages) == len(messages):
                log.info("gave %d job(s) of this message back to their queue after %.2fs", len(messages), time.monotonic() - started)
                # One outcome per id, as batchrun's: the monitor's summary pairs them strictly (a
                # shorter list made the task fail with ValueError after the give-back).
                return outcomes + [runner.Outcome("given back")] * len(rest)
        outcomes.append(claim_and_run(self, one, worker, own_time_limit=True, published_early=published_early))
    return outcomes


def claim_and_run(self, job_id: int, worker: str, own_time_limit: bool, published_early: bool = False) -> str:  # noqa: ANN001 - Celery's bound task
    deadline = time.monotonic() + claim_patience(self.request.timelimit)
    delay, failures = CLAIM_BACKOFF_START, 0
    while True:
        try:
            return runner.execute(int(job_id), worker, own_time_limit, published_early)
        except runner.ClaimFailed as exc:
            error = exc
        failures += 1
        close_connections()
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            log.warning("job %s: database still away after %d claim attempts (%s); giving its message back", job_id, failures, error)
            raise Reject(f"job {job_id}: database away at claim time", requeue=True) from error
        log.warning("job %s: database away at claim time (%s); claiming again in %.1fs", job_id, error, min(delay, remaining))
        try:
            time.sleep(min(delay, remaining))
        except SoftTimeLimitExceeded as exc:
            raise Reject(f"job {job_id}: claim timed out while the database was away", requeue=True) from exc
        delay = min(CLAIM_BACKOFF_MAX, delay * 2)


def claim_patience(timelimit: tuple[float | None, float | None] | None) -> float:
    soft = (timelimit or (None, None))[1]
    return min(CLAIM_PATIENCE_SECONDS, soft / 4) if soft else CLAIM_PATIENCE_SECONDS


def close_connections() -> None:
    """Drop this process's database connections: a broken one is not reopened by Django."""
    for conn in connections.all(initialized_only=True):
        try:
            conn.close()
        except Exception:
            pass
