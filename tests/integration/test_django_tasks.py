"""The django.tasks backend (conveyor_tasks) in process, on the session's real PostgreSQL and
Redis: enqueue in the caller's transaction, every TaskResult field read from the row, the
priority mapping, refusals at enqueue, and each failed attempt's error kept (jobs.errors). Jobs are
run by the runner in this process (`runner.execute`); tests/acceptance/test_django_tasks_live.py
runs them on real workers."""
from __future__ import annotations

import datetime as dt

import pytest
from django.db import connection, transaction
from django.utils import timezone

from conveyor_tasks import compat, results, types
from examples.djtasks import tasks
from examples.djtasks.models import Run
from jobs.engine import recovery, registry, runner, store
from jobs.models import Job, Status
from tests.integration.conftest import RUNNER_IN_PROCESS
from tests.support import statements_sent

pytestmark = RUNNER_IN_PROCESS
WORKER = "node@test/1"
READY, RUNNING, FAILED, SUCCESSFUL = (compat.TaskResultStatus.READY, compat.TaskResultStatus.RUNNING,
                                      compat.TaskResultStatus.FAILED, compat.TaskResultStatus.SUCCESSFUL)


def _run(result) -> str:
    return runner.execute(int(result.id), WORKER)


def _run_a_failure_then_its_retry() -> None:
    """tasks.flaky, failing once: its first attempt, then its retry run at once (not at its backoff)."""
    result = tasks.flaky.enqueue(failures=1)
    _run(result)
    Job.objects.filter(pk=int(result.id)).update(run_after=timezone.now())
    _run(result)


def test_a_task_enqueued_in_a_rolled_back_transaction_leaves_no_row_and_no_signal():
    heard = []
    compat.task_enqueued.connect(lambda sender, task_result, **kw: heard.append(task_result.id), weak=False, dispatch_uid="t24")
    try:
        with pytest.raises(RuntimeError), transaction.atomic():
            result = tasks.add.enqueue(1, 2)
            assert Job.objects.filter(pk=int(result.id)).exists()  # the row is in the transaction
            raise RuntimeError("roll back")
        assert not Job.objects.filter(pk=int(result.id)).exists()
        assert heard == []
        committed = tasks.add.enqueue(1, 2)
        assert heard == [committed.id]  # sent once committed
    finally:
        compat.task_enqueued.disconnect(dispatch_uid="t24")


def test_a_task_is_a_job_type_named_by_its_module_path_on_its_queue_with_its_priority_mapped():
    result = tasks.add.enqueue(2, 3)
    job = Job.objects.get(pk=int(result.id))
    assert job.type == "examples.djtasks.tasks.add" and job.queue == "default"
    assert job.priority == types.priority(50) == 2
    assert job.input == {"args": [2, 3], "kwargs": {}, "backend": "default", "priority": 50}
    other = tasks.add.using(queue_name="emails", priority=-100).enqueue(1, 1)
    row = Job.objects.get(pk=int(other.id))
    assert (row.queue, row.priority) == ("emails", 9)
    assert [types.priority(p) for p in (100, 80, 79, 1, 0, -1, -80, -81, -100)] == [0, 0, 1, 4, 4, 5, 8, 9, 9]


def test_result_fields_follow_the_row_through_a_success():
    result = tasks.add.enqueue(20, 22)
    assert (result.status, result.enqueued_at is not None, result.started_at, result.finished_at) == (READY, True, None, None)
    assert result.args == [20, 22] and result.kwargs == {} and result.errors == [] and result.worker_ids == []
    assert _run(result) == "succeeded"
    result.refresh()
    assert result.status == SUCCESSFUL and result.return_value == 42 and result.attempts == 1
    assert result.worker_ids == [WORKER]
    assert result.enqueued_at <= result.started_at == result.last_attempted_at <= result.finished_at
    again = tasks.add.get_result(result.id)
    assert (again.status, again.return_value, again.args) == (SUCCESSFUL, 42, [20, 22])


def test_each_failed_attempt_keeps_its_error_and_the_task_succeeds_on_attempt_3():
    result = tasks.flaky.enqueue(failures=2)
    for expected in ("failed", "failed", "succeeded"):
        Job.objects.filter(pk=int(result.id)).update(run_after=timezone.now())  # its backoff, skipped
        assert _run(result) == expected
    result.refresh()
    assert result.status == SUCCESSFUL and result.return_value == {"attempt": 3} and result.attempts == 3
    assert [e.exception_class_path for e in result.errors] == ["builtins.RuntimeError"] * 2
    assert "attempt 1 fails on purpose" in result.errors[0].traceback and "attempt 2" in result.errors[1].traceback
    assert result.errors[0].exception_class is RuntimeError
    job = Job.objects.get(pk=int(result.id))
    assert [e["attempt"] for e in job.errors] == [1, 2] and all(e["worker"] == WORKER for e in job.errors)
    assert result.started_at < result.last_attempted_at  # the first attempt's start, the last's


