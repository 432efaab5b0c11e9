"""The sample Celery project (examples/celery_django, "First steps with Django" layout) on real
Conveyor workers: its tests are written as Celery users write them (`.delay().get()`, canvas,
`AsyncResult`), and pass once its one line (`from conveyor_celery import shared_task`) is switched.

Workers are real `manage.py start` processes with the sample app installed
(CONVEYOR_TEST_APPS); no eager mode, no mocks.
"""
from __future__ import annotations

import datetime as dt
import time
import uuid

import pytest
from celery import chain, chord, group
from celery.exceptions import TaskRevokedError
from celery.exceptions import TimeoutError as CeleryTimeoutError
from django.core.cache import cache

from conveyor_celery import AsyncResult, GroupResult
from examples.celery_django.demoapp import tests as sample_tests
from examples.celery_django.demoapp.tasks import (
    add, div, error_handler, fetch, get_tweets, hello, legacy_remember, mul, my_task, on_chord_error, on_error, ping, requeues,
    resize, slow, slow_add, sleep_then_remember, tsum, upload_files, xsum,
)
from jobs.models import Job
from tests.acceptance.test_upstream_failure_modes import visibility_timeout_lapses
from tests.support import kill_tree, queue_length, unacked_count, wait_for

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True, databases="__all__"), pytest.mark.usefixtures("stop_together")]

SAMPLE = {"CONVEYOR_TEST_APPS": "examples.celery_django.demoapp"}


def celery_worker(live, name="celery-sample", queues="default,images", concurrency="4"):
    """A Conveyor worker with the sample app installed (Celery's pytest plugin calls its own
    fixture `celery_worker`)."""
    [worker] = [live.start("--queues", queues, "--concurrency", concurrency, "--pool", "prefork", mode="worker", name=name, env=SAMPLE)]
    return worker


def test_the_sample_projects_own_tests_pass_on_real_workers(live):
    # given a worker with the sample app, when the sample's own tests run (examples/celery_django/
    # demoapp/tests.py: Celery's API only, unchanged by the one line), then each passes
    celery_worker(live)
    ran = []
    for name, test in vars(sample_tests).items():
        if name.startswith("test_") and callable(test):
            test()
            ran.append(name)
    assert len(ran) >= 10


def test_calls_results_and_retries_as_rows(live):
    celery_worker(live)

    # a result is the row: rebuilt from its id alone; a failure's attempt counted once
    result = mul.apply_async((3,), {"y": 5})
    assert AsyncResult(result.id).get(timeout=20) == 15
    failing = div.delay(1, 0)
    with pytest.raises(ZeroDivisionError):
        failing.get(timeout=20)
    assert Job.objects.get(pk=int(failing.id)).attempt == 1  # Celery does not retry a plain exception
    assert fetch.delay("https://example.com", 1).get(timeout=30)["retries"] == 1

    # queue and priority from the declaration: the job went to the images queue
    resized = resize.delay(64)
    assert resized.get(timeout=20) == {"width": 64, "queue": "images"}
    assert Job.objects.get(pk=int(resized.id)).queue == "images"

    # soft_time_limit: the task is stopped, FAILURE
    with pytest.raises(Exception, match="SoftTimeLimitExceeded"):
        slow.delay(5).get(timeout=30)

    # get(timeout=) on a task not yet due: Celery's TimeoutError
    later = add.apply_async((1, 1), countdown=30)
    with pytest.raises(CeleryTimeoutError):
        later.get(timeout=0.5)
    assert later.state == "PENDING"
    # revoke: Conveyor's cancel, REVOKED
    later.revoke()
    assert later.state == "REVOKED"
    with pytest.raises(TaskRevokedError):
        later.get(timeout=5)

    # revoke of a running task stops it (Celery's terminate=True, without killing the process)
    key = f"demo:revoked:{uuid.uuid4().hex}"
    running = sleep_then_remember.delay(8, key)
    wait_for(lambda: running.state == "STARTED", 20, interval=0.05, what="the task to start")
    started = time.monotonic()
    running.revoke(terminate=True)
    with pytest.raises(TaskRevokedError):
        running.get(timeout=10)
    assert time.monotonic() - started < 5 and cache.get(key) is None

    # expires: a job not started in time ends REVOKED without running
    expired = add.apply_async((1, 2), countdown=1, expires=0.5)
    with pytest.raises(TaskRevokedError):
        expired.get(timeout=20)

    # rate_limit="2/s", global: four calls start at least ~1.5 s apart end to end
    starts = sorted(r.get(timeout=30) for r in [ping.delay(n) for n in range(4)])
    assert starts[-1] - starts[0] >= 1.2

    # the tasks guide, on a worker: a base class's handlers; update_state('PROGRESS') seen from
    # here while it runs; update_state(SUCCESS) + Ignore; Reject(requeue=True) delivered again
    handled = my_task.delay(7, 3)
    assert handled.get(timeout=20) == 10
    assert [cache.get(f"demo:handlers:7:{k}") for k in ("before_start", "on_success", "after_return")] == [handled.id, 10, "SUCCESS"]
    uploading = upload_files.delay(["a", "b", "c", "d"])
    wait_for(lambda: uploading.state == "PROGRESS", 20, interval=0.05, what="the PROGRESS state")
    assert uploading.info["total"] == 4 and uploading.get(timeout=20) == 4
    # the calling guide's "On message": each state change handed to on_message, then the result
    messages = []

    def on_raw_message(body):
        messages.append(body)

    a, b = 1, 1
    r = hello.apply_async(args=(a, b))
    # (the row is read every `interval` s while it runs: a state shorter than that may be missed)
    assert r.get(on_message=on_raw_message, propagate=False, timeout=20, interval=0.1) == "hello world: 2"
    assert [(m["status"], m["result"]) for m in messages if m["status"] != "STARTED"][-3:] == [
        ("PROGRESS", {"progress": 50}), ("PROGRESS", {"progress": 90}), ("SUCCESS", "hello world: 2")]
    assert get_tweets.delay("ann").get(timeout=20) == ["ann: hello", "ann: again"]
    assert requeues.delay().get(timeout=20) == "received two times"


