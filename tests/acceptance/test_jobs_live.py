"""Jobs and chains across real processes: `manage.py start` workers on the session's PostgreSQL and
Redis, no eager mode and no mocks. Each test is one promise of docs/architecture.md ("The path of one job",
"Guarantees"), checked on rows in PostgreSQL, HTTP answers and counted side effects.

Timings come from tests.support.FAST: a lost worker's lease lapses in 3 s, a lost message is sent
again after 3 s, and every worker runs the relay and the reaper every 200 ms.

The tests whose workers are specialised, killed or started after their jobs start their own; the
others share the module's worker (`worker`: every queue, the default pool), and come last: it runs
from its first user to the module's end.
"""
from __future__ import annotations

import time

import psutil
import pytest
from django.contrib.auth import get_user_model
from django.db.models import Count
from django.test import Client

from examples.models import Effect, OutboxEmail
from jobs import Step, enqueue, enqueue_many, new_job, start_chain
from jobs.engine import store
from jobs.models import Chain, ChainStatus, Job, Status
from jobs.engine.publish import Message, publish
from tests.support import (
    all_messages_consumed,
    api_client,
    chain_status,
    crash_embedded_redis,
    embedded_redis,
    is_dead,
    kill_tree,
    module_workers,
    redis_up,
    start_embedded_redis,
    start_workers,
    wait_chain,
    wait_for,
    wait_job,
)

@pytest.fixture(scope="module")
def worker(django_db_setup, django_db_blocker):
    """The module's worker (every queue, the default pool), for the tests after `# --- on the module's worker`."""
    with module_workers(django_db_blocker, ("steady", ())) as [proc]:
        yield proc


pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True, databases="__all__")]


# --- 1. a chain hands off between specialized workers -------------------------------------------


def test_chain_hands_off_from_the_images_worker_to_the_notifications_worker(live):
    # given one worker consuming only `images` and another consuming only `notifications`
    start_workers(
        live,
        ("images-worker", ("--queues", "images", "--concurrency", "1")),
        ("mail-worker", ("--queues", "notifications", "--concurrency", "1")),
    )

    # when images.resize is enqueued with an e-mail address (its handler continues with send-email)
    resize = enqueue("images.resize", {"width": 32, "height": 32, "source": 128, "email": "ada@example.com"})

    # then the chain it became succeeds, each step run by the worker of its queue
    chain_id = wait_for(
        lambda: Job.objects.filter(pk=resize.pk).values_list("chain_id", flat=True).first(),
        30,
        what="images.resize to complete and start its chain",
    )
    wait_chain(chain_id, ChainStatus.SUCCEEDED, 30)
    first, second = Job.objects.filter(chain_id=chain_id).order_by("chain_index")
    assert (first.pk, first.type, first.queue, first.chain_index) == (resize.pk, "images.resize", "images", 0)
    assert (second.type, second.queue, second.chain_index, second.parent_id) == ("notifications.send-email", "notifications", 1, resize.pk)
    assert first.status == second.status == Status.SUCCEEDED
    assert first.attempt == second.attempt == 1
    assert first.worker.startswith("images-worker@test/"), first.worker
    assert second.worker.startswith("mail-worker@test/"), second.worker
    # and the e-mail was "sent" exactly once
    assert list(OutboxEmail.objects.values_list("to", flat=True)) == ["ada@example.com"]

    # and GET /api/chains/{id} shows both steps in order, with their timings and the handoff
    response = api_client().get(f"/api/chains/{chain_id}")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == "succeeded" and body["finished_at"]
    steps = body["steps"]
    assert [(s["index"], s["type"], s["status"]) for s in steps] == [
        (0, "images.resize", "succeeded"),
        (1, "notifications.send-email", "succeeded"),
    ]
    assert [s["job"]["id"] for s in steps] == [first.pk, second.pk]
    assert [s["job"]["worker"] for s in steps] == [first.worker, second.worker]
    assert all(s["duration_seconds"] is not None and s["duration_seconds"] >= 0 for s in steps)
    assert steps[0]["duration_seconds"] > 0  # rendering and resizing an image takes some time
    assert steps[0]["handoff_seconds"] is None  # nothing before the first step
    assert 0 <= steps[1]["handoff_seconds"] < 30

    # and the admin's chain page lists both steps (with the worker that ran each) to a superuser
    admin = get_user_model().objects.create_superuser("root", "root@example.com", "unused-password")
    browser = Client()
    browser.force_login(admin)
    page = browser.get(f"/admin/jobs/chain/{chain_id}/change/")
    assert page.status_code == 200
    html = page.content.decode()
    for job in (first, second):
        assert job.type in html and job.worker in html
        assert f"/admin/jobs/job/{job.pk}/change/" in html  # each step's row links to its job


