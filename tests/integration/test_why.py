"""Why a job waits, pauses and the workers' heartbeats, in process on the session's real PostgreSQL
and Redis: each statement (jobs.engine.store) and gathering (jobs.engine.why, jobs.engine.pauses,
jobs.engine.consumers) against real rows; the claims through `runner.execute` and `limits.claim`."""
from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from django.db import connection
from django.test import override_settings

from jobs import enqueue
from jobs.engine import consumers, limits, pauses, runner, store, why
from jobs.engine.registry import JobType, parse_rate
from jobs.engine import registry
from jobs.models import Job, Pause
from tests.integration.conftest import RUNNER_IN_PROCESS
from tests.support import redis_client

pytestmark = RUNNER_IN_PROCESS

WORKER = "node@test/1"


def handler(ctx: Any, data: dict) -> dict:
    return {}


@pytest.fixture
def declare():
    names = []

    def add(name: str, **options: Any) -> JobType:
        registry.add(JobType(name, handler, **options))
        names.append(name)
        return registry.get(name)

    yield add
    for name in names:
        registry.remove(name)


@pytest.fixture
def consumer():
    """A worker's heartbeat for the given queues (as a worker's main process writes it)."""
    consumers.clear_cache()

    def beat(*queues: str) -> None:
        consumers.beat("fake@test", queues)
        consumers.clear_cache()

    yield beat
    consumers.clear_cache()


def row(job_id: int) -> Job:
    return Job.objects.get(pk=job_id)


# --- pauses: the claim skips, the runner holds, the resume publishes ----------------------------


def test_a_paused_queues_job_is_held_not_claimed_and_runs_after_the_resume(declare):
    # given a job of queue q-pause whose queue is paused
    declare("t.pause", queue="q-pause")
    job = enqueue("t.pause", {})
    pauses.pause("queue", "q-pause", "maintenance", "ann")
    # when a worker takes its message
    outcome = runner.execute(job.pk, WORKER)
    # then it is held, with no message, and says why
    assert (outcome, outcome.error) == ("held", "paused")
    held = row(job.pk)
    assert (held.status, held.held, held.published_at, held.attempt) == ("pending", "paused", None, 0)
    answer = why.why(job.pk)
    assert answer.code == "paused" and "maintenance" in answer.words and "ann" in answer.words
    # and the relay leaves it alone
    assert job.pk not in [m.job_id for m in store.mark_due(100)]
    # when the queue is resumed, the row is published at once and runs
    assert pauses.resume("queue", "q-pause") == 1
    released = row(job.pk)
    assert released.held == "" and released.published_at is not None
    assert runner.execute(job.pk, WORKER) == "succeeded"


def test_a_paused_limited_type_is_skipped_by_the_limits_claim_too(declare):
    declare("t.pause-limited", concurrency=2)
    job = enqueue("t.pause-limited", {})
    pauses.pause("type", "t.pause-limited", "", "cli")
    assert runner.execute(job.pk, WORKER).error == "paused"
    assert row(job.pk).held == "paused"
    pauses.resume("type", "t.pause-limited")
    assert runner.execute(job.pk, WORKER) == "succeeded"


def test_a_job_whose_queue_and_type_are_paused_waits_for_both_resumes(declare):
    declare("t.pause-both", queue="q-both")
    job = enqueue("t.pause-both", {})
    pauses.pause("queue", "q-both")
    pauses.pause("type", "t.pause-both")
    runner.execute(job.pk, WORKER)
    assert pauses.resume("queue", "q-both") == 0
    assert row(job.pk).held == "paused"
    assert pauses.resume("type", "t.pause-both") == 1
    assert row(job.pk).held == ""


def test_resuming_what_is_not_paused_says_so_and_unknown_names_are_refused():
    assert pauses.resume("queue", "default") is None
    with pytest.raises(pauses.UnknownTarget, match="no job type uses queue 'nope'"):
        pauses.pause("queue", "nope")
    with pytest.raises(pauses.UnknownTarget, match="unknown job type"):
        pauses.pause("type", "nope.nope")


