"""Many jobs of one type share Celery messages (jobs.engine.publish.batches): a bulk enqueue goes out in
SPREAD messages of several job ids each, which a real `manage.py start` worker runs one after the
other. Each job still runs once, a pool process killed in the middle of a batch loses nothing,
and each job's time limit holds inside a batch on the prefork pool (where the message carries no
Celery time limit). A chain's next step is handed off to the worker that ended the step before
(jobs.engine.handoff): no message, and a kill in the middle of it loses nothing. The session's
PostgreSQL and Redis; tests.support.FAST (leases of 3 s).
"""
from __future__ import annotations

import json
import os
import signal
from collections import Counter
from datetime import timedelta

import pytest
from django.utils import timezone

from examples.models import Effect
from jobs import Step, enqueue_many
from jobs.engine import publish
from jobs.models import Job, Status
from tests.support import all_messages_consumed, redis_client, wait_for, wait_job, waiting_messages

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True, databases="__all__")]

GRACE = ("--grace", "5")


def statuses(ids: list[int]) -> Counter:
    return Counter(Job.objects.filter(pk__in=ids).values_list("status", flat=True))


def all_succeeded(ids: list[int]) -> bool:
    return statuses(ids) == Counter({Status.SUCCEEDED: len(ids)})


def test_a_bulk_enqueue_goes_out_in_spread_messages_and_each_job_runs_once(live):
    # given 200 jobs of one type enqueued at once, before any worker runs
    jobs = enqueue_many([Step("examples.count", {}) for _ in range(200)])
    ids = [job.pk for job in jobs]

    # then they wait in SPREAD messages of 13 ids at most, every job in exactly one, in order
    messages = waiting_messages("default")
    assert len(messages) == publish.SPREAD == 16
    assert max(len(m) for m in messages) == 13
    assert sorted(i for m in messages for i in m) == ids

    # when a prefork worker of two processes takes them
    live.start(*GRACE, "--pool", "prefork", "--concurrency", "2", mode="worker", name="batch-worker")
    wait_for(lambda: all_succeeded(ids), 60, what="the 200 jobs to succeed")

    # then each ran once, on its first attempt, and every message was acked
    assert Counter(Effect.objects.filter(job_id__in=ids).values_list("job_id", flat=True)) == Counter({i: 1 for i in ids})
    assert set(Job.objects.filter(pk__in=ids).values_list("attempt", flat=True)) == {1}
    wait_for(all_messages_consumed, 10, what="every message to be acked")
    # and both pool processes took part
    assert len(set(Effect.objects.filter(job_id__in=ids).values_list("worker_pid", flat=True))) == 2


def test_a_pool_process_killed_in_the_middle_of_a_batch_loses_nothing_and_runs_nothing_twice(live, monkeypatch):
    """celery#3541 (a killed worker's running and prefetched tasks are lost), the pool-process
    half: the ids of a batch message not yet started are prefetched work, and survive their pool
    process's SIGKILL (the whole worker killed: tests/acceptance/test_upstream_failure_modes.py)."""
    # given eight half-second jobs in one message (SPREAD 1 for this publisher)
    monkeypatch.setattr(publish, "SPREAD", 1)
    ids = [job.pk for job in enqueue_many([Step("examples.count", {"sleep": 0.5}) for _ in range(8)])]
    assert waiting_messages("default") == [tuple(ids)]
    live.start(*GRACE, "--pool", "prefork", "--concurrency", "1", mode="worker", name="killed-batch-worker")

    # when its pool process is killed after three of them, in the middle of the fourth
    # (three recorded, the fourth running: a kill between a run's effect and its outcome's commit
    # would rightly run that job again, at least once, and is not this test's point)
    wait_for(lambda: statuses(ids)[Status.SUCCEEDED] >= 3 and statuses(ids)[Status.RUNNING] == 1, 30,
             what="three jobs of the batch to have run, the fourth running")
    pid = Effect.objects.filter(job_id__in=ids).values_list("worker_pid", flat=True).first()
    os.kill(pid, signal.SIGKILL)

    # then every job of the batch ends succeeded (the message came back; the killed run's lease
    # lapsed and its job ran again), each with one recorded run
    wait_for(lambda: all_succeeded(ids), 60, what=f"the batch to succeed ({statuses(ids)})")
    effects = Counter(Effect.objects.filter(job_id__in=ids).values_list("job_id", flat=True))
    assert effects == Counter({i: 1 for i in ids}), effects
    attempts = dict(Job.objects.filter(pk__in=ids).values_list("id", "attempt"))
    assert set(attempts.values()) <= {1, 2} and list(attempts.values()).count(2) <= 1, attempts
    wait_for(all_messages_consumed, 15, what="every message to be acked")