# --- 2. a duplicated message runs the job once ---------------------------------------------------


def test_same_job_published_three_times_runs_and_completes_once(live):
    # given a worker with three pool processes, so three messages are taken at the same moment
    start_workers(live, ("dup-worker", ("--concurrency", "3")))
    # and one examples.count row (which writes one Effect row per run), not yet published
    [job] = store.insert([new_job(Step("examples.count", {"sleep": 0.5}))])

    # when its id is published three times
    sent = publish([Message(job.pk, job.queue, job.priority, job.type)] * 3)
    assert sent == 3

    # then the job succeeds after one run: one Effect row, attempt 1
    job = wait_job(job.pk, Status.SUCCEEDED, 30)
    assert job.attempt == 1
    assert list(Effect.objects.values_list("job_id", "attempt")) == [(job.pk, 1)]
    # and all three copies were taken and acknowledged (none waits in the queue or unacked in Redis):
    # the two others without running (a run would claim the row again: attempt 2, a second Effect)
    wait_for(all_messages_consumed, 10, what="the three copies to be consumed and acknowledged")
    time.sleep(1.0)  # and nothing runs late either
    assert Effect.objects.count() == 1
    again = Job.objects.get(pk=job.pk)
    assert (again.status, again.attempt, again.started_at, again.finished_at) == (Status.SUCCEEDED, 1, job.started_at, job.finished_at)


# --- 3. a worker killed mid-job ---------------------------------------------------------------------


def test_job_of_a_worker_killed_mid_run_is_completed_by_another_and_its_chain_goes_on(live):
    """celery#3541 (a killed worker's running tasks are lost): the whole worker killed with
    SIGKILL mid-job, its job runs again elsewhere and its chain goes on."""
    # given a worker running the first step of a 2-step chain (a 4 s job that then records its run)
    [doomed] = start_workers(live, ("doomed", ("--concurrency", "1")))
    chain = start_chain([Step("examples.count", {"sleep": 4}), Step("examples.echo", {"after": "count"})])
    first = Job.objects.get(chain=chain, chain_index=0)
    wait_for(lambda: Job.objects.filter(pk=first.pk, status=Status.RUNNING).exists(), 30, what="step 0 to run")
    assert Job.objects.get(pk=first.pk).worker.startswith("doomed@test/")

    # when that worker and every process under it are killed with SIGKILL in the middle of the job
    pids = [doomed.process.pid, *(p.pid for p in psutil.Process(doomed.process.pid).children(recursive=True))]
    kill_tree(doomed.process.pid)
    wait_for(lambda: all(map(is_dead, pids)), 10, what="the doomed processes to die")
    assert Job.objects.get(pk=first.pk).status == Status.RUNNING  # nobody finished it
    assert Effect.objects.count() == 0  # the killed run never reached its side effect
    # and another worker is started
    start_workers(live, ("rescuer", ("--concurrency", "1")))

    # then, once the lease lapses, the other worker runs the job again (attempt 2) and completes it
    job = wait_job(first.pk, Status.SUCCEEDED, 40)
    assert job.attempt == 2
    assert job.worker.startswith("rescuer@test/"), job.worker
    assert list(Effect.objects.values_list("job_id", "attempt")) == [(first.pk, 2)]
    # and the chain goes on to its second step and succeeds
    wait_chain(chain.pk, ChainStatus.SUCCEEDED, 30)
    steps = list(Job.objects.filter(chain=chain).order_by("chain_index"))
    assert [(j.chain_index, j.type, j.status, j.attempt) for j in steps] == [
        (0, "examples.count", Status.SUCCEEDED, 2),
        (1, "examples.echo", Status.SUCCEEDED, 1),
    ]
    assert steps[1].output == {"after": "count"}