def test_pausing_again_keeps_the_start_and_updates_the_reason():
    first = pauses.pause("queue", "default", "one")
    again = pauses.pause("queue", "default", "two")
    assert first == again
    assert [(p.name, p.reason, p.held) for p in pauses.paused()] == [("default", "two", 0)]
    pauses.resume("queue", "default")


# --- the why's facts, from real rows ---------------------------------------------------------------


def test_a_delayed_job_is_scheduled_and_a_failed_one_waits_its_backoff(declare, consumer):
    consumer("default")
    later = enqueue("examples.echo", {}, run_after=dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=5))
    assert why.why(later.pk).code == "scheduled"
    failing = enqueue("examples.fail", {"times": 5})
    assert runner.execute(failing.pk, WORKER) == "failed"
    with connection.cursor() as cursor:  # a backoff longer than the type's (0.2 s): the test cannot outrun it
        cursor.execute("UPDATE jobs_job SET run_after = now() + interval '1 minute' WHERE id = %s", [failing.pk])
    answer = why.why(failing.pk)
    assert (answer.code, answer.details["attempt"]) == ("retry_backoff", 1)


def test_a_job_held_by_concurrency_names_the_running_job_and_a_leaked_slot_the_sweep(declare, consumer):
    consumer("default")
    declare("t.one-at-once", concurrency=1)
    first, second = enqueue("t.one-at-once", {}), enqueue("t.one-at-once", {})
    assert isinstance(limits.claim(first.pk, WORKER, 30), store.Claimed)  # running (its handler not called)
    assert limits.claim(second.pk, WORKER, 30) == "concurrency"
    answer = why.why(second.pk)
    assert (answer.code, answer.details["holders"], answer.details["slots"]) == ("concurrency", [first.pk], 1)
    # when the holder ends without releasing (a release missed)
    Job.objects.filter(pk=first.pk).update(status="dead")
    answer = why.why(second.pk)
    assert answer.code == "leaked_slot" and answer.details["sweep_seconds"] == limits.SWEEP_SECONDS


def test_a_job_held_by_its_key_names_the_job_running_for_the_key(declare, consumer):
    consumer("default")
    declare("t.one-per-key", concurrency_per_key=1)
    first = enqueue("t.one-per-key", {}, limit_key="k1")
    second = enqueue("t.one-per-key", {}, limit_key="k1")
    limits.claim(first.pk, WORKER, 30)
    assert limits.claim(second.pk, WORKER, 30) == "key"
    answer = why.why(second.pk)
    assert (answer.code, answer.details["holders"], answer.details["key"]) == ("key", [first.pk], "k1")


def test_a_job_booked_on_a_rate_slot_names_the_slot(declare, consumer):
    consumer("default")
    declare("t.slow-rate", rate_limit=parse_rate("1/m"))
    first, second = enqueue("t.slow-rate", {}), enqueue("t.slow-rate", {})
    limits.claim(first.pk, WORKER, 30)
    assert limits.claim(second.pk, WORKER, 30) == "rate"
    answer = why.why(second.pk)
    assert answer.code == "rate"
    assert dt.datetime.fromisoformat(answer.details["next_slot"]) == row(second.pk).run_after


def test_a_due_job_counts_the_jobs_ahead_of_it_in_its_queue(consumer):
    consumer("default")
    jobs = [enqueue("examples.echo", {"n": n}) for n in range(3)]
    urgent = enqueue("examples.echo", {"n": 9}, priority=0)
    assert (why.why(jobs[2].pk).code, why.why(jobs[2].pk).details["ahead"]) == ("queue", 3)
    assert why.why(urgent.pk).code == "next"
    Job.objects.filter(pk=jobs[0].pk).update(published_at=None)
    assert why.why(jobs[0].pk).code == "relay"


def test_a_queue_without_a_heartbeat_is_no_consumer_and_an_alarm():
    consumers.clear_cache()
    job = enqueue("examples.echo", {})
    answer = why.why(job.pk)
    assert answer.code == "no_consumer" and answer.alarms
    queues = {q["queue"]: q for q in why.queues()}
    assert queues["default"]["alarm"] and queues["default"]["waiting"] == 1
    assert queues["default"]["oldest_waiting_seconds"] >= 0


