"""conveyor_celery's decisions, in this process on the real PostgreSQL and Redis (the runner run
here, as a worker runs it): what a call writes, what a run records, what is refused, beat ticks.
Real workers run the same tasks in tests/acceptance/test_from_celery_live.py."""
from __future__ import annotations

import datetime as dt

import celery
import pytest
from celery import chain, chord, group
from django.db import transaction
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from conveyor_celery import AsyncResult, Unsupported, shared_task
from conveyor_celery.beat import Scheduler
from conveyor_celery.errors import exception_from
from django.core.cache import cache

from examples.celery_django.demoapp.tasks import (
    add, charge, div, error_handler, fetch, get_tweets, legacy_remember, mul, my_task, requeues, resize, tsum,
    upload_files, xsum,
)
from examples.models import Effect
from jobs.engine import runner
from jobs.models import Chain, Job
from project import celery_app
from tests.integration.conftest import RUNNER_IN_PROCESS

pytestmark = RUNNER_IN_PROCESS
WORKER = "node@test/1"


def run(result) -> Job:
    runner.execute(int(result.id), worker=WORKER)
    return Job.objects.get(pk=int(result.id))


def test_a_call_writes_its_row_in_the_callers_transaction():
    # when the caller's transaction rolls back, neither row nor result is left
    with pytest.raises(RuntimeError), transaction.atomic():
        rolled = add.delay(1, 2)
        assert Job.objects.filter(pk=int(rolled.id)).exists()
        raise RuntimeError("rollback")
    assert not Job.objects.filter(pk=int(rolled.id)).exists()
    # a committed call is a row of the task's job type, its arguments as JSON, due later with countdown
    result = mul.apply_async((2,), {"y": 3}, countdown=60, priority=2)
    job = Job.objects.get(pk=int(result.id))
    assert (job.type, job.queue, job.priority, job.input["args"], job.input["kwargs"]) == (mul.name, "default", 2, [2], {"y": 3})
    assert job.run_after > dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=50)
    assert AsyncResult(result.id).state == "PENDING"


def test_retry_countdown_and_max_retries_are_the_rows_attempts_and_run_after():
    # self.retry(countdown=0.2): the attempt failed, due again in about 0.2 s, state RETRY
    result = charge.delay(1, 5)
    job = run(result)
    assert (job.status, job.attempt, job.max_attempts) == ("failed", 1, 3)
    assert (job.run_after - job.finished_at if job.finished_at else job.run_after - job.updated_at) < dt.timedelta(seconds=1)
    assert result.state == "RETRY" and isinstance(result.result, ValueError)
    # a plain exception: FAILURE on its first attempt (Celery retries only on retry()/autoretry_for)
    failed = div.delay(1, 0)
    assert run(failed).status == "dead" and failed.state == "FAILURE"
    assert isinstance(failed.result, ZeroDivisionError) and str(failed.result) == "division by zero"
    # autoretry_for with retry_backoff=1, no jitter: 1 s after the first failure
    flaky = fetch.delay("u", 5)
    job = run(flaky)
    assert job.status == "failed" and dt.timedelta(seconds=0.5) < job.run_after - job.updated_at < dt.timedelta(seconds=1.5)


def test_a_chain_is_planned_up_front_with_celerys_argument_passing():
    result = chain(add.s(2, 2), mul.s(4), add.si(1, 1))()
    plan = Chain.objects.get(pk=int(result.id.split(":")[1])).steps
    assert [s["type"] for s in plan] == [add.name, mul.name, add.name]
    assert [s["input"]["celery"].get("prev", False) for s in plan] == [False, True, False]
    # a chord is a group then its body
    res = chord([add.s(1, 1), add.s(2, 2)], xsum.s())()
    steps = Chain.objects.get(pk=int(res.id.split(":")[1])).steps
    assert [m["type"] for m in steps[0]["group"]] == [add.name, add.name] and steps[1]["type"] == xsum.name