def test_each_job_keeps_its_time_limit_inside_a_batch_on_the_prefork_pool(live, monkeypatch):
    # given, in one message, a job that runs past its 2 s limit, then a quick one
    monkeypatch.setattr(publish, "SPREAD", 1)
    hang, after = enqueue_many([Step("examples.hang", {"seconds": 30}), Step("examples.hang", {"seconds": 0})])
    assert waiting_messages("default") == [(hang.pk, after.pk)]

    # when a prefork worker runs the message
    live.start(*GRACE, "--pool", "prefork", "--concurrency", "1", mode="worker", name="limit-batch-worker")

    # then the first is stopped at its limit (dead: no retries), and the second runs after it
    dead = wait_job(hang.pk, Status.DEAD, 20)
    assert dead.attempt == 1 and "timeout" in dead.error
    wait_job(after.pk, Status.SUCCEEDED, 20)
    assert Effect.objects.filter(job_id=hang.pk).count() == 1


def test_one_by_one_messages_are_consumed_by_a_real_worker_in_priority_order_with_the_monitors_headers(live):
    """issue 28: publish() LPUSHes the entry send_task would write (jobs.engine.envelope); a real
    worker consumes it, its priority list first, and a chain's next step (published by the worker,
    inside its task) runs too."""
    from jobs import enqueue, start_chain

    # given, before any worker runs, jobs enqueued one by one at priorities 9, 0 and a chain at 5
    last = enqueue("examples.count", {}, priority=9)
    first = enqueue("examples.count", {}, priority=0)
    chain = start_chain([Step("examples.count", {}, priority=5), Step("examples.count", {})])
    middle = Job.objects.get(chain_id=chain.pk, chain_index=0)

    # then each waits in its priority's list, with Flower's headers (the type, the chain's step)
    client = redis_client()
    entries = {key: [json.loads(raw) for raw in client.lrange(key, 0, -1)] for key in ("default", "default:5", "default:9")}
    assert [len(entries[key]) for key in entries] == [1, 1, 1]
    headers = entries["default:5"][0]["headers"]
    expected = ("conveyor.run", "examples.count", f"{{'chain': {chain.pk}, 'step': 0}}")
    assert (headers["task"], headers["shadow"], headers["kwargsrepr"]) == expected
    assert entries["default:9"][0]["properties"]["priority"] == 9

    # when one worker process takes them one at a time
    live.start(*GRACE, "--pool", "solo", mode="worker", name="priority-worker")

    # then every job succeeds, the chain's second step too, in priority order, each message acked
    ids = [first.pk, middle.pk, last.pk]
    chain_done = lambda: Job.objects.filter(chain_id=chain.pk, status=Status.SUCCEEDED).count() == 2  # noqa: E731
    wait_for(lambda: all_succeeded(ids) and chain_done(), 30, what="the jobs and the chain to succeed")
    ran = list(Effect.objects.filter(job_id__in=ids).order_by("pk").values_list("job_id", flat=True))
    assert ran == ids
    wait_for(all_messages_consumed, 10, what="every message to be acked")


def test_a_chain_runs_its_next_steps_on_the_worker_that_ended_each_step_with_no_message(live):
    """issue 28, local handoff (jobs.engine.handoff): a prefork worker consuming both queues of a
    chain claims each next step in the outcome's transaction and runs it in the same task; a
    message sent for such a step anyway (the relay's, a duplicate) claims nothing."""
    from jobs import start_chain
    from jobs.engine.publish import Message, publish as send

    # given a prefork worker consuming every queue (default and notifications among them)
    live.start(*GRACE, "--pool", "prefork", "--concurrency", "1", mode="worker", name="handoff-worker")

    # when a chain of three steps over two queues runs
    chain = start_chain([Step("examples.count", {}), Step("examples.ping", {}), Step("examples.count", {})])
    wait_for(lambda: Job.objects.filter(chain=chain, status=Status.SUCCEEDED).count() == 3, 30, what="the chain's steps")

    # then each later step was claimed by the same worker process in its previous step's outcome
    # transaction (its start is that outcome's end, one now()), each ran once
    first, second, third = Job.objects.filter(chain=chain).order_by("chain_index")
    assert first.worker == second.worker == third.worker
    assert (second.started_at, third.started_at) == (first.finished_at, second.finished_at)
    assert Counter(Effect.objects.filter(job_id__in=[first.pk, third.pk]).values_list("job_id", flat=True)) == {first.pk: 1, third.pk: 1}

    # when a message for the second step arrives anyway, then it claims nothing: still one attempt
    assert send([Message.of(second)]) == 1
    wait_for(lambda: all_messages_consumed("notifications"), 15, what="the duplicate to be consumed")
    again = Job.objects.get(pk=second.pk)
    assert (again.status, again.attempt, again.worker, again.finished_at) == (Status.SUCCEEDED, 1, second.worker, second.finished_at)


