"""Why is this job waiting? Each reason produced by a real situation, on real worker processes:
two `manage.py start` worker instances (threads pool), one consuming default and images, one
consuming notifications, on the session's PostgreSQL and Redis, shared by the module.

- a worker stopped: its queue has no consumer (its heartbeat gone at once), the job says so, and
  so do /metrics and `manage.py status`;
- a limit held: a job held by its type's concurrency names the running jobs holding the slots,
  and one held by its key the job running for the key;
- a lane blocked: a keyed event's delivery names the delivery running for its key;
- a paused queue: its job is held by the worker that took its message, says "paused" with the
  reason, and runs at once on resume.
The reasons are read as an operator would, in process (jobs.engine.why, the API's test client).
"""
from __future__ import annotations

from io import StringIO

import pytest
from django.conf import settings
from django.core.management import call_command
from django.test import Client

from jobs import enqueue
from jobs.engine import consumers, pauses, why
from jobs.models import Job, Status
from subscribers import emit
from subscribers.models import Delivery
from tests.support import LiveEnv, start_workers, wait_for

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True, databases="__all__")]

THREADS = ("--pool", "threads", "--concurrency", "4")


@pytest.fixture(scope="module")
def live_workers(django_db_setup, django_db_blocker):
    with django_db_blocker.unblock():
        env = LiveEnv(grace=3)
        env.flush_redis()
        try:
            procs = start_workers(env, ("why-main", ("--queues", "default,images", *THREADS)),
                                  ("why-notify", ("--queues", "notifications", *THREADS)))
            yield env, {proc.name: proc for proc in procs}
        finally:
            env.stop_all()
            env.flush_redis()


def consumers_of(queue: str) -> int | None:
    consumers.clear_cache()
    return consumers.per_queue([queue])[queue]


def status(job_id: int) -> str:
    return Job.objects.values_list("status", flat=True).get(pk=job_id)


def test_a_stopped_worker_leaves_its_queue_without_consumer_and_its_jobs_say_so(live_workers):
    env, procs = live_workers
    # given the worker of notifications consuming (its heartbeat) and running a job
    wait_for(lambda: consumers_of("notifications") == 1, 10, what="the notifications worker's heartbeat")
    ran = enqueue("examples.ping", {})
    wait_for(lambda: status(ran.pk) == Status.SUCCEEDED, 15, what="the ping to run")
    # when that worker is stopped
    procs["why-notify"].stop()
    # then the queue has no consumer at once, a job of it says why, and so do /metrics and status
    assert consumers_of("notifications") == 0 and consumers_of("default") == 1
    stuck = enqueue("examples.ping", {})
    answer = why.why(stuck.pk)
    assert answer.code == "no_consumer" and "notifications" in answer.alarms[0]
    metrics = Client().get("/metrics").content.decode()
    assert 'conveyor_queue_consumers{queue="notifications"} 0.0' in metrics
    assert 'conveyor_queue_waiting{queue="notifications"} 1.0' in metrics
    out = StringIO()
    call_command("status", stdout=out)
    assert "ALARM: no worker consumes queue 'notifications'" in out.getvalue()
    Job.objects.filter(pk=stuck.pk).update(status=Status.CANCELLED)  # nobody will run it here


def test_jobs_held_by_a_limit_name_the_jobs_holding_the_slots(live_workers, monkeypatch):
    # given 3 jobs of a type allowing 2 running at once, and 2 of one key allowing 1, each 2 s long,
    # each in a message of its own (coalesced, the last ones would wait in one worker's turn,
    # behind the others, not held by their limit: jobs.engine.coalesce)
    monkeypatch.setitem(settings.CONVEYOR, "PUBLISH_COALESCE_MS", 0.0)
    pair = [enqueue("examples.two-at-once", {"seconds": 2}) for _ in range(3)]
    keyed = [enqueue("examples.one-per-key", {"seconds": 2}, limit_key="why-k") for _ in range(2)]
    # when the worker has taken them all
    wait_for(lambda: Job.objects.filter(pk__in=[j.pk for j in pair + keyed], held__in=["concurrency", "key"]).count() == 2, 10,
             what="one job of each held by its limit")
    held_pair = Job.objects.get(pk__in=[j.pk for j in pair], held="concurrency")
    held_key = Job.objects.get(pk__in=[j.pk for j in keyed], held="key")
    # then each says which running jobs hold its slots
    running_pair = sorted(Job.objects.filter(pk__in=[j.pk for j in pair], status=Status.RUNNING).values_list("pk", flat=True))
    answer = why.why(held_pair.pk)
    assert answer.code == "concurrency" and answer.details["holders"] == running_pair and len(running_pair) == 2
    running_key = Job.objects.get(pk__in=[j.pk for j in keyed], status=Status.RUNNING).pk
    answer = why.why(held_key.pk)
    assert (answer.code, answer.details["holders"], answer.details["key"]) == ("key", [running_key], "why-k")


def test_a_keyed_delivery_behind_its_lane_names_the_delivery_running_for_the_key(live_workers):
    # given a keyed event whose delivery runs 2 s, and a second event of the key
    first = emit("diagnostics.why", {"sleep": 2}, key="why-lane")
    holding = Delivery.objects.get(event=first, subscriber="diagnostics.record")
    wait_for(lambda: status(holding.job_id) == Status.RUNNING, 10, what="the first delivery to run")
    second = emit("diagnostics.why", {}, key="why-lane")
    waiting = Delivery.objects.get(event=second, subscriber="diagnostics.record")
    # then the second delivery waits behind the lane, naming the first
    state, answer = why.explain("delivery", waiting.pk)
    assert (state, answer.code, answer.details["delivery"], answer.details["job"]) == ("waiting", "lane", holding.pk, holding.job_id)
    # and runs once the first has ended
    wait_for(lambda: Delivery.objects.get(pk=waiting.pk).job_id is not None
             and status(Delivery.objects.get(pk=waiting.pk).job_id) == Status.SUCCEEDED, 15, what="the second delivery")


def test_a_paused_queues_job_says_paused_and_runs_at_once_on_resume(live_workers):
    # given the images queue paused with a reason (as through the API, scope operate)
    pauses.pause("queue", "images", "object store maintenance", "ops")
    # when a job of it is enqueued: a worker takes its message and holds it
    job = enqueue("examples.member-images", {"n": 1})
    wait_for(lambda: Job.objects.get(pk=job.pk).held == "paused", 10, what="the worker to hold the paused job")
    answer = why.why(job.pk)
    assert answer.code == "paused" and "object store maintenance" in answer.words
    # then a resume publishes it and the worker runs it
    assert pauses.resume("queue", "images") == 1
    wait_for(lambda: status(job.pk) == Status.SUCCEEDED, 10, what="the resumed job to run")