def test_refused_with_a_clear_error():
    with pytest.raises(Unsupported, match="serializer 'pickle' is refused"):
        @shared_task(serializer="pickle")
        def pickled(x):
            return x
    with pytest.raises(Unsupported, match="starmap items must be sequences"):
        add.starmap([1, 2]).apply_async()
    with pytest.raises(Unsupported, match="link=/link_error= on a map/starmap"):
        tsum.map([[1]]).apply_async(link=mul.s(2))
    with pytest.raises(Unsupported, match="mixes durable tasks with plain Celery tasks"):
        chain(add.s(1, 1), legacy_remember.s("k"))()
    with pytest.raises(Unsupported, match="queue='other' at call time"):
        resize.apply_async((1,), queue="other")
    with pytest.raises(Unsupported, match="a chain inside a group"):
        group([add.s(1, 1) | mul.s(2)])()
    with pytest.raises(TypeError):  # Celery's own check of the arguments (typing=True)
        add.delay(1, 2, 3)
    with pytest.raises(Exception, match="must be JSON"):
        add.delay(object(), 1)


def test_exceptions_are_rebuilt_from_the_stored_traceback():
    assert type(exception_from("Traceback...\nZeroDivisionError: division by zero")) is ZeroDivisionError
    assert type(exception_from("...\njobs.engine.registry.Permanent: KeyError: 'k'")) is KeyError
    unknown = exception_from("...\nthirdparty.errors.PaymentDeclined: no funds")
    assert type(unknown).__name__ == "PaymentDeclined" and str(unknown) == "no funds"


def test_a_beat_entry_naming_a_durable_task_makes_one_job_per_tick():
    every = IntervalSchedule.objects.create(every=60, period=IntervalSchedule.SECONDS)
    PeriodicTask.objects.create(name="add-every-minute", task=add.name, interval=every, args="[2, 3]")
    scheduler = Scheduler(app=celery_app, lazy=True)
    entry = Scheduler.Entry(PeriodicTask.objects.get(name="add-every-minute"), app=celery_app)
    first = scheduler.apply_async(entry, advance=False)
    again = scheduler.apply_async(entry, advance=False)  # the same tick fired twice (two beats)
    assert first.id == again.id
    job = Job.objects.get(pk=int(first.id))
    assert (job.type, job.input["args"]) == (add.name, [2, 3])
    assert job.idempotency_key.startswith("conveyor:schedule:celery:add-every-minute:")


def test_a_beat_schedule_entry_of_the_settings_becomes_a_periodic_task_whose_ticks_are_jobs():
    # CELERY_BEAT_SCHEDULE, as Celery's documentation writes it
    before = celery_app.conf.beat_schedule
    celery_app.conf.beat_schedule = {"add-every-30-seconds": {"task": add.name, "schedule": 30.0, "args": (16, 16)}}
    try:
        scheduler = Scheduler(app=celery_app)  # django-celery-beat copies the entries into its table
    finally:
        celery_app.conf.beat_schedule = before
    row = PeriodicTask.objects.get(name="add-every-30-seconds")
    sent = scheduler.apply_async(Scheduler.Entry(row, app=celery_app), advance=False)
    job = Job.objects.get(pk=int(sent.id))
    assert (job.type, job.input["args"]) == (add.name, [16, 16])
    scheduler.close()


def test_an_app_task_with_the_durable_base_is_a_job_type_too():
    from conveyor_celery import DurableTask
    from jobs.engine import registry

    @celery_app.task(base=DurableTask, name="demo.app-task", bind=True, max_retries=1)
    def app_task(self, x):
        return {"x": x, "id": self.request.id}

    try:
        result = app_task.delay(3)
        assert registry.get("demo.app-task").retries == 1
        job = run(result)
        assert (job.status, job.output) == ("succeeded", {"x": 3, "id": result.id})
    finally:
        registry.remove("demo.app-task")
        from conveyor_celery.declarations import declared

        declared.pop("demo.app-task", None)