def test_a_pool_process_killed_while_it_runs_a_handed_off_step_loses_nothing_and_runs_nothing_twice(live):
    """Local handoff: the step claimed in its previous step's outcome is a running row like any
    other; its process killed, the lease lapses, the reaper and the relay run it again, once."""
    from jobs import start_chain

    # given a prefork worker and a chain whose second step (handed off) sleeps before its effect
    live.start(*GRACE, "--pool", "prefork", "--concurrency", "1", mode="worker", name="killed-handoff-worker")
    chain = start_chain([Step("examples.count", {}), Step("examples.count", {"sleep": 2})])
    wait_for(lambda: Job.objects.filter(chain=chain, chain_index=1, status=Status.RUNNING).exists(), 30, what="step 2 to run")
    first, second = Job.objects.filter(chain=chain).order_by("chain_index")
    assert second.started_at == first.finished_at  # handed off: claimed in step 1's outcome

    # when its pool process is killed in the middle of it
    os.kill(int(second.worker.split("/")[1]), signal.SIGKILL)

    # then the chain succeeds: step 2 ran again (attempt 2) and wrote its effect once, step 1
    # (whose message came back) ran nothing twice
    wait_for(lambda: Job.objects.get(pk=second.pk).status == Status.SUCCEEDED, 40, what="step 2 to run again")
    assert Job.objects.get(pk=second.pk).attempt == 2
    effects = Counter(Effect.objects.filter(job_id__in=[first.pk, second.pk]).values_list("job_id", flat=True))
    assert effects == Counter({first.pk: 1, second.pk: 1}), effects
    wait_for(all_messages_consumed, 15, what="every message to be acked")


def test_jobs_enqueued_one_by_one_quickly_share_messages_and_each_runs_once(live, monkeypatch):
    """issue 28, coalescing (jobs.engine.coalesce): this process's one-by-one enqueues within a
    window of the last publish of their kind go out together, in messages of several ids; a chain's
    step never waits."""
    from django.conf import settings

    from jobs import enqueue, start_chain

    # given publishes coalesced over a second (wide: the machine is loaded), at most 8 ids a message
    monkeypatch.setitem(settings.CONVEYOR, "PUBLISH_COALESCE_MS", 1000.0)

    # when 30 jobs are enqueued one by one, each in its own transaction, before any worker runs,
    # and then a chain of the same type
    ids = [enqueue("examples.count", {}).pk for _ in range(30)]
    assert publish._coalescer.waiting() > 0
    chain = start_chain([Step("examples.count", {})])
    step = Job.objects.get(chain_id=chain.pk).pk

    # then the chain's step went out at once, alone, while ids of its kind still wait their window
    assert (step,) in waiting_messages("default")
    wait_for(lambda: sum(map(len, waiting_messages("default"))) == 31, 5, what="every id to be published")

    # then the first went out alone and the others shared messages: fewer messages than jobs,
    # every job in exactly one
    messages = [m for m in waiting_messages("default") if m != (step,)]
    assert sorted(i for m in messages for i in m) == ids
    assert (ids[0],) in messages
    assert len(messages) < len(ids) and max(map(len, messages)) <= publish.COALESCE_PER_MESSAGE, messages

    # when a prefork worker of two processes takes them, then each runs once, every message acked
    live.start(*GRACE, "--pool", "prefork", "--concurrency", "2", mode="worker", name="coalesced-worker")
    ids.append(step)
    wait_for(lambda: all_succeeded(ids), 60, what="the 31 jobs to succeed")
    assert Counter(Effect.objects.filter(job_id__in=ids).values_list("job_id", flat=True)) == Counter({i: 1 for i in ids})
    assert set(Job.objects.filter(pk__in=ids).values_list("attempt", flat=True)) == {1}
    wait_for(all_messages_consumed, 10, what="every message to be acked")