def test_a_running_or_ended_job_is_not_waiting_and_an_unknown_one_is_refused():
    job = enqueue("examples.echo", {})
    runner.execute(job.pk, WORKER)
    assert why.why(job.pk) is None
    with pytest.raises(why.NoSuchJob):
        why.why(10**12)


# --- the workers' heartbeats ---------------------------------------------------------------------


def test_heartbeats_count_consumers_per_queue_and_a_stopped_worker_leaves_at_once():
    consumers.beat("a@test", ["default", "images"])
    consumers.beat("b@test", ["default"])
    consumers.clear_cache()
    assert consumers.per_queue(["default", "images", "notifications"]) == {"default": 2, "images": 1, "notifications": 0}
    consumers.gone("a@test")
    assert consumers.per_queue(["images"]) == {"images": 0}


def test_a_killed_workers_heartbeat_expires_and_its_name_is_dropped():
    # given a node listed whose key expired (as after a SIGKILL, TTL_SECONDS later)
    redis_client().sadd(consumers.NODES, "killed@test")
    consumers.clear_cache()
    assert consumers.read() == {}
    assert not redis_client().sismember(consumers.NODES, "killed@test")


# --- the HTTP API ----------------------------------------------------------------------------------


def test_the_api_pauses_a_queue_its_job_says_paused_and_the_resume_releases_it(api):
    status, job = api("post", "/jobs", {"type": "images.resize", "input": {"url": "http://x/y.png", "width": 10}})
    assert status == 201
    status, body = api("post", "/queues/images/pause", {"reason": "storage is down"})
    assert (status, body["paused"], body["reason"], body["by"]) == (200, True, "storage is down", "admin@example.com")
    runner.execute(job["id"], WORKER)  # a worker takes its message: held
    status, body = api("get", f"/jobs/{job['id']}")
    assert body["why"]["code"] == "paused" and "storage is down" in body["why"]["words"]
    status, queues = api("get", "/queues")
    assert {q["queue"]: q for q in queues}["images"]["paused"]["held"] == 1
    status, body = api("post", "/queues/images/resume")
    assert (status, body["released"]) == (200, 1)
    assert api("post", "/queues/images/resume")[0] == 409


def test_the_api_refuses_to_pause_an_unknown_queue_or_type_naming_it(api):
    status, body = api("post", "/queues/nope/pause", {"reason": "x"})
    assert status == 404 and "nope" in body["detail"]
    status, body = api("post", "/types/nope.nope/pause")
    assert status == 404 and "nope.nope" in body["detail"]
    assert api("post", "/types/examples.echo/pause", {"colour": "red"})[0] == 400


@pytest.mark.parametrize("name", [".x", "..", ".%5Cl%C3%9A%05%F0%9F%98%8D%7C0%C2%A7"])
def test_a_type_name_that_is_no_dotted_path_is_refused_404_not_imported(api, name):
    # schemathesis' case: a name with a leading dot made the django.tasks resolver's
    # import_module raise ValueError (a 500 with a traceback) instead of "unknown job type"
    status, body = api("post", f"/types/{name}/pause", {"reason": "x"})
    assert status == 404 and "unknown job type" in body["detail"]


def test_a_type_name_naming_a_module_outside_the_project_imports_nothing(api):
    # `POST /api/types/this.x/pause` imported the standard library's `this` in the server (the
    # django.tasks resolver imports a name to look for a task there): the Zen of Python in its log
    import sys

    assert "this" not in sys.modules
    status, body = api("post", "/types/this.x/pause", {"reason": "x"})
    assert status == 404 and "unknown job type 'this.x'" in body["detail"]
    assert "this" not in sys.modules


def test_a_token_without_operate_cannot_pause(api):
    from django.test import Client

    from api.auth import issue_token
    from django.contrib.auth import get_user_model

    user, _ = get_user_model().objects.get_or_create(username="reader", defaults={"is_superuser": True})
    client = Client(HTTP_AUTHORIZATION=f"Bearer {issue_token(user, 'jobs:read')}")
    assert client.post("/api/queues/default/pause").status_code == 403
    assert client.get("/api/queues").status_code == 200