def test_a_success_is_its_outcome_statement_alone_and_the_run_starts_no_thread():
    import threading

    from conveyor_celery import DurableTask
    from jobs.engine import registry, store
    from tests.support import statements_sent

    # given a converted task that says which threads run beside it
    @celery_app.task(base=DurableTask, name="demo.threads")
    def threads():
        return sorted(thread.name for thread in threading.enumerate())

    try:
        result = threads.delay()
        # when a worker runs it
        with statements_sent("default", store.CLAIMS) as sent:
            runner.execute(int(result.id), worker=WORKER)
        job = Job.objects.get(pk=int(result.id))
        # then it succeeded; its revoke watch is a deadline of the process's thread, not a thread
        # of its own; and PostgreSQL got the claim and the success, no transaction around it
        assert job.status == "succeeded"
        assert not [name for name in job.output if name.startswith("revoke-watch")], job.output
        assert len(sent) == 2 and not {"BEGIN", "COMMIT"} & {statement.strip().upper() for statement in sent}, sent
    finally:
        registry.remove("demo.threads")
        from conveyor_celery.declarations import declared

        declared.pop("demo.threads", None)


def test_task_routes_by_name_and_by_glob_choose_the_queue(monkeypatch):
    from conveyor_celery.task import _route

    monkeypatch.setitem(celery_app.conf, "task_routes", {"billing.charge": {"queue": "payments"}, "feed.tasks.*": {"queue": "feeds"}})
    assert _route("billing.charge", {}) == "payments"
    assert _route("feed.tasks.import_feed", {}) == "feeds"
    assert _route("other.task", {}) == "default"
    assert _route("feed.tasks.x", {"queue": "mine"}) == "mine"
    monkeypatch.setitem(celery_app.conf, "task_routes", ["proj.routers.route_task"])
    with pytest.raises(Unsupported, match="router function"):
        _route("other.task", {})


def test_a_permanent_failure_stored_before_the_engine_moved_is_rebuilt_as_its_exception():
    # Rows failed before jobs/registry.py moved to jobs/engine/ name the old module.
    assert type(exception_from("...\njobs.registry.Permanent: KeyError: 'k'")) is KeyError


@shared_task(bind=True, atomic=True, max_retries=1)
def record_then_retry(self, order):
    """Written as Celery's documentation writes a retrying task, with Conveyor's `atomic=True`."""
    Effect.objects.create(job_id=int(self.request.id), attempt=self.request.retries + 1, worker_pid=0)
    if self.request.retries == 0:
        raise self.retry(countdown=0)
    return {"order": order, "retries": self.request.retries}


def test_an_atomic_task_keeps_only_the_writes_of_its_attempt_that_succeeded():
    # given a task that writes a row, then retries itself once
    result = record_then_retry.delay(7)
    # when its first attempt runs: its write is rolled back with it
    assert run(result).status == "failed"
    assert not Effect.objects.filter(job_id=int(result.id)).exists()
    # and its retry writes once and succeeds
    assert run(result).status == "succeeded"
    assert list(Effect.objects.filter(job_id=int(result.id)).values_list("attempt", flat=True)) == [2]
    assert result.get(timeout=1) == {"order": 7, "retries": 1}


def test_flowers_apply_and_async_apply_read_a_calls_result_through_its_backend():
    # Flower's /api/task/async-apply (and /apply) call the task, then ask the result for its
    # backend (a DisabledBackend means "no state to show") and its connection_errors: our
    # AsyncResult had no `backend`, and Flower answered 500 (AttributeError) after the job was made
    from flower.api.tasks import BaseTaskHandler

    # given a call of a durable task, as Flower's handler makes it (task.apply_async)
    result = add.apply_async(args=[4, 5])
    # then Flower finds a configured backend and reads the row's state through it
    assert BaseTaskHandler.backend_configured(result) is True
    assert BaseTaskHandler.backend_connection_errors(result) == ()
    assert BaseTaskHandler.result_state(result) == "PENDING"
    # and once the job ran, the state and result Flower shows are the row's
    run(result)
    assert (result.state, result.get(timeout=5, propagate=False)) == ("SUCCESS", 9)