def test_a_lost_worker_is_an_error_entry_of_its_attempt():
    result = tasks.add.enqueue(1, 1)
    store.claim(int(result.id), WORKER, 30)
    with connection.cursor() as cursor:  # setup: the lease lapsed
        cursor.execute("UPDATE jobs_job SET lease_expires_at = now() - interval '1 second' WHERE id = %s", [int(result.id)])
    recovery.reap()
    result.refresh()
    assert result.status == READY and len(result.errors) == 1
    assert result.errors[0].exception_class_path == results.WORKER_LOST and "lease expired" in result.errors[0].traceback
    assert _run(result) == "succeeded"
    result.refresh()
    assert result.status == SUCCESSFUL and result.attempts == 2 and result.worker_ids == [WORKER, WORKER]


def test_a_cancelled_task_is_failed_and_its_row_says_cancelled():
    result = tasks.add.using(run_after=timezone.now() + dt.timedelta(hours=1)).enqueue(1, 1)
    assert compat.task_backends["default"].cancel(result) is True
    result.refresh()
    assert result.status == FAILED and result.is_finished
    assert Job.objects.get(pk=int(result.id)).status == Status.CANCELLED


def test_run_after_is_the_rows_and_the_task_is_not_claimed_before():
    later = timezone.now() + dt.timedelta(hours=1)
    result = tasks.add.using(run_after=later).enqueue(1, 1)
    assert Job.objects.get(pk=int(result.id)).run_after == later
    assert result.task.run_after == later
    assert _run(result) == "skipped"


def test_an_async_task_and_a_task_taking_context_run():
    result = tasks.async_add.enqueue(4, 5)
    assert _run(result) == "succeeded"
    result.refresh()
    assert result.return_value == 9
    stamped = tasks.stamp.enqueue()
    assert _run(stamped) == "succeeded"
    assert Run.objects.get(result_id=stamped.id).attempt == 1


def test_enqueue_refuses_a_queue_not_listed_and_arguments_json_would_change():
    with pytest.raises(compat.InvalidTask, match="nowhere"):
        tasks.add.using(queue_name="nowhere")
    with pytest.raises(TypeError, match="args must be JSON"):
        tasks.add.enqueue({1, 2}, 3)
    with pytest.raises(ValueError, match="kwargs does not survive"):
        tasks.flaky.enqueue(failures={1: "a"})
    assert tasks.add.enqueue((1,), [2]).args == [[1], [2]]  # a tuple is a list, as JSON says


def test_get_result_of_an_unknown_id_or_a_plain_job_does_not_exist():
    backend = compat.task_backends["default"]
    for bad in ("nope", "999999999", "-1"):
        with pytest.raises(compat.TaskResultDoesNotExist):
            backend.get_result(bad)
    import jobs

    plain = jobs.enqueue("examples.echo", {"a": 1})
    with pytest.raises(compat.TaskResultDoesNotExist):
        backend.get_result(str(plain.pk))


def test_a_worker_declares_a_tasks_type_when_it_first_meets_its_name():
    registry.remove("examples.djtasks.tasks.stamp")
    jt = registry.get("examples.djtasks.tasks.stamp")  # the resolver imports the task
    assert jt.queue == "default" and jt.retries == 3
    assert registry.get("examples.djtasks.tasks.flaky").retries == 4  # OPTIONS["TASKS"]
    with pytest.raises(registry.InvalidJob):
        registry.get("examples.djtasks.tasks.no_such_task")


def test_signals_fire_in_the_worker_around_the_call():
    seen = []

    def hear(signal_name):
        return lambda sender, task_result, **kw: seen.append((signal_name, task_result.status))

    started, finished = hear("started"), hear("finished")
    compat.task_started.connect(started, weak=False, dispatch_uid="t24s")
    compat.task_finished.connect(finished, weak=False, dispatch_uid="t24f")
    try:
        _run_a_failure_then_its_retry()
    finally:
        compat.task_started.disconnect(dispatch_uid="t24s")
        compat.task_finished.disconnect(dispatch_uid="t24f")
    assert seen == [("started", RUNNING), ("finished", READY), ("started", RUNNING), ("finished", SUCCESSFUL)]


def test_a_runs_task_result_is_its_row_as_the_claim_returned_it_and_nothing_reads_the_row_again():
    # given a task whose first attempt fails, and a receiver of task_started reading the row itself
    seen = []

    def started(sender, task_result, **kw):
        seen.append((task_result, compat.task_backends["default"].get_result(task_result.id)))

    compat.task_started.connect(started, weak=False, dispatch_uid="t28s")
    try:
        _run_a_failure_then_its_retry()
    finally:
        compat.task_started.disconnect(dispatch_uid="t28s")
    # then each attempt's TaskResult is the row's, field for field: the second one with the
    # first attempt's error and both attempts' workers
    assert [given == read for given, read in seen] == [True, True], seen
    second = seen[1][0]
    assert second.status == RUNNING and len(second.errors) == 1 and second.worker_ids == [WORKER, WORKER]
    assert second.started_at < second.last_attempted_at and second.enqueued_at <= second.started_at

    # and a run sends PostgreSQL its claim and its outcome only: no statement reads the row again
    plain = tasks.add.enqueue(1, 2)
    with statements_sent("default", store.CLAIMS) as sent:
        assert _run(plain) == "succeeded"
    assert len(sent) == 2 and not any("SELECT" in statement.split("(")[0] for statement in sent), sent


