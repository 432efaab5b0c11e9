"""django.tasks on Conveyor with real workers (`manage.py start` processes): the demo app's tasks
(examples/djtasks, which imports nothing from Conveyor) enqueued with the framework's API, run by
Celery workers, read back with `get_result` / `refresh` from this process.

The tests about a worker's end (killed, drained) start their own; the others share the module's
worker (`worker`, started once), and come last: it runs from its first user to the module's end."""
from __future__ import annotations

import datetime as dt
import time

import psutil
import pytest
from django.db import transaction
from django.utils import timezone

from conveyor_tasks import compat, results
from examples.djtasks import tasks
from examples.djtasks.models import Run
from jobs.models import Job, Status
from tests.support import is_dead, kill_tree, module_workers, wait_for

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True, databases="__all__")]

READY, RUNNING, FAILED, SUCCESSFUL = (compat.TaskResultStatus.READY, compat.TaskResultStatus.RUNNING,
                                      compat.TaskResultStatus.FAILED, compat.TaskResultStatus.SUCCESSFUL)
GRACE = ("--grace", "3")


def backend():
    return compat.task_backends["default"]


def _worker(live, name: str):
    return live.start(*GRACE, "--concurrency", "2", mode="worker", name=name)


@pytest.fixture(scope="module")
def worker(django_db_setup, django_db_blocker):
    """The module's worker (two pool processes), for the tests that do not stop theirs."""
    with module_workers(django_db_blocker, ("w", (*GRACE, "--concurrency", "2"))) as [proc]:
        yield proc


def test_a_task_whose_worker_is_sigkilled_mid_run_completes_once_on_attempt_2(live):
    # given a worker running a task (its first half recorded)
    doomed = _worker(live, "doomed")
    result = tasks.slow_count.enqueue(seconds=3)
    wait_for(lambda: Run.objects.filter(result_id=result.id, task="slow_count:start").exists(), 30, interval=0.05,
             what="the task to start")

    # when the whole worker is killed with SIGKILL, and another worker starts
    pids = [doomed.process.pid, *(p.pid for p in psutil.Process(doomed.process.pid).children(recursive=True))]
    kill_tree(doomed.process.pid)
    wait_for(lambda: all(map(is_dead, pids)), 10, what="the worker's processes to die")
    result.refresh()
    assert result.status == RUNNING and result.attempts == 1
    _worker(live, "rescuer")

    # then it completes exactly once, on attempt 2, with an error entry for the lost attempt
    done = backend().wait(result, 60)
    assert done.status == SUCCESSFUL, done.errors
    assert done.attempts == 2 and done.return_value["attempt"] == 2
    assert Run.objects.filter(result_id=result.id, task="slow_count").count() == 1  # completed once
    assert len(done.errors) == 1 and done.errors[0].exception_class_path == results.WORKER_LOST
    assert "attempt 1" in done.errors[0].traceback
    assert done.worker_ids[0] != done.worker_ids[1]





@pytest.mark.usefixtures("stop_together")
def test_run_after_is_honoured_across_a_worker_restart(live):
    # given a task deferred 4 s, and a worker stopped (drained) before then
    first = _worker(live, "first")
    due = timezone.now() + dt.timedelta(seconds=4)
    result = tasks.stamp.using(run_after=due).enqueue()
    time.sleep(1)
    assert first.stop() == 0
    assert backend().get_result(result.id).status == READY

    # when another worker starts, then the task runs once, not before its time
    _worker(live, "second")
    done = backend().wait(result, 30)
    assert done.status == SUCCESSFUL and done.attempts == 1
    assert done.started_at >= due
    assert Run.objects.filter(result_id=result.id).count() == 1


# --- on the module's worker (last: see the module's docstring) ---------------------------------------


def test_a_task_enqueued_in_a_rolled_back_transaction_never_runs(worker):
    # given the module's worker
    # when one task is enqueued in a transaction that rolls back, and another in one that commits
    with pytest.raises(RuntimeError), transaction.atomic():
        lost = tasks.stamp.enqueue()
        raise RuntimeError("roll back")
    with transaction.atomic():
        kept = tasks.stamp.enqueue()

    # then the committed one runs, and the rolled-back one has neither row nor run
    done = backend().wait(kept, 30)
    assert done.status == SUCCESSFUL
    time.sleep(0.5)
    assert not Job.objects.filter(pk=int(lost.id)).exists()
    assert list(Run.objects.values_list("result_id", flat=True)) == [kept.id]


def test_get_result_in_another_process_sees_the_fields_move(worker):
    # given the module's worker, and a task enqueued here: READY, nothing started
    result = tasks.slow_count.enqueue(seconds=1.5)
    seen = tasks.slow_count.get_result(result.id)
    assert seen.status in (READY, RUNNING) and seen.finished_at is None

    # when it runs, then this process reads it RUNNING on a worker, with its start
    wait_for(lambda: tasks.slow_count.get_result(result.id).status == RUNNING, 30, interval=0.05, what="RUNNING")
    running = tasks.slow_count.get_result(result.id)
    assert running.started_at is not None and running.finished_at is None and len(running.worker_ids) == 1
    with pytest.raises(ValueError):
        running.return_value

    # and once it ends (waited on without polling), SUCCESSFUL with its value; refresh() agrees
    done = backend().wait(result, 30)
    result.refresh()
    assert done.status == result.status == SUCCESSFUL
    assert result.return_value == done.return_value and result.return_value["attempt"] == 1
    assert result.enqueued_at <= result.started_at <= result.finished_at and result.worker_ids == running.worker_ids


def test_a_task_with_retries_ends_successful_on_attempt_3_with_two_errors(worker):
    result = tasks.flaky.enqueue(failures=2)  # OPTIONS["TASKS"]: 4 retries, 0.2 s backoff
    done = backend().wait(result, 60)
    assert done.status == SUCCESSFUL and done.return_value == {"attempt": 3} and done.attempts == 3
    assert [e.exception_class_path for e in done.errors] == ["builtins.RuntimeError", "builtins.RuntimeError"]
    assert Run.objects.filter(result_id=result.id).count() == 3


def test_a_cancelled_task_ends_failed(worker):
    # given a running task
    result = tasks.slow_count.enqueue(seconds=1.5)
    wait_for(lambda: Run.objects.filter(result_id=result.id).exists(), 30, interval=0.05, what="the task to start")

    # when it is cancelled, then it ends FAILED, its row cancelled; and a waiting one at once
    assert backend().cancel(result) is True
    done = backend().wait(result, 30)
    assert done.status == FAILED and Job.objects.get(pk=int(result.id)).status == Status.CANCELLED
    later = tasks.stamp.using(run_after=timezone.now() + dt.timedelta(hours=1)).enqueue()
    assert backend().cancel(later.id) is True
    assert backend().get_result(later.id).status == FAILED