KILLED_BEFORE_FLUSH = """
import os, signal, django
django.setup()
from jobs import enqueue
ids = [enqueue("examples.count", {}).pk for _ in range(5)]
print(" ".join(map(str, ids)), flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # committed, the last four still waiting for their window
"""


def test_a_process_killed_between_its_commits_and_the_coalesced_publish_loses_no_job(live):
    """The rows commit before any publish: ids that waited in a killed process's memory are
    published again by the relay's stale scan (tests.support.FAST: after 3 s), and run once."""
    import subprocess
    import sys

    # given a process coalescing over a second, killed right after enqueueing five jobs
    env = live.env(CONVEYOR_PUBLISH_COALESCE_MS="1000", DJANGO_SETTINGS_MODULE="project.settings")
    done = subprocess.run([sys.executable, "-c", KILLED_BEFORE_FLUSH], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == -signal.SIGKILL, done.stderr
    ids = [int(i) for i in done.stdout.split()]

    # then its five rows are committed, and only the first one's message went out
    assert len(ids) == 5 and statuses(ids) == Counter({Status.PENDING: 5})
    assert waiting_messages("default") == [(ids[0],)]

    # when a worker runs (its relay re-sends the rows whose message never came)
    live.start(*GRACE, "--pool", "prefork", "--concurrency", "1", mode="worker", name="relay-worker")

    # then every job succeeds, each run once
    wait_for(lambda: all_succeeded(ids), 30, what=f"the five jobs to succeed ({statuses(ids)})")
    assert Counter(Effect.objects.filter(job_id__in=ids).values_list("job_id", flat=True)) == Counter({i: 1 for i in ids})


def test_chains_across_two_workers_publish_each_next_step_before_its_commit_and_run_each_step_once_across_a_sigkill(live):
    """issue 28, early publish (jobs.engine.early): with one worker per queue, each next step is
    inserted by its success's own statement (jobs.engine.continuing) and its message goes out
    before the outcome's COMMIT; the other worker's claim waits for that commit and runs the
    step, once. A pool process killed in the middle of a step loses no chain and runs no step
    twice (the killed step runs again, once); nothing is left unacked."""
    from jobs import start_chain
    from tests.support import start_workers

    # given one worker for `default` (two pool processes) and one for `notifications` (no local
    # handoff between them)
    start_workers(live, ("early-default", (*GRACE, "--queues", "default", "--concurrency", "2")),
                  ("early-notifications", (*GRACE, "--queues", "notifications", "--concurrency", "1")))

    # when chains of three steps cross from one to the other and back, and the pool process
    # running one chain's first step (asleep before its effect) is killed
    chains = [start_chain([Step("examples.count", {"sleep": 0.5 if n == 0 else 0}), Step("examples.ping", {}),
                           Step("examples.count", {})]) for n in range(5)]
    wait_for(lambda: Job.objects.filter(chain=chains[0], chain_index=0, status=Status.RUNNING).exists(), 30, what="step 1 to run")
    killed = Job.objects.get(chain=chains[0], chain_index=0)
    os.kill(int(killed.worker.split("/")[1]), signal.SIGKILL)

    # then every chain ran its three steps, one row each, each on the worker of its queue; each
    # step's effect once; only the killed step took a second attempt
    wait_for(lambda: Job.objects.filter(chain__in=chains, status=Status.SUCCEEDED).count() == 15, 40, what="the chains' steps")
    rows = Job.objects.filter(chain__in=chains)
    assert Counter((row.chain_id, row.chain_index) for row in rows) == Counter({(c.pk, i): 1 for c in chains for i in range(3)})
    assert {(row.pk, row.attempt) for row in rows if row.attempt != 1} == {(killed.pk, 2)}
    assert {row.worker.split("@")[0] for row in rows.filter(chain_index=1)} == {"early-notifications"}
    assert {row.worker.split("@")[0] for row in rows.exclude(chain_index=1)} == {"early-default"}
    counted = [row.pk for row in rows.exclude(chain_index=1)]
    assert Counter(Effect.objects.filter(job_id__in=counted).values_list("job_id", flat=True)) == Counter({i: 1 for i in counted})
    wait_for(all_messages_consumed, 15, what="every message to be acked")


FAIL_COMMIT_ONCE = """
CREATE SEQUENCE test_early_commit_failures;
CREATE FUNCTION test_early_fail_commit_once() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  -- a sequence is not transactional: only the first commit of this outcome fails
  IF nextval('test_early_commit_failures') = 1 THEN RAISE EXCEPTION 'this COMMIT fails (a test)'; END IF;
  RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER test_early_fail_commit_once AFTER UPDATE ON jobs_job
  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
  WHEN (NEW.chain_id = {chain} AND NEW.chain_index = 0 AND NEW.status = 'succeeded')
  EXECUTE FUNCTION test_early_fail_commit_once();
"""
DROP_FAIL_COMMIT_ONCE = """
DROP TRIGGER IF EXISTS test_early_fail_commit_once ON jobs_job;
DROP FUNCTION IF EXISTS test_early_fail_commit_once();
DROP SEQUENCE IF EXISTS test_early_commit_failures;
"""


def test_a_step_whose_outcome_commit_fails_after_its_early_publish_runs_its_next_step_once(live):
    """The COMMIT of step 1's outcome fails after its next step's message went out (a deferred
    trigger raises at commit, once): that message names a row that never existed, and claims
    nothing; step 1 stays running, its lease lapses, it runs again, and that outcome inserts and
    publishes step 2, which runs once."""
    from django.db import connection

    from jobs import start_chain
    from tests.support import start_workers

    chain = start_chain([Step("examples.count", {}), Step("examples.ping", {})])
    with connection.cursor() as cursor:
        cursor.execute(FAIL_COMMIT_ONCE.format(chain=int(chain.pk)))
    try:
        # given one worker per queue, and step 1's first outcome commit doomed to fail
        start_workers(live, ("failing-default", (*GRACE, "--queues", "default", "--concurrency", "1")),
                      ("failing-notifications", (*GRACE, "--queues", "notifications", "--concurrency", "1")))

        # when the chain runs, then it succeeds
        wait_for(lambda: Job.objects.filter(chain=chain, status=Status.SUCCEEDED).count() == 2, 40, what="the chain's steps")
    finally:
        with connection.cursor() as cursor:
            cursor.execute(DROP_FAIL_COMMIT_ONCE)

    # step 1 ran twice (its first outcome was rolled back: a handler that is not atomic runs at
    # least once), step 2 exists once and ran once; the early message of the rolled-back row
    # claimed nothing (skipped), and every message was acked
    first, second = Job.objects.filter(chain=chain).order_by("chain_index")
    assert (first.attempt, Effect.objects.filter(job_id=first.pk).count()) == (2, 2)
    assert Job.objects.filter(chain=chain, chain_index=1).count() == 1
    assert (second.status, second.attempt) == (Status.SUCCEEDED, 1)
    assert second.pk > first.pk + 1  # the id of the rolled-back insert was used, and lost
    wait_for(all_messages_consumed, 15, what="every message to be acked")


def test_a_message_of_long_jobs_gives_the_ones_it_has_not_started_back_to_the_queue(live, monkeypatch):
    """jobs.tasks.run_batch: a message of several ids that has run BATCH_HOLD_SECONDS gives the
    rest back to the queue (an idle worker takes them) instead of running them in its turn."""
    from django.conf import settings

    from jobs import enqueue

    # given three 0.4 s jobs enqueued one by one, the last two coalesced into one message
    monkeypatch.setitem(settings.CONVEYOR, "PUBLISH_COALESCE_MS", 1000.0)
    ids = [enqueue("examples.sleep", {"seconds": 0.4}).pk for _ in range(3)]
    wait_for(lambda: sorted(waiting_messages("default")) == [(ids[0],), (ids[1], ids[2])], 5, what="the coalesced message")

    # when a worker runs them
    # (the relay's stale scan off: a worker slow to start under load would otherwise send the
    # message's rows again, and its other process take the id the message was to give back)
    worker = live.start(*GRACE, "--pool", "prefork", "--concurrency", "2", mode="worker", name="give-back-worker",
                        env={"CONVEYOR_RELAY_STALE_SECONDS": "600"})
    wait_for(lambda: all_succeeded(ids), 30, what="the three jobs to succeed")

    # then the message of two ran the first and gave the other back, which ran once
    wait_for(lambda: "gave 1 job(s) of this message back to their queue" in worker.log(), 10, what="the give-back's log line")
    assert set(Job.objects.filter(pk__in=ids).values_list("attempt", flat=True)) == {1}
    wait_for(all_messages_consumed, 10, what="every message to be acked")


#: A worker whose batches keep successes uncommitted while the next job runs, whatever the load:
#: every job counts as fast, a success may wait 30 s, and no give-back (jobs.engine.batchrun).
GROUPING = {"CONVEYOR_BATCH_FAST_SECONDS": "5", "CONVEYOR_BATCH_PENDING_SECONDS": "30", "CONVEYOR_BATCH_HOLD_SECONDS": "60"}


def grouped_batch(monkeypatch, sleep: float) -> list[int]:
    """Three jobs in one message; the third sleeps `sleep` s. Claimed 1 then 2 at once, the second's
    success waits, uncommitted, while the third runs (decisions.keeps_outcomes_pending)."""
    monkeypatch.setattr(publish, "SPREAD", 1)
    ids = [job.pk for job in enqueue_many([Step("examples.count", {}), Step("examples.count", {}),
                                           Step("examples.count", {"sleep": sleep})])]
    assert waiting_messages("default") == [tuple(ids)]
    return ids


def ran_but_not_recorded(job_id: int) -> bool:
    return Effect.objects.filter(job_id=job_id).exists() and Job.objects.get(pk=job_id).status == Status.RUNNING


def test_a_pool_process_killed_before_its_grouped_outcome_commits_reruns_that_job_which_completes_once(live, monkeypatch):
    # given a message of three jobs, the second's success waiting for the round trip after the third
    ids = grouped_batch(monkeypatch, sleep=30)
    live.start(*GRACE, "--pool", "prefork", "--concurrency", "1", mode="worker", name="grouped-kill-worker", env=GROUPING)

    # when the pool process is killed while the third runs, the second's outcome not yet committed
    wait_for(lambda: ran_but_not_recorded(ids[1]) and Job.objects.get(pk=ids[2]).status == Status.RUNNING, 30,
             what="the second job to have run, its outcome waiting, while the third runs")
    assert Job.objects.get(pk=ids[0]).status == Status.SUCCEEDED  # committed with the next claim
    os.kill(Effect.objects.get(job_id=ids[1]).worker_pid, signal.SIGKILL)
    Job.objects.filter(pk=ids[2]).update(input={"sleep": 0})  # its re-run is quick

    # then the second runs again and its second run's outcome is the one recorded, once
    wait_for(lambda: all_succeeded(ids), 60, what=f"the batch to succeed ({statuses(ids)})")
    second = Job.objects.get(pk=ids[1])
    assert (second.attempt, second.output) == (2, {"attempt": 2})
    assert list(Effect.objects.filter(job_id=ids[1]).order_by("attempt").values_list("attempt", flat=True)) == [1, 2]
    # and the first, committed before the kill, ran once
    assert Effect.objects.filter(job_id=ids[0]).count() == 1
    wait_for(all_messages_consumed, 15, what="every message to be acked")


def test_a_grouped_outcome_of_a_run_that_lost_its_row_is_refused(live, monkeypatch):
    # given a message of three jobs, the second's success waiting while the third runs 3 s
    ids = grouped_batch(monkeypatch, sleep=3)
    worker = live.start(*GRACE, "--pool", "prefork", "--concurrency", "1", mode="worker", name="grouped-lost-worker", env=GROUPING)
    wait_for(lambda: ran_but_not_recorded(ids[1]), 30, what="the second job to have run, its outcome waiting")

    # when its row is taken over meanwhile (as a reap and another worker's claim would: attempt 2)
    # (with that claim's own lease: the reaper must not take attempt 2 back while this test reads it)
    Job.objects.filter(pk=ids[1], attempt=1).update(attempt=2, worker="other@host/1",
                                                    lease_expires_at=timezone.now() + timedelta(minutes=5))

    # then attempt 1's grouped success is refused: the row is still attempt 2's, running, no output
    wait_for(lambda: f"job {ids[1]} attempt 1 lost its lease before completing" in worker.log(), 20, what="the refusal's log line")
    second = Job.objects.get(pk=ids[1])
    assert (second.status, second.attempt, second.worker, second.output) == (Status.RUNNING, 2, "other@host/1", None)
    # and the others of the message were recorded
    wait_for(lambda: Job.objects.get(pk=ids[2]).status == Status.SUCCEEDED, 10, what="the third job's outcome")
    assert Job.objects.get(pk=ids[0]).status == Status.SUCCEEDED