# --- 5. many jobs, two competing workers ------------------------------------------------------------


def test_two_workers_run_500_jobs_each_exactly_once(live):
    # given two workers on the same queues
    start_workers(live, ("left", ()), ("right", ()))

    # when 500 examples.count jobs are enqueued in one batch
    created = enqueue_many([Step("examples.count", {}) for _ in range(500)])
    ids = {job.pk for job in created}
    assert len(ids) == 500

    # then all 500 succeed on their first attempt
    done = Job.objects.filter(pk__in=ids, status=Status.SUCCEEDED)
    wait_for(lambda: done.count() == 500, 120, interval=0.25, what="500 jobs to succeed")
    assert done.filter(attempt=1).count() == 500
    # and each ran exactly once: 500 Effect rows, one per job, all from attempt 1
    time.sleep(1.0)  # no late duplicate run
    assert Effect.objects.count() == 500
    assert set(Effect.objects.values_list("job_id", flat=True)) == ids
    assert Effect.objects.filter(attempt=1).count() == 500
    # and both workers took a share
    workers = {w.split("@")[0] for w in Job.objects.filter(pk__in=ids).values_list("worker", flat=True)}
    assert workers == {"left", "right"}


# --- 7. priority, over a backlog that waits for its worker ------------------------------------------


def test_priority_is_honoured_within_a_queue(live):
    # given a backlog of ten low-priority jobs, then one urgent job, with no worker running yet
    low = [enqueue("examples.count", {"sleep": 0.1}, priority=9) for _ in range(10)]
    urgent = enqueue("examples.count", {"sleep": 0.1}, priority=0)
    # when a worker taking one job at a time starts
    live.start("--concurrency", "1", mode="worker", name="one-at-a-time")
    ids = [job.pk for job in low] + [urgent.pk]
    wait_for(lambda: Job.objects.filter(pk__in=ids, status=Status.SUCCEEDED).count() == 11, 60, what="the backlog to drain")
    # then the urgent job ran first, although it was enqueued last
    order = list(Job.objects.filter(pk__in=ids).order_by("started_at").values_list("pk", flat=True))
    assert order[0] == urgent.pk, order


# --- on the module's worker (last: see the module's docstring; Redis's restart, the very last) ----
# --- 6. retries, dead jobs, failed chains, and a retry through the API ------------------------------


def test_failing_job_succeeds_on_its_third_attempt_within_its_retries(worker):
    # given the module's worker

    # when examples.fail, set to fail its first two attempts, is enqueued with 3 retries
    job = enqueue("examples.fail", {"times": 2}, retries=3)

    # then it fails twice, is retried after its backoff, and succeeds on the third attempt
    job = wait_job(job.pk, Status.SUCCEEDED, 30)
    assert (job.attempt, job.max_attempts) == (3, 4)
    assert job.output == {"attempt": 3}
    assert job.error == ""