def _run_chain_step(chain_id: int, index: int) -> list[Job]:
    jobs = list(Job.objects.filter(chain_id=chain_id, chain_index=index).order_by("member"))
    for job in jobs:
        runner.execute(job.pk, worker=WORKER)
    return [Job.objects.get(pk=job.pk) for job in jobs]


def test_map_starmap_and_chunks_as_celerys_canvas_guide_writes_them():
    # map: one job of the task, calling its function per item (the canvas guide's ~tsum.map(...))
    mapped = tsum.map([list(range(10)), list(range(100))]).apply_async()
    job = run(mapped)
    assert (job.type, job.status, job.output) == (tsum.name, "succeeded", [45, 4950])
    assert mapped.get(timeout=5) == [45, 4950]
    # starmap, delayed as the guide delays it: one job, due in 10 s
    later = add.starmap(zip(range(10), range(10))).apply_async(countdown=10)
    assert Job.objects.get(pk=int(later.id)).run_after > dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=8)
    assert run(add.starmap(zip(range(10), range(10))).apply_async()).output == [0, 2, 4, 6, 8, 10, 12, 14, 16, 18]
    # chunks: a group of starmaps, one job per chunk; the result is the list of the chunks' lists
    res = add.chunks(zip(range(100), range(100)), 10)()
    chain_id = int(res.id.split(":")[1])
    assert [j.status for j in _run_chain_step(chain_id, 0)] == ["succeeded"] * 10
    assert res.get(timeout=5) == [[2 * (10 * c + i) for i in range(10)] for c in range(10)]
    # a chunks inside a chord: its starmaps are the header, the body gets their lists
    body = chord(add.chunks(zip(range(4), range(4)), 2), xsum.s())()
    steps = Chain.objects.get(pk=int(body.id.split(":")[1])).steps
    assert [m["input"]["celery"]["map"]["items"] for m in steps[0]["group"]] == [[[0, 0], [1, 1]], [[2, 2], [3, 3]]]
    assert steps[1]["type"] == xsum.name


def test_a_list_of_links_each_gets_the_tasks_result():
    # the calling guide: add.apply_async((2, 2), link=[add.s(16), other_task.s()]): every callback
    # is called with the parent's return value (not one after the other)
    result = add.apply_async((2, 2), link=[add.s(16), mul.s(10)])
    assert run(result).output == 4
    chain_id = Job.objects.get(pk=int(result.id)).chain_id
    assert [j.output for j in _run_chain_step(chain_id, 1)] == [20, 40]


def test_ignore_result_as_a_call_option():
    # the calling guide: apply_async((1, 2), ignore_result=True).get() is None; False keeps it
    ignored = add.apply_async((1, 2), ignore_result=True)
    assert run(ignored).output is None and ignored.get(timeout=5) is None
    kept = add.apply_async((1, 2), ignore_result=False)
    assert run(kept).output == 3 and kept.get(timeout=5) == 3


def test_an_errback_taking_request_exc_traceback_gets_them():
    # the calling guide's error_handler(request, exc, traceback), linked with link_error=error_handler.s()
    failed = div.apply_async((1, 0), link_error=error_handler.s())
    assert run(failed).status == "dead"
    errback = Job.objects.get(type=error_handler.name, input__celery__errback_of=int(failed.id))
    runner.execute(errback.pk, worker=WORKER)
    assert Job.objects.get(pk=errback.pk).status == "succeeded"
    seen = cache.get(f"demo:error_handler:{failed.id}")
    assert seen["id"] == failed.id and seen["exc"] == "ZeroDivisionError('division by zero')"
    assert "ZeroDivisionError: division by zero" in seen["traceback"]