def test_a_running_or_ended_jobs_why_is_null(api):
    job = enqueue("examples.echo", {})
    runner.execute(job.pk, WORKER)
    status, body = api("get", f"/jobs/{job.pk}")
    assert status == 200 and body["why"] is None


# --- a delivery behind its key's lane, and the CLI -------------------------------------------------


def test_a_delivery_behind_its_keys_lane_names_the_delivery_holding_it(consumer):
    from subscribers import emit
    from subscribers.models import Delivery

    consumer("default")
    first, second = emit("diagnostics.why", {}, key="k-lane"), emit("diagnostics.why", {}, key="k-lane")
    holding = Delivery.objects.get(event=first, subscriber="diagnostics.record")
    waiting = Delivery.objects.get(event=second, subscriber="diagnostics.record")
    status, answer = why.explain("delivery", waiting.pk)
    assert status == "waiting"
    assert (answer.code, answer.details["delivery"], answer.details["job"]) == ("lane", holding.pk, holding.job_id)
    # the holder itself has a job, which answers for it
    assert why.explain("delivery", holding.pk)[1].code in ("queue", "next")


def test_the_event_api_says_why_a_delivery_waits_behind_its_lane(api, consumer):
    from subscribers import emit
    from subscribers.models import Delivery

    consumer("default")
    first, second = emit("diagnostics.why", {}, key="k-api"), emit("diagnostics.why", {}, key="k-api")
    holding = Delivery.objects.get(event=first, subscriber="diagnostics.record")
    status, body = api("get", f"/events/{second.pk}")
    waiting = next(d for d in body["deliveries"] if d["subscriber"] == "diagnostics.record")
    assert (waiting["status"], waiting["why"]["code"], waiting["why"]["details"]["delivery"]) == ("waiting", "lane", holding.pk)
    status, body = api("get", "/events")
    assert all(d["why"] is None for e in body["items"] for d in e["deliveries"])  # lists stay lean


def test_manage_py_why_says_the_reason_and_exits_2_for_an_unknown_id(consumer):
    from django.core.management import call_command
    from django.core.management.base import CommandError
    from io import StringIO

    consumer("default")
    job = enqueue("examples.echo", {}, run_after=dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1))
    out = StringIO()
    call_command("why", str(job.pk), stdout=out)
    assert "scheduled for later" in out.getvalue()
    with pytest.raises(CommandError, match=f"no job {10**12}") as refused:
        call_command("why", str(10**12))
    assert refused.value.returncode == 2
    with pytest.raises(CommandError, match="not a job id") as refused:
        call_command("why", "abc")
    assert refused.value.returncode == 2


def test_manage_py_pause_and_resume_a_queue(consumer):
    from django.core.management import call_command
    from io import StringIO

    out = StringIO()
    call_command("pause", "queue", "notifications", "--reason", "smtp quota", stdout=out)
    call_command("pause", "--list", stdout=out)
    assert "queue notifications: paused since" in out.getvalue() and "smtp quota" in out.getvalue()
    assert Pause.objects.filter(kind="queue", name="notifications").exists()
    call_command("resume", "queue", "notifications", stdout=out)
    assert "resumed: 0 held job(s) published" in out.getvalue()
    assert not Pause.objects.exists()


def test_metrics_give_consumers_waiting_jobs_and_the_oldest_wait_per_queue(consumer):
    from django.test import Client
    from prometheus_client.parser import text_string_to_metric_families

    # given a worker consuming default only, and a job waiting in default and one in images
    consumer("default")
    enqueue("examples.echo", {})
    enqueue("images.resize", {"url": "http://x/y.png", "width": 10})
    Job.objects.update(created_at=dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=60),
                       run_after=dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=60))
    response = Client().get("/metrics")
    found = {f.name: {s.labels["queue"]: s.value for s in f.samples}
             for f in text_string_to_metric_families(response.content.decode()) if f.name.startswith("conveyor_queue_")}
    # then images waits with no consumer: the alarm's two numbers
    assert found["conveyor_queue_consumers"]["default"] == 1 and found["conveyor_queue_consumers"]["images"] == 0
    assert found["conveyor_queue_waiting"]["images"] == 1
    assert 59 <= found["conveyor_queue_oldest_waiting_seconds"]["images"] < 120
    assert found["conveyor_queue_oldest_waiting_seconds"]["notifications"] == 0