def test_canvas_chains_groups_chords_and_callbacks(live):
    celery_worker(live)

    # beyond the sample's own tests: partial arguments, results rebuilt, every chord form
    assert chain(add.s(4), mul.s(8))(4).get(timeout=20) == 64  # partial arguments given at the call
    res = group(add.s(i, i) for i in range(10))()
    assert isinstance(res, GroupResult) and res.get(timeout=20) == [0, 2, 4, 6, 8, 10, 12, 14, 16, 18]
    assert GroupResult.restore(res.id).get(timeout=5) == res.get(timeout=5)
    assert chord((add.s(i, i) for i in range(10)), xsum.s())().get(timeout=30) == 90
    assert chord(add.s(i, i) for i in range(10))(xsum.s()).get(timeout=30) == 90
    assert (group(add.s(i, i) for i in range(5)) | xsum.s()).delay().get(timeout=30) == 20
    assert (add.s(2, 2) | group(mul.s(i) for i in range(3))).delay().get(timeout=30) == [0, 4, 8]
    assert add.s(1, 1).set(countdown=0.1).delay().get(timeout=20) == 2

    # link: the callback gets the result; link_error: the errback gets the failed task's id
    key = f"demo:errback:{uuid.uuid4().hex}"
    linked = add.apply_async((2, 3), link=mul.s(10))
    assert linked.get(timeout=20) == 5
    callback = Job.objects.filter(chain_id=Job.objects.get(pk=int(linked.id)).chain_id, chain_index=1, status="succeeded")
    assert wait_for(lambda: callback.values_list("output", flat=True).first(), 20, what="the link callback") == 50
    failed = div.apply_async((1, 0), link_error=on_error.s(key))
    with pytest.raises(ZeroDivisionError):
        failed.get(timeout=20)
    assert wait_for(lambda: cache.get(key), 20, what="the errback") == failed.id

    # the calling guide: link=[...] gives each callback the result; error_handler(request, exc, traceback)
    listed = add.apply_async((2, 2), link=[add.s(16), mul.s(10)])
    assert listed.get(timeout=20) == 4
    step = Job.objects.filter(chain_id=Job.objects.get(pk=int(listed.id)).chain_id, chain_index=1, status="succeeded")
    assert wait_for(lambda: sorted(step.values_list("output", flat=True)) if step.count() == 2 else None, 20) == [20, 40]
    handled = div.apply_async((1, 0), link_error=error_handler.s())
    with pytest.raises(ZeroDivisionError):
        handled.get(timeout=20)
    seen = wait_for(lambda: cache.get(f"demo:error_handler:{handled.id}"), 20, what="the three-argument errback")
    assert seen["exc"] == "ZeroDivisionError('division by zero')" and "ZeroDivisionError" in seen["traceback"]
    # the canvas guide: res.parent; map, starmap, chunks; a chord body's errback
    res = chain(add.s(4, 4), mul.s(8), mul.s(10))()
    assert res.get(timeout=20) == 640 and res.parent.get(timeout=5) == 64 and res.parent.parent.get(timeout=5) == 8
    assert ~tsum.map([list(range(10)), list(range(100))]) == [45, 4950]
    assert ~add.starmap(zip(range(10), range(10))) == [0, 2, 4, 6, 8, 10, 12, 14, 16, 18]
    assert add.chunks(zip(range(100), range(100)), 10)().get(timeout=30) == [[2 * (10 * c + i) for i in range(10)] for c in range(10)]
    failing = (group(add.s(i, i) for i in range(3)) | tsum.s().on_error(on_chord_error.s())).delay()
    with pytest.raises(ZeroDivisionError):
        (group([add.s(1, 1), div.s(1, 0)]) | tsum.s().on_error(on_chord_error.s())).delay().get(timeout=20)
    assert failing.get(timeout=20) == 6
    assert wait_for(lambda: Job.objects.filter(type=on_chord_error.name, status="succeeded").count(), 20, what="the chord errback") == 1

    # app.send_task by name: here, the job at once; a Celery message of a durable task (sent by a
    # process that does not know it is durable: Celery's own send_task) becomes its job on the worker
    from celery import Celery

    from conveyor_celery.canvas import _originals
    from project import celery_app

    assert celery_app.send_task(add.name, args=[2, 2]).get(timeout=20) == 4
    message = _originals[Celery](celery_app, add.name, args=[20, 22])
    assert wait_for(lambda: Job.objects.filter(idempotency_key=f"celery:{message.id}").exists(), 20, what="the message's job")
    assert AsyncResult(message.id).get(timeout=20) == 42

    # side by side: a task not converted runs as a plain Celery task on the same worker
    plain = f"demo:plain:{uuid.uuid4().hex}"
    legacy_remember.delay(plain, "plain celery")
    assert wait_for(lambda: cache.get(plain), 20, what="the plain Celery task") == "plain celery"
    assert not Job.objects.filter(type__endswith="legacy_remember").exists()