def test_a_base_task_classs_handlers_are_called():
    # the tasks guide's MyTask(Task) with before_start / on_success / on_failure / after_return,
    # used as @shared_task(base=MyTask)
    ok = my_task.delay(101, 2)
    assert run(ok).output == 103
    keys = ("before_start", "on_success", "on_failure", "after_return")
    seen = {k: cache.get(f"demo:handlers:101:{k}") for k in keys}
    assert seen == {"before_start": ok.id, "on_success": 103, "on_failure": None, "after_return": "SUCCESS"}
    bad = my_task.delay(102, "x")
    assert run(bad).status == "dead"
    seen = {k: cache.get(f"demo:handlers:102:{k}") for k in keys}
    assert seen["on_success"] is None and "TypeError" in seen["on_failure"] and seen["after_return"] == "FAILURE"


@shared_task(bind=True, name="tests.from_celery.replacer")
def replacer(self, x):
    return self.replace(add.s(x, x))  # the tasks guide's self.replace(sig)


def test_self_replace_fails_the_job_naming_it():
    job = run(replacer.delay(2))
    assert job.status == "dead" and "self.replace() is not supported on durable tasks" in job.error
    assert not Job.objects.filter(type=add.name, input__args=[2, 2]).exists()  # no orphan canvas


def test_update_state_as_the_tasks_guide_writes_it(monkeypatch):
    # update_state(state='PROGRESS', meta=...): the running row shows it (state, info, percent),
    # read back after each report as another process reads it
    from jobs.engine import store

    progress = upload_files.delay(["a", "b", "c"])
    seen = []
    original = store.progress

    def report_and_read(job_id, attempt, percent, message):
        original(job_id, attempt, percent, message)
        seen.append((AsyncResult(progress.id).state, AsyncResult(progress.id).info,
                     Job.objects.values_list("progress", flat=True).get(pk=job_id)))

    monkeypatch.setattr(store, "progress", report_and_read)
    assert run(progress).output == 3
    assert seen == [("PROGRESS", {"current": i, "total": 3}, 100 * i // 3) for i in range(3)]
    assert progress.state == "SUCCESS"


def test_ignore_and_reject_as_the_tasks_guide_writes_them():
    # update_state(state=SUCCESS, meta=timeline) then raise Ignore(): SUCCESS with that result
    tweets = get_tweets.delay("ann")
    assert run(tweets).status == "succeeded" and tweets.get(timeout=5) == ["ann: hello", "ann: again"]
    # Reject('no reason', requeue=True): delivered again at once, redelivered the second time
    again = requeues.delay()
    job = run(again)
    assert (job.status, job.attempt) == ("failed", 1) and job.run_after <= dt.datetime.now(dt.timezone.utc)
    assert run(again).output == "received two times" and again.state == "SUCCESS"


def test_a_chord_bodys_errback_is_called_once_when_a_header_member_fails():
    # the canvas guide: (group(...) | tsum.s().on_error(on_chord_error.s())).delay(), a header
    # member raising: the body never runs; its errback is called once, with the failure
    from examples.celery_django.demoapp.tasks import on_chord_error, raising_task

    c = (group([add.s(4, 4), raising_task.s(), raising_task.s()]) | tsum.s().on_error(on_chord_error.s())).delay()
    chain_id = int(c.id.split(":")[1])
    members = _run_chain_step(chain_id, 0)
    assert [m.status for m in members] == ["succeeded", "dead", "dead"]
    errbacks = Job.objects.filter(type=on_chord_error.name)
    assert errbacks.count() == 1  # two members died, the chord failed once
    runner.execute(errbacks.get().pk, worker=WORKER)
    assert cache.get(f"demo:on_chord_error:{members[1].pk}").startswith("KeyError(")
    with pytest.raises(KeyError):
        c.get(timeout=5)


def test_a_chains_parents_and_a_groups_waiting_and_join():
    # the canvas guide: res = chain(add.s(4, 4), mul.s(8), mul.s(10))(); res.parent.get() -> 64
    res = chain(add.s(4, 4), mul.s(8), mul.s(10))()
    chain_id = int(res.id.split(":")[1])
    assert res.parent.state == "PENDING" and not res.parent.ready()
    for index in range(3):
        _run_chain_step(chain_id, index)
    assert res.get(timeout=5) == 640
    assert res.parent.get(timeout=5) == 64 and res.parent.parent.get(timeout=5) == 8
    assert res.parent.parent.parent is None
    assert AsyncResult(res.id).parent.get(timeout=5) == 64  # rebuilt from the id alone
    # a group's result: waiting() while a member has not run, join() its results in order
    result = group([add.s(2, 2), add.s(4, 4)]).apply_async()
    assert result.waiting() and not result.ready()
    _run_chain_step(int(result.id.split(":")[1]), 0)
    assert not result.waiting() and result.join(timeout=5) == [4, 8]


def test_a_beat_entrys_crontab_kwargs_and_options_as_the_periodic_tasks_guide_writes_them():
    # the guide's crontab entry with kwargs, and options: expires (seconds) and priority, applied
    # to the tick's job (expires counted from the tick's time: two beats write the same job)
    from celery.schedules import crontab

    before = celery_app.conf.beat_schedule
    celery_app.conf.beat_schedule = {
        "add-every-monday-morning": {"task": add.name, "schedule": crontab(hour=7, minute=30, day_of_week=1),
                                     "args": (16,), "kwargs": {"y": 16},
                                     "options": {"expire_seconds": 10, "priority": 2}},
    }
    try:
        scheduler = Scheduler(app=celery_app)
    finally:
        celery_app.conf.beat_schedule = before
    entry = Scheduler.Entry(PeriodicTask.objects.get(name="add-every-monday-morning"), app=celery_app)
    sent = scheduler.apply_async(entry, advance=False)
    again = scheduler.apply_async(entry, advance=False)
    job = Job.objects.get(pk=int(sent.id))
    assert again.id == sent.id and (job.input["args"], job.input["kwargs"], job.priority) == ([16], {"y": 16}, 2)
    tick = dt.datetime.fromisoformat(job.idempotency_key.split("add-every-monday-morning:")[1].replace("Z", "+00:00"))
    assert dt.datetime.fromisoformat(job.input["celery"]["expires"]) == tick + dt.timedelta(seconds=10)
    scheduler.close()


class BaseTaskWithRetry(celery.Task):  # the tasks guide's class-based retry options, verbatim
    autoretry_for = (TypeError,)
    max_retries = 5
    retry_backoff = True
    retry_backoff_max = 700
    retry_jitter = False


@shared_task(base=BaseTaskWithRetry, name="tests.from_celery.with_base_retry")
def with_base_retry(x):
    raise TypeError(f"not yet: {x}")


def test_a_base_class_with_retry_options_retries_as_it_declares():
    job = run(with_base_retry.delay(1))
    assert (job.status, job.attempt, job.max_attempts) == ("failed", 1, 6)  # max_retries = 5, from the class
    assert dt.timedelta(seconds=0.5) < job.run_after - job.updated_at < dt.timedelta(seconds=1.5)  # backoff 1 s


class FailWhaleError(Exception):
    pass


@shared_task(autoretry_for=(FailWhaleError,), retry_kwargs={'max_retries': 5}, name="tests.from_celery.refresh_timeline")
def refresh_timeline(user):  # the tasks guide's automatic retry with retry_kwargs
    raise FailWhaleError(user)


def test_retry_kwargs_max_retries_is_the_rows_attempts():
    job = run(refresh_timeline.delay("ann"))
    assert (job.status, job.max_attempts) == ("failed", 6)  # max_retries 5 from retry_kwargs, above the default 3
    for _ in range(5):
        Job.objects.filter(pk=job.pk).update(run_after=dt.datetime.now(dt.timezone.utc))
        job = run(AsyncResult(str(job.pk)))
    assert (job.status, job.attempt) == ("dead", 6) and "FailWhaleError" in job.error


def test_send_task_by_name_of_a_durable_task_makes_its_job():
    # the calling guide's tip: app.send_task('tasks.add', ...) for a task not imported here
    sent = celery_app.send_task(add.name, args=[2, 2], countdown=60)
    job = Job.objects.get(pk=int(sent.id))
    assert (job.type, job.input["args"]) == (add.name, [2, 2]) and job.run_after > dt.datetime.now(dt.timezone.utc)
    # a Celery message of the durable task run by a worker (sent by a process that did not know):
    # its job, keyed by the message's id; the message again (redelivered) finds the same job
    for _ in range(2):  # as Celery's tracer calls it: its request pushed, then the task
        add.push_request(id="msg-1", args=[20, 22], kwargs={}, called_directly=False, is_eager=False)
        try:
            assert add(20, 22) is None
        finally:
            add.pop_request()
    [job] = Job.objects.filter(idempotency_key="celery:msg-1")
    runner.execute(job.pk, worker=WORKER)
    assert AsyncResult("msg-1").get(timeout=5) == 42
    assert add(1, 2) == 3  # a direct call still runs the function here


def test_task_always_eager_runs_calls_here_as_celery_does():
    # a project's test settings (CELERY_TASK_ALWAYS_EAGER = True): calls run at once in the
    # caller's process, as Celery runs them, and write no row
    before = Job.objects.count()
    add.app.conf.task_always_eager = True
    try:
        assert add.delay(2, 2).get() == 4
        assert chain(add.s(4, 4), mul.s(8))().get() == 64
        assert group(add.s(i, i) for i in range(3))().get() == [0, 2, 4]
        assert ~tsum.map([[1, 2], [3]]) == [3, 3]
    finally:
        add.app.conf.task_always_eager = False
    assert Job.objects.count() == before


def test_a_call_by_name_of_a_job_type_makes_its_job_and_refuses_what_it_cannot_make():
    # Celery's send_task by name (Flower's send-task, `celery call`): a job type's name sent a
    # Celery message that every worker discarded as unregistered
    from celery.result import AsyncResult as CeleryAsyncResult

    from conveyor_celery.calls import RefusedCall

    # when a job type is called by name with its input as kwargs
    result = celery_app.send_task("examples.echo", kwargs={"by": "name"}, countdown=60)
    # then its job is made, due later, and the result's id is the job's id
    job = Job.objects.get(pk=int(result.id))
    assert (job.type, job.input, job.status) == ("examples.echo", {"by": "name"}, "pending")
    assert job.run_after > job.created_at + dt.timedelta(seconds=50)
    # and the app's own result backend reads its row by that id (Flower's /api/task/result/<id>)
    assert CeleryAsyncResult(result.id, app=celery_app).state == "PENDING"
    now = celery_app.send_task("examples.echo", args=[{"one": "object"}])
    run(now)
    assert CeleryAsyncResult(now.id, app=celery_app).get(timeout=5) == {"one": "object"}
    # and an input the type refuses is refused naming the field; so is a name that is no job type
    with pytest.raises(RefusedCall, match=r"input\.seconds"):
        celery_app.send_task("examples.sleep", kwargs={"seconds": "x"})
    with pytest.raises(RefusedCall, match="no job type or task named 'examples.nosuch'"):
        celery_app.send_task("examples.nosuch")
    with pytest.raises(RefusedCall, match="not supported for a job"):
        celery_app.send_task("examples.echo", kwargs={}, queue="images")
    # and options given no value, as `celery call` passes all of its own, are no refusal
    assert celery_app.send_task("examples.echo", kwargs={}, queue=None, exchange=None, serializer=None).id.isdigit()


def test_an_abort_through_the_apps_backend_cancels_the_job():
    # Celery's AbortableAsyncResult.abort() (Flower's /api/task/abort/<id>) stores ABORTED in the
    # backend for the task to notice: the rows backend stored nothing, and the job ran on
    from celery.contrib.abortable import AbortableAsyncResult

    job = Job.objects.create(type="examples.echo", queue="default", status="pending", input={})
    AbortableAsyncResult(str(job.pk), app=celery_app).abort()
    assert Job.objects.get(pk=job.pk).status == "cancelled"
    # and an id that names no job is no error
    AbortableAsyncResult("99999999999999999999", app=celery_app).abort()
    AbortableAsyncResult("chain:x", app=celery_app).abort()
