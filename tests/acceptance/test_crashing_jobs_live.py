"""Issue 22: a job that kills its worker process is dead after its attempts, not crash-looping it.

A real `manage.py start` with a threads pool, whose Celery worker process dies with the job
(`crashing.exit` calls os._exit): the supervisor restarts the worker and hands the job back with
its attempt counted (a crash, not a drain it asked for).

Issue 27: an atomic job's worker process SIGKILLed mid-transaction, after the handler's write and
before its commit, leaves no write behind; the re-run writes exactly once.
"""
from __future__ import annotations

import os
import signal

import pytest

from examples.models import Effect
from jobs import enqueue
from jobs.engine import registry
from jobs.models import Job, Status
from tests.crashing.jobs import ATOMIC, CRASH
from tests.support import declared, wait_for

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True, databases="__all__")]


@pytest.fixture
def crash_type():
    """`crashing.exit` declared in this process too, for enqueue to validate it."""
    registry.add(CRASH)
    yield CRASH
    registry.remove(CRASH.name)


def wait_status(job_id: int, status: str, timeout: float) -> Job:
    def now() -> str:
        return Job.objects.values_list("status", flat=True).get(pk=job_id)

    wait_for(lambda: now() == status, timeout, interval=0.2, what=f"job {job_id} to be {status} (now {now()})")
    return Job.objects.get(pk=job_id)


def test_a_job_that_kills_its_worker_is_dead_after_its_attempts_and_the_worker_serves_on(live, crash_type):
    # given a threads-pool worker (the job's os._exit ends the whole Celery process)
    worker = live.start(
        "--pool", "threads", "--concurrency", "1", mode="worker", name="crashy", env={"CONVEYOR_TEST_APPS": "tests.crashing"}
    )
    # when a job of 2 attempts kills it on each
    job = enqueue("crashing.exit")

    # then after its second crash the job is dead, saying why and how many times
    row = wait_status(job.pk, Status.DEAD, 120)
    assert (row.attempt, row.max_attempts, row.crashes) == (2, 2, 2), row.error
    assert row.error.startswith("worker process died while running this job (2 times;"), row.error
    assert row.finished_at is not None
    # and the restarted worker serves other jobs
    other = enqueue("examples.echo", {"after": "the crashes"})
    assert wait_status(other.pk, Status.SUCCEEDED, 60).output == {"after": "the crashes"}
    assert worker.alive()
    assert worker.log().count("restarting in") == 2, worker.log()[-3000:]


@pytest.fixture
def atomic_type():
    with declared(ATOMIC):
        yield ATOMIC


def test_an_atomic_handler_sigkilled_mid_transaction_leaves_no_write_and_its_rerun_writes_once(live, atomic_type):
    # given a threads-pool worker running an atomic job whose first attempt has written its row
    # (its progress, committed on its own connection, says so) and holds its transaction open
    live.start("--pool", "threads", "--concurrency", "1", mode="worker", name="atomic", env={"CONVEYOR_TEST_APPS": "tests.crashing"})
    job = enqueue("crashing.atomic")
    wait_for(lambda: Job.objects.filter(pk=job.pk, progress=50).exists(), 60, interval=0.1, what="the first attempt's write")
    row = Job.objects.get(pk=job.pk)
    assert (row.status, row.attempt) == (Status.RUNNING, 1)
    assert not Effect.objects.filter(job_id=job.pk).exists()  # written, not committed

    # when its worker process is SIGKILLed, mid-transaction
    os.kill(int(row.worker.split("/")[1]), signal.SIGKILL)

    # then the job runs again and succeeds; of the two writes only the re-run's exists, once
    row = wait_status(job.pk, Status.SUCCEEDED, 60)
    assert (row.attempt, row.crashes, row.output) == (2, 1, {"attempt": 2}), row.error
    assert list(Effect.objects.filter(job_id=job.pk).values_list("attempt", flat=True)) == [2]