def test_errors_are_in_the_api_job():
    from tests.support import api_client

    result = tasks.flaky.enqueue(failures=5)
    _run(result)
    body = api_client().get(f"/api/jobs/{result.id}").json()
    assert len(body["errors"]) == 1 and body["errors"][0]["attempt"] == 1 and "RuntimeError" in body["errors"][0]["error"]


def test_the_framework_is_djangos_own_from_django_6_and_the_backport_before():
    import django

    assert compat.BUILT_IN == (django.VERSION >= (6, 0))
    assert compat.Task.__module__ == ("django.tasks.base" if compat.BUILT_IN else "django_tasks.base")
    assert type(compat.task_backends["default"]).__name__ == "ConveyorBackend"


def test_a_task_as_a_chain_step_and_group_member_runs_in_order():
    import jobs

    backend = compat.task_backends["default"]
    group = jobs.Group([backend.step(tasks.add, 3, 4), backend.step(tasks.async_add, 5, 6)])
    chain = jobs.start_chain([backend.step(tasks.add, 1, 2), group, backend.step(tasks.stamp)])
    for _ in range(4):
        for job in Job.objects.filter(chain=chain, status=Status.PENDING):
            assert runner.execute(job.pk, WORKER) == "succeeded"
    outputs = list(Job.objects.filter(chain=chain).order_by("chain_index", "member").values_list("output", flat=True))
    assert outputs == [3, 7, 11, {"attempt": 1}]
    assert backend.get_result(str(Job.objects.get(chain=chain, chain_index=0).pk)).return_value == 3


def test_options_state_a_tasks_retries_timeout_limits_and_schedule(settings):
    from conveyor_tasks.backend import ConveyorBackend

    backend = ConveyorBackend("default", {"OPTIONS": {"RETRIES": 1, "TASKS": {"examples.djtasks.tasks.add": {
        "retries": 7, "timeout": 30, "rate_limit": "5/s", "concurrency": 2, "backoff": 0.5,
        "schedule": {"cron": "0 2 * * *", "timezone": "Europe/Paris", "args": [1, 2]}}}}})
    registry.remove("examples.djtasks.tasks.add")
    try:
        jt = types.declare(tasks.add, backend)
        assert (jt.retries, jt.timeout, jt.rate_limit.text, jt.concurrency, jt.backoff.base) == (7, 30, "5/s", 2, 0.5)
        assert jt.schedule.cron == "0 2 * * *" and jt.schedule.input == {"args": [1, 2], "kwargs": {}, "backend": "default"}
        with pytest.raises(registry.ImproperlyDeclared, match="unknown option 'retry'"):
            types.options(tasks.add, ConveyorBackend("default", {"OPTIONS": {"TASKS": {"examples.djtasks.tasks.add": {"retry": 1}}}}))
    finally:
        registry.remove("examples.djtasks.tasks.add")


def test_a_worker_handed_back_after_a_crash_or_a_drain_leaves_an_error_entry_each():
    result = tasks.add.enqueue(1, 1)
    for drained, expected in ((False, "worker process died"), (True, "handed back: worker")):
        store.claim(int(result.id), store.worker_name("node@crash", 42, "start1"), 30)
        assert len(store.hand_back("node@crash", "start1", drained=drained)) == 1
        result.refresh()
        assert expected in result.errors[-1].traceback and result.errors[-1].exception_class_path == results.WORKER_LOST
    assert [e["attempt"] for e in Job.objects.get(pk=int(result.id)).errors] == [1, 2]
    assert result.status == READY and result.attempts == 2


def test_an_atomic_task_keeps_only_the_writes_of_its_attempt_that_succeeded():
    """OPTIONS["TASKS"][path]["atomic"]: the task's database writes commit with its outcome, so the
    attempts that failed left none (docs/atomic.md); `flaky` records a Run row, then fails twice."""
    from conveyor_tasks.backend import ConveyorBackend

    backend = ConveyorBackend("default", {"OPTIONS": {"TASKS": {"examples.djtasks.tasks.flaky": {
        "atomic": True, "retries": 2, "backoff": 0}}}})
    registry.remove("examples.djtasks.tasks.flaky")
    try:
        assert types.declare(tasks.flaky, backend).atomic is True
        result = tasks.flaky.enqueue(2)
        assert [_run(result) for _ in range(3)] == ["failed", "failed", "succeeded"]
        assert list(Run.objects.filter(result_id=result.id).values_list("attempt", flat=True)) == [3]
        result.refresh()
        assert result.status == SUCCESSFUL and result.return_value == {"attempt": 3}
        assert [e.traceback.count("fails on purpose") > 0 for e in result.errors] == [True, True]
    finally:
        registry.remove("examples.djtasks.tasks.flaky")