def test_a_chord_whose_header_worker_is_sigkilled_completes_once_with_every_result(live):
    # given a worker running a chord's six header members (1.5 s each)
    doomed = celery_worker(live, name="celery-doomed", queues="default", concurrency="6")
    result = chord(slow_add.s(i, i, 1.5) for i in range(6))(xsum.s())
    chain_id = int(result.id.split(":")[1])
    wait_for(lambda: Job.objects.filter(chain_id=chain_id, chain_index=0, status="running").count() >= 3, 30,
             interval=0.05, what="the header to run")

    # when the whole worker is killed with SIGKILL mid-run, and another worker starts
    kill_tree(doomed.process.pid)
    celery_worker(live, name="celery-rescue", queues="default", concurrency="6")

    # then the body got every header result once: 0+2+...+10
    assert result.get(timeout=60) == 30
    body = Job.objects.filter(chain_id=chain_id, chain_index=1)
    assert body.count() == 1 and body.get().attempt == 1
    header = Job.objects.filter(chain_id=chain_id, chain_index=0)
    assert sorted(header.values_list("output", flat=True)) == [0, 2, 4, 6, 8, 10]
    assert any(j.attempt == 2 for j in header)  # some ran again after the kill


def test_a_countdown_past_the_visibility_timeout_runs_once(live):
    # given two workers
    procs = [live.start("--queues", "default", "--concurrency", "1", mode="worker", name=n, env=SAMPLE, wait=False)
             for n in ("celery-left", "celery-right")]
    for proc in procs:
        proc.wait_ready()
    # when a task is called with an eta (a countdown) 4 s ahead
    due = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=4)
    result = add.apply_async((20, 22), eta=due)
    # then while it waits no message exists in Redis, so the visibility timeout passing gives nothing back
    restored = []
    while dt.datetime.now(dt.timezone.utc) < due - dt.timedelta(seconds=0.5):
        assert queue_length("default") == 0 and unacked_count() == 0
        restored.append(visibility_timeout_lapses())
        time.sleep(0.2)
    assert len(restored) >= 3 and not any(restored)
    # and it runs once, not before its time
    assert result.get(timeout=20) == 42
    job = Job.objects.get(pk=int(result.id))
    assert job.attempt == 1 and job.started_at >= due


def test_a_periodic_task_naming_a_converted_task_runs_one_job_per_tick_under_two_beats(live):
    # given a django-celery-beat row naming the converted `add`, every second, two beats and a worker
    import json
    import subprocess
    import sys
    from pathlib import Path

    from django_celery_beat.models import IntervalSchedule, PeriodicTask

    from tests.support import ROOT

    every, _ = IntervalSchedule.objects.get_or_create(every=1, period=IntervalSchedule.SECONDS)
    PeriodicTask.objects.create(name="add-every-second", task=add.name, interval=every, args=json.dumps([20, 22]))
    celery_worker(live, queues="default", concurrency="2")
    beats = []
    try:
        for n in range(2):
            out = open(Path(live.env()["CONVEYOR_DATA"]) / f"celery-beat-{n}.log", "wb")
            beats.append(subprocess.Popen([sys.executable, "-m", "celery", "-A", "project", "beat", "--loglevel", "INFO"],
                                          cwd=ROOT, env=live.env(CONVEYOR_BEAT_LOCK_SECONDS="3", **SAMPLE),
                                          stdout=out, stderr=subprocess.STDOUT, start_new_session=True))
        ticks = Job.objects.filter(type=add.name, idempotency_key__startswith="conveyor:schedule:celery:add-every-second:")
        wait_for(lambda: ticks.filter(status="succeeded").count() >= 4, 40, what="four ticks to run")
    finally:
        for beat in beats:
            kill_tree(beat.pid)
    # then each tick is a job of the converted task (its key the tick's: two beats, one job), which
    # ran add(20, 22); a tick sent as a Celery message instead would have made no row at all
    assert set(ticks.filter(status="succeeded").values_list("output", flat=True)) == {42}
    assert Job.objects.filter(type=add.name).exclude(idempotency_key__startswith="conveyor:schedule:celery:").count() == 0
