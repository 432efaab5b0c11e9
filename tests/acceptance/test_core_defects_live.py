"""Regression tests for the job core's defects (issue 10) that need real worker processes and real
signals: `manage.py start` workers on the session's PostgreSQL and Redis (tests.support.FAST: a
lease lapses in 3 s). The in-process ones are in tests/integration/test_core_defects.py.
"""
from __future__ import annotations

import signal

import psutil
import pytest
from django.test import Client

from examples.models import Effect
from jobs import Step, enqueue, start_chain
from jobs.models import Chain, ChainStatus, Job, Status
from tests.factories import api_token
from tests.support import wait_for

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True, databases="__all__")]

GRACE = ("--grace", "5")


def is_dead(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def job_status(job_id: int) -> str:
    return Job.objects.values_list("status", flat=True).get(pk=job_id)


def wait_status(job_id: int, status: str, timeout: float) -> Job:
    wait_for(lambda: job_status(job_id) == status, timeout, what=f"job {job_id} to be {status} (now {job_status(job_id)})")
    return Job.objects.get(pk=job_id)


# --- 1. a cancelled job handed back is pending forever ---------------------------------------------


def test_a_cancelled_job_whose_worker_is_killed_ends_cancelled_not_pending_forever(live):
    # given a worker running the first step of a chain, a step that does not look at ctx.cancelled
    worker = live.start(*GRACE, "--concurrency", "1", mode="worker", name="doomed")
    chain = start_chain([Step("examples.count", {"sleep": 30}), Step("examples.echo", {})])
    first = Job.objects.get(chain=chain, chain_index=0)
    wait_for(lambda: job_status(first.pk) == Status.RUNNING, 30, what="step 0 to run")
    # and a cancel asked while it runs
    answer = Client(HTTP_AUTHORIZATION=f"Bearer {api_token()}").post(f"/api/jobs/{first.pk}/cancel")
    assert answer.status_code == 202 and answer.json()["cancel_requested"] is True

    # when the Celery worker under the supervisor is killed (the supervisor hands its jobs back)
    [celery] = psutil.Process(worker.process.pid).children()
    celery.send_signal(signal.SIGKILL)

    # then the job ends cancelled, and so does its chain, with no second step
    wait_status(first.pk, Status.CANCELLED, 20)
    assert Chain.objects.get(pk=chain.pk).status == ChainStatus.CANCELLED
    assert Job.objects.filter(chain=chain).count() == 1


# --- 11. cancelling a running job ends it succeeded -------------------------------------------------


def test_cancelling_a_running_job_ends_it_cancelled_and_the_answer_says_so(live):
    live.start(*GRACE, "--concurrency", "1", mode="worker", name="canceller")
    job = enqueue("examples.sleep", {"seconds": 30})
    wait_for(lambda: job_status(job.pk) == Status.RUNNING, 30, what="the job to run")

    answer = Client(HTTP_AUTHORIZATION=f"Bearer {api_token()}").post(f"/api/jobs/{job.pk}/cancel")

    assert answer.status_code == 202
    assert (answer.json()["status"], answer.json()["cancel_requested"]) == ("running", True)
    row = wait_status(job.pk, Status.CANCELLED, 20)
    assert row.output["cancelled"] is True and row.finished_at is not None


# --- 5. time limits do nothing in the threads and solo pools ---------------------------------------


@pytest.mark.parametrize("pool", ["threads", "solo"])
def test_the_time_limit_stops_a_handler_in_the_threads_and_solo_pools(live, pool):
    live.start(*GRACE, "--pool", pool, "--concurrency", "1", mode="worker", name=f"{pool}-worker")
    # examples.hang has a 2 s time limit and no retries; this one would run 30 s
    job = enqueue("examples.hang", {"seconds": 30})

    row = wait_status(job.pk, Status.DEAD, 15)

    assert row.attempt == 1 and "timeout" in row.error
    assert Effect.objects.filter(job_id=job.pk).count() == 1


def test_a_handler_stuck_past_its_hard_limit_in_the_threads_pool_ends_its_process_not_doubled(live):
    # given a threads worker and a job blocked in one call that no exception interrupts, with a
    # retry left
    worker = live.start(*GRACE, "--pool", "threads", "--concurrency", "2", mode="worker", name="stuck-worker")
    job = enqueue("examples.hang", {"seconds": 60, "block": True}, retries=1)

    # when it passes its hard limit (2 s + 10 s of grace)
    wait_for(lambda: Effect.objects.filter(job_id=job.pk).count() == 2, 60, what="the second attempt to start")

    # then its first attempt was recorded as failed and its process ended before the second
    # attempt started, on the worker the supervisor restarted: never two copies at once
    first, second = Effect.objects.filter(job_id=job.pk).order_by("attempt")
    assert (first.attempt, second.attempt) == (1, 2)
    assert is_dead(first.worker_pid) and first.worker_pid != second.worker_pid
    assert worker.alive()
    assert "did not stop" in Job.objects.get(pk=job.pk).error  # attempt 1's, kept while 2 runs