def test_manage_py_status_shows_a_queue_with_waiting_jobs_and_no_consumer_as_an_alarm(consumer):
    from django.core.management import call_command
    from io import StringIO

    consumer("default")
    enqueue("examples.ping", {})  # queue notifications, no consumer
    pauses.pause("queue", "images", "cdn down")
    out = StringIO()
    call_command("status", stdout=out)
    text = out.getvalue()
    assert "ALARM: no worker consumes queue 'notifications' and 1 job(s) wait" in text
    assert "PAUSED: cdn down" in text
    assert "ALARM: no worker consumes queue 'default'" not in text
    pauses.resume("queue", "images")


def test_manage_py_status_counts_the_jobs_a_pause_holds_and_says_the_queue_is_paused(declare):
    from django.core.management import call_command
    from io import StringIO

    # given a paused queue whose jobs a worker took and found paused (held in the database)
    declare("t.status-pause", queue="q-status")
    pauses.pause("queue", "q-status", "audit")
    jobs = [enqueue("t.status-pause", {}) for _ in range(3)]
    for job in jobs:
        runner.execute(job.pk, WORKER)
    assert {row(job.pk).held for job in jobs} == {"paused"}
    # when status is asked
    out = StringIO()
    call_command("status", stdout=out)
    [line] = [line for line in out.getvalue().splitlines() if line.strip().startswith("q-status ")]
    # then the queue says it is paused and counts the jobs its pause holds (it said "waiting 0" alone)
    assert "PAUSED: audit" in line and "held by a pause 3" in line, line
    out = StringIO()
    call_command("status", "--json", stdout=out)
    [queue] = [q for q in json.loads(out.getvalue())["queues"] if q["queue"] == "q-status"]
    assert (queue["waiting"], queue["held_by_pause"], queue["paused"]) == (0, 3, "audit")
    pauses.resume("queue", "q-status")


# --- the admin and the operations page -------------------------------------------------------------


def test_the_operations_page_shows_the_no_consumer_alarm_pauses_and_the_oldest_jobs_why(admin_client, consumer):
    consumer("default")
    ping = enqueue("examples.ping", {})  # notifications: no consumer
    pauses.pause("type", "examples.echo", "bad deploy", "ann")
    response = admin_client.get("/admin/operations/fragment/")
    html = response.content.decode()
    assert 'data-alarm-queue="notifications"' in html
    assert 'data-alarm-queue="default"' not in html
    notifications = next(q for q in response.context["waiting"]["queues"] if q["queue"] == "notifications")
    assert (notifications["oldest_job"], notifications["why"].code, notifications["consumers"]) == (ping.pk, "no_consumer", 0)
    assert 'data-pause="type:examples.echo"' in html and "bad deploy" in html
    pauses.resume("type", "examples.echo")


def test_the_admin_job_page_says_why_it_waits(admin_client, consumer):
    consumer("default")
    job = enqueue("examples.echo", {}, run_after=dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=2))
    html = admin_client.get(f"/admin/jobs/job/{job.pk}/change/").content.decode()
    assert 'data-code="scheduled"' in html and "scheduled for later" in html