def test_job_out_of_retries_is_dead_and_fails_its_chain_until_retried_through_the_api(worker):
    # given the module's worker

    # when a chain starts with examples.fail set to fail twice but allowed only 1 retry
    chain = start_chain([Step("examples.fail", {"times": 2}, retries=1), Step("examples.echo", {"after": "fail"})])
    first = Job.objects.get(chain=chain, chain_index=0)

    # then the job is dead after its second attempt, the chain failed, and no next step was made
    job = wait_job(first.pk, Status.DEAD, 30)
    assert (job.attempt, job.max_attempts) == (2, 2)
    assert "failing attempt 2" in job.error
    assert job.finished_at is not None
    assert chain_status(chain.pk) == ChainStatus.FAILED
    assert Job.objects.filter(chain=chain).count() == 1

    # when POST /api/jobs/{id}/retry is called
    response = api_client().post(f"/api/jobs/{first.pk}/retry")

    # then it answers with the job pending again, with a fresh budget of attempts
    assert response.status_code == 200, response.content
    assert response.json()["status"] == "pending"
    # and the job runs once more and succeeds (attempt 3 gets past the two failures)
    job = wait_job(first.pk, Status.SUCCEEDED, 30)
    assert job.attempt == 3
    # and the chain goes on to its next step and succeeds
    wait_chain(chain.pk, ChainStatus.SUCCEEDED, 30)
    steps = list(Job.objects.filter(chain=chain).order_by("chain_index"))
    assert [(j.chain_index, j.type, j.status) for j in steps] == [
        (0, "examples.fail", Status.SUCCEEDED),
        (1, "examples.echo", Status.SUCCEEDED),
    ]
    assert steps[1].output == {"after": "fail"}
    # and a second retry of a succeeded job is refused
    assert api_client().post(f"/api/jobs/{first.pk}/retry").status_code == 409


# --- 4. Redis restarted, its queued messages lost ---------------------------------------------------


def test_every_chain_completes_when_redis_restarts_empty_in_the_middle_of_200_chains(worker):
    """celery#8030 (worker stops consuming tasks after a Redis reconnection), once, with 400
    steps under way: the worker consumes again and the relay re-sends what Redis lost (three
    restarts and /health/ready: tests/acceptance/test_upstream_failure_modes.py)."""
    if embedded_redis() is None:
        pytest.skip("needs the session's embedded Redis (REDIS_URL names an outside server)")
    # given the module's worker (it consumes every queue), and 200 chains examples.count -> examples.ping under way
    chains = [start_chain([Step("examples.count", {}), Step("examples.ping", {})]).pk for _ in range(200)]
    jobs = Job.objects.filter(chain_id__in=chains)
    wait_for(lambda: jobs.filter(status=Status.SUCCEEDED).count() >= 100, 60, interval=0.02, what="a quarter of the 400 steps to succeed")

    try:
        # when Redis is killed with SIGKILL mid-way and its append-only file deleted, so every
        # queued and unacked message is lost, and it is started again a second later (same socket)
        crash_embedded_redis(lose_data=True)
        waiting_at_crash = jobs.filter(status=Status.PENDING).count()  # rows whose message is gone
        time.sleep(1.0)
    finally:
        start_embedded_redis()
    assert waiting_at_crash > 0, "no step was waiting for its message when Redis went away: nothing was tested"

    # then every chain succeeds (the relay publishes the rows whose messages were lost)
    succeeded = Chain.objects.filter(pk__in=chains, status=ChainStatus.SUCCEEDED)
    wait_for(
        lambda: succeeded.count() == 200,
        90,
        interval=0.2,
        what=f"all 200 chains to succeed ({waiting_at_crash} steps had lost their message)",
    )
    # and every step ran and completed exactly once: two jobs per chain, one per index, attempt 1
    assert jobs.count() == 400
    per_step = jobs.values("chain_id", "chain_index").annotate(n=Count("id"))
    assert {(row["chain_index"], row["n"]) for row in per_step} == {(0, 1), (1, 1)}
    assert jobs.filter(status=Status.SUCCEEDED, attempt=1).count() == 400
    # and the first steps' side effect happened once each
    first_steps = set(jobs.filter(chain_index=0).values_list("id", flat=True))
    assert Effect.objects.count() == 200
    assert set(Effect.objects.values_list("job_id", flat=True)) == first_steps
    assert redis_up()