def test_the_admin_pauses_and_resumes_a_queue_publishing_its_held_jobs(admin_client, declare):
    declare("t.admin-pause", queue="q-admin")
    response = admin_client.post("/admin/jobs/pause/add/", {"kind": "queue", "name": "q-admin", "reason": "audit"})
    assert response.status_code == 302, response.content.decode()[-2000:]
    pause = Pause.objects.get(kind="queue", name="q-admin")
    assert (pause.reason, pause.paused_by) == ("audit", "admin")
    job = enqueue("t.admin-pause", {})
    runner.execute(job.pk, WORKER)
    assert row(job.pk).held == "paused"
    response = admin_client.post("/admin/jobs/pause/", {"action": "resume_pauses", "_selected_action": [pause.pk]})
    assert response.status_code == 302
    assert not Pause.objects.exists() and row(job.pk).held == "" and row(job.pk).published_at is not None
    # an unknown queue is refused, naming it
    response = admin_client.post("/admin/jobs/pause/add/", {"kind": "queue", "name": "nope", "reason": ""})
    assert response.status_code == 200 and "no job type uses queue" in response.content.decode()


# --- The autoscaling signal (jobs.engine.scaling): GET /api/queues/scale and /metrics -------------


def _scale_load(consumer) -> None:
    """default: 3 due and waiting, 2 running, 1 scheduled later, 1 held by a pause; images: 1
    waiting for 60 s and no consumer."""
    consumer("default")
    ids = [enqueue("examples.echo", {"n": n}).pk for n in range(5)]
    Job.objects.filter(pk__in=ids[:2]).update(status="running")
    enqueue("examples.echo", {}, run_after=dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1))
    Job.objects.filter(pk=enqueue("examples.echo", {}).pk).update(held="paused")
    old = enqueue("images.resize", {"url": "http://x/y.png", "width": 10})
    Job.objects.filter(pk=old.pk).update(created_at=dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=60),
                                         run_after=dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=60))


def test_the_scale_signal_gives_each_queues_waiting_running_oldest_wait_consumers_and_workers_wanted(api, consumer):
    # given work on two queues, some of it not due or held
    _scale_load(consumer)
    # when an autoscaler reads the signal for workers running 2 jobs at once
    status, body = api("get", "/queues/scale?per_worker=2")
    # then each queue counts only the jobs due (not later, not held), and wants ceil((waiting + running) / 2) workers
    assert status == 200, body
    assert body["per_worker"] == 2 and "ceil((waiting + running) / per_worker)" in body["rule"]
    default, images = body["queues"]["default"], body["queues"]["images"]
    assert (default["waiting"], default["running"], default["consumers"], default["desired_workers"]) == (3, 2, 1, 3)
    assert (images["waiting"], images["running"], images["consumers"], images["desired_workers"]) == (1, 0, 0, 1)
    assert 59 <= images["oldest_waiting_seconds"] < 120
    # a queue with nothing to do is listed (a KEDA valueLocation always finds it), wanting no worker
    assert body["queues"]["notifications"] == {"waiting": 0, "running": 0, "oldest_waiting_seconds": 0.0,
                                               "consumers": 0, "desired_workers": 0}
    # and one pool consuming every queue wants ceil(6 / 2)
    assert body["total"]["desired_workers"] == 3 and body["total"]["waiting"] == 4
    assert api("get", "/queues/scale?per_worker=4")[1]["queues"]["default"]["desired_workers"] == 2


def test_the_scale_signal_refuses_a_bad_per_worker_naming_it(api):
    for bad in ("0", "-1", "abc", "1000000"):
        status, body = api("get", f"/queues/scale?per_worker={bad}")
        assert status == 400 and "per_worker" in json.dumps(body), (bad, body)


def test_the_scale_signal_needs_a_token(api):
    from django.test import Client

    assert Client().get("/api/queues/scale").status_code == 401


def test_metrics_give_running_and_desired_workers_per_queue_zero_filled(consumer):
    from django.test import Client
    from prometheus_client.parser import text_string_to_metric_families

    _scale_load(consumer)
    with override_settings(WORKER_CONCURRENCY=2):
        text = Client().get("/metrics").content.decode()
    found = {f.name: {s.labels["queue"]: s.value for s in f.samples}
             for f in text_string_to_metric_families(text) if f.name.startswith("conveyor_queue_")}
    for queue, running, desired in (("default", 2, 3), ("images", 0, 1), ("notifications", 0, 0)):
        assert (found["conveyor_queue_running"][queue], found["conveyor_queue_desired_workers"][queue]) == (running, desired)
