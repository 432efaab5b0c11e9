"""Every state transition of a job row, one test each, in process on the session's real PostgreSQL
and Redis: the runner (`runner.execute`), the reaper, the relay, hand-back and control are called
directly, no worker process runs. Each test asserts on the rows the job store (jobs.engine.store) wrote.

States a test needs that no public call makes at once (an expired lease, a row that became due)
are set up with raw SQL on the row: that is setup, not the behaviour under test.
"""
from __future__ import annotations

import datetime as dt
import json
import threading
from collections import Counter
from typing import Any, Callable

import pytest
from django.db import connection, connections

from jobs import Step, enqueue, enqueue_many, start_chain
from jobs.engine import store
import jobs
from jobs.engine import control, recovery, registry, runner
from jobs.models import Chain, ChainStatus, Job, Status
from tests.integration.conftest import RUNNER_IN_PROCESS
from tests.support import published_job_ids, wait_for

pytestmark = RUNNER_IN_PROCESS

WORKER = "node@test/1"
LEASE = 30


@pytest.fixture(scope="module", autouse=True)
def own_heartbeat():
    """A heartbeat of this module's own (the same class), its thread started by the module's first
    run under `short_lease`, as the process's is by the first run in a process. The process's
    thread keeps the interval of the lease in force when it started: in a whole run another module
    has started it under the default 30 s lease (10 s between beats), and each test here waiting
    on a beat took 7-20 s. One for the module, not per test: each thread keeps a connection."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runner, "heartbeat", runner.Heartbeat())
        yield


@pytest.fixture(autouse=True)
def short_lease(settings):
    """A 3 s lease: this module's heartbeat (`own_heartbeat`) beats every second, so a test
    waiting for it to notice something waits about a second."""
    settings.CONVEYOR = {**settings.CONVEYOR, "LEASE_SECONDS": 3}




# --- helpers ----------------------------------------------------------------------------------


def db_now() -> dt.datetime:
    """PostgreSQL's clock (autocommit: the time of this statement)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT now()")
        return cursor.fetchone()[0]


def row(job_id: int) -> Job:
    return Job.objects.get(pk=job_id)


def chain_of(job_id: int) -> Chain:
    return Chain.objects.get(jobs__id=job_id)


def sql(statement: str, params: list[Any]) -> None:
    """Test setup on a row (an expired lease, a row made due)."""
    with connection.cursor() as cursor:
        cursor.execute(statement, params)


def expire_lease(job_id: int) -> None:
    sql("UPDATE jobs_job SET lease_expires_at = now() - interval '1 second' WHERE id = %s", [job_id])


def second_attempt(job_id: int, worker: str = "node@test/2") -> store.Claimed:
    """Attempt 1 claimed then lost (lease expired, reaped), and attempt 2 claimed by `worker`."""
    first = store.claim(job_id, WORKER, LEASE)
    assert first is not None and first.attempt == 1
    expire_lease(job_id)
    assert recovery.reap() == 1
    second = store.claim(job_id, worker, LEASE)
    assert second is not None and second.attempt == 2
    return second


def run_in_thread(job_id: int, worker: str = WORKER) -> tuple[threading.Thread, list[str]]:
    """runner.execute in its own thread (its own database connections, closed when it ends)."""
    result: list[str] = []

    def target() -> None:
        try:
            result.append(runner.execute(job_id, worker=worker))
        finally:
            connections.close_all()

    thread = threading.Thread(target=target, name=f"execute-{job_id}", daemon=True)
    thread.start()
    return thread, result


def tracked_context(job_id: int):
    return wait_for(
        lambda: next((ctx for ctx in runner.heartbeat.running() if ctx.job_id == job_id), None),
        15,
        interval=0.02,
        what=f"job {job_id} to be running in this process",
    )


def execute_when_due(job_id: int, timeout: float = 10) -> str:
    """Run the job as soon as it is due again (after its backoff)."""
    return wait_for(lambda: (done := runner.execute(job_id, worker=WORKER)) != "skipped" and done, timeout, interval=0.05)


# --- insert ---------------------------------------------------------------------------------------


def test_enqueue_writes_a_pending_row_due_now_by_the_database_clock_and_publishes_it():
    # given
    before = db_now()

    # when
    job = enqueue("examples.echo", {"hello": "world"})

    # then
    after = db_now()
    saved = row(job.pk)
    assert saved.status == Status.PENDING
    assert saved.attempt == 0
    assert saved.input == {"hello": "world"}
    assert before <= saved.run_after <= after
    assert saved.published_at == saved.run_after == saved.created_at
    assert (job.run_after, job.published_at) == (saved.run_after, saved.published_at)
    assert published_job_ids("default") == [job.pk]


def test_enqueue_with_a_future_run_after_is_unpublished_and_cannot_be_claimed():
    # given
    later = db_now() + dt.timedelta(hours=1)

    # when
    job = enqueue("examples.echo", {}, run_after=later)

    # then
    saved = row(job.pk)
    assert saved.status == Status.PENDING
    assert saved.run_after == later
    assert saved.published_at is None
    assert published_job_ids("default") == []
    assert store.claim(job.pk, WORKER, LEASE) is None
    assert row(job.pk).status == Status.PENDING
    assert row(job.pk).attempt == 0


def test_enqueue_many_returns_the_inserted_rows_with_their_ids_and_skips_a_taken_key():
    # given
    taken = enqueue("examples.echo", {"n": 0}, idempotency_key="key-taken")

    # when
    inserted = enqueue_many(
        [
            Step("examples.echo", {"n": 1}, idempotency_key="key-taken"),
            Step("examples.echo", {"n": 2}, idempotency_key="key-2"),
            Step("examples.echo", {"n": 3}),
            Step("examples.echo", {"n": 4}, idempotency_key="key-4"),
            Step("examples.echo", {"n": 5}, idempotency_key="key-4"),
            Step("examples.echo", {"n": 6}),
        ]
    )

    # then
    assert [(job.input["n"], job.idempotency_key) for job in inserted] == [(2, "key-2"), (3, None), (4, "key-4"), (6, None)]
    for job in inserted:
        saved = row(job.pk)
        assert (saved.input, saved.idempotency_key, saved.status) == (job.input, job.idempotency_key, Status.PENDING)
        assert job.published_at == saved.published_at is not None
    assert row(taken.pk).input == {"n": 0}
    assert Job.objects.count() == 5
    assert published_job_ids("default") == sorted([taken.pk, *(job.pk for job in inserted)])


# --- claim ----------------------------------------------------------------------------------------


def test_claim_takes_a_pending_row_for_attempt_one_with_a_lease_and_the_worker():
    # given
    job = enqueue("examples.echo", {"a": 1})
    before = db_now()

    # when
    claimed = store.claim(job.pk, WORKER, LEASE)

    # then
    after = db_now()
    assert claimed is not None
    assert (claimed.id, claimed.type, claimed.input, claimed.attempt, claimed.max_attempts) == (job.pk, "examples.echo", {"a": 1}, 1, 4)
    saved = row(job.pk)
    assert saved.status == Status.RUNNING
    assert saved.attempt == 1
    assert saved.worker == WORKER
    assert before <= saved.started_at <= after
    lease = dt.timedelta(seconds=LEASE)
    assert before + lease <= saved.lease_expires_at <= after + lease


def test_second_claim_of_a_running_row_gets_nothing():
    # given
    job = enqueue("examples.echo", {})
    assert store.claim(job.pk, WORKER, LEASE) is not None

    # when
    again = store.claim(job.pk, "node@test/2", LEASE)

    # then
    assert again is None
    saved = row(job.pk)
    assert (saved.status, saved.attempt, saved.worker) == (Status.RUNNING, 1, WORKER)


def _cancelled() -> int:
    job = enqueue("examples.echo", {})
    assert control.cancel(job) is True
    return job.pk


def _succeeded() -> int:
    job = enqueue("examples.echo", {})
    assert runner.execute(job.pk, worker=WORKER) == "succeeded"
    return job.pk


def _dead() -> int:
    job = enqueue("examples.fail", {"times": 5}, retries=0)
    assert runner.execute(job.pk, worker=WORKER) == "dead"
    return job.pk


def _not_yet_due() -> int:
    return enqueue("examples.echo", {}, run_after=db_now() + dt.timedelta(hours=1)).pk


def _failed_in_backoff() -> int:
    job = enqueue("examples.echo", {})
    assert store.claim(job.pk, WORKER, LEASE) is not None
    assert store.fail(job.pk, 1, "boom", 3600) is not None
    return job.pk


@pytest.mark.parametrize(
    "make_row",
    [_cancelled, _succeeded, _dead, _not_yet_due, _failed_in_backoff],
    ids=["cancelled", "succeeded", "dead", "not-yet-due", "failed-in-backoff"],
)
def test_claim_leaves_a_row_that_is_not_runnable_now(make_row: Callable[[], int]):
    # given
    job_id = make_row()
    before = row(job_id)

    # when
    claimed = store.claim(job_id, "node@test/2", LEASE)

    # then
    assert claimed is None
    after = row(job_id)
    assert (after.status, after.attempt, after.worker, after.updated_at) == (
        before.status,
        before.attempt,
        before.worker,
        before.updated_at,
    )


# --- heartbeat ------------------------------------------------------------------------------------


def test_heartbeat_extends_the_lease_of_the_attempt_it_names():
    # given
    job = enqueue("examples.echo", {})
    store.claim(job.pk, WORKER, 5)
    before = db_now()

    # when
    beats = store.heartbeat([(job.pk, 1)], 600)

    # then
    assert beats == [store.Beat(job.pk, 1, False)]
    assert row(job.pk).lease_expires_at >= before + dt.timedelta(seconds=600)


def test_heartbeat_naming_an_older_attempt_extends_nothing_and_leaves_that_run_out_of_its_answer():
    # given
    stale = enqueue("examples.echo", {})
    second_attempt(stale.pk)
    lease = row(stale.pk).lease_expires_at
    other = enqueue("examples.echo", {})
    store.claim(other.pk, WORKER, LEASE)

    # when
    beats = store.heartbeat([(stale.pk, 1), (other.pk, 1)], 600)

    # then
    assert beats == [store.Beat(other.pk, 1, False)]
    assert row(stale.pk).lease_expires_at == lease
    assert row(stale.pk).attempt == 2



def context_of(claimed: store.Claimed) -> runner.Context:
    return runner.Context(
        job_id=claimed.id, type=claimed.type, attempt=claimed.attempt, max_attempts=claimed.max_attempts,
        chain_id=None, chain_index=None, parent_id=None, idempotency_key=f"conveyor-job-{claimed.id}",
    )


def test_the_end_of_a_lost_run_leaves_the_heartbeat_of_the_jobs_live_rerun_beating():
    # given: attempt 1 lost its row (reaped) but still runs in this process (a threads pool),
    # and attempt 2 of the same job started beside it, both tracked by one heartbeat
    job = enqueue("examples.echo", {})
    live = second_attempt(job.pk)
    heartbeat = runner.Heartbeat()
    lost_run, live_run = context_of(live._replace(attempt=1)), context_of(live)
    heartbeat.track(lost_run)
    heartbeat.track(live_run)

    try:
        # when: the lost run ends
        heartbeat.untrack(lost_run)

        # then: the live run is still tracked ...
        assert heartbeat.running() == [live_run]
        # ... and a beat with its lease about to lapse extends it (3 s), not telling it it lost
        sql("UPDATE jobs_job SET lease_expires_at = now() + interval '1 second' WHERE id = %s", [job.pk])
        heartbeat.beat()
        assert row(job.pk).lease_expires_at >= db_now() + dt.timedelta(seconds=2)
        assert (live_run.lost, live_run.cancelled) == (False, False)
        assert (row(job.pk).status, row(job.pk).attempt) == (Status.RUNNING, 2)
    finally:
        heartbeat.untrack(live_run)  # its thread beats nothing after the test


# --- progress -------------------------------------------------------------------------------------


def test_progress_is_recorded_only_for_the_current_attempt():
    # given
    job = enqueue("examples.echo", {})
    second_attempt(job.pk)

    # when
    store.progress(job.pk, 1, 90, "from the lost attempt")
    stale = row(job.pk)
    store.progress(job.pk, 2, 40, "from the current attempt")

    # then
    assert (stale.progress, stale.progress_message) == (0, "")
    current = row(job.pk)
    assert (current.progress, current.progress_message) == (40, "from the current attempt")


# --- succeed --------------------------------------------------------------------------------------


def test_run_that_returns_ends_the_row_succeeded_with_its_output():
    # given
    job = enqueue("examples.echo", {"hello": "world"})

    # when
    outcome = runner.execute(job.pk, worker=WORKER)

    # then
    assert outcome == "succeeded"
    saved = row(job.pk)
    assert saved.status == Status.SUCCEEDED
    assert saved.output == {"hello": "world"}
    assert (saved.attempt, saved.progress, saved.worker, saved.error) == (1, 100, WORKER, "")
    assert saved.lease_expires_at is None
    assert saved.started_at <= saved.finished_at


def test_outcome_of_an_older_attempt_is_refused():
    # given
    job = enqueue("examples.echo", {})
    second_attempt(job.pk, worker="node@test/2")

    # when
    succeeded = store.succeed(job.pk, 1, json.dumps({"from": "attempt 1"}))
    failed = store.fail(job.pk, 1, "attempt 1 failed", 0)

    # then
    assert succeeded is None
    assert failed is None
    saved = row(job.pk)
    assert (saved.status, saved.attempt, saved.worker, saved.output) == (Status.RUNNING, 2, "node@test/2", None)


def test_run_whose_row_was_handed_back_and_claimed_again_learns_it_lost_and_records_nothing():
    # given: a long run in this process, its row handed back and claimed by another worker
    job = enqueue("examples.sleep", {"seconds": 60})
    thread, result = run_in_thread(job.pk)
    ctx = tracked_context(job.pk)
    assert recovery.hand_back("node@test") == 1
    assert store.claim(job.pk, "other@test/2", LEASE).attempt == 2

    # when: the run's heartbeat finds attempt 1 gone (the handler stops early), it returns
    wait_for(lambda: ctx.lost, 20, interval=0.05, what="the heartbeat to see the run lost its row")
    thread.join(20)

    # then
    assert not thread.is_alive()
    assert result == ["lost"]
    assert ctx.cancelled is True
    saved = row(job.pk)
    assert (saved.status, saved.attempt, saved.worker, saved.output) == (Status.RUNNING, 2, "other@test/2", None)


# --- chains ---------------------------------------------------------------------------------------


def test_success_of_a_chain_step_inserts_the_next_step_in_the_same_transaction():
    # given
    chain = start_chain([Step("examples.echo", {"step": 0}), Step("examples.ping", {"step": 1}), Step("examples.echo", {"step": 2})])
    first = Job.objects.get(chain=chain, chain_index=0)

    # when
    outcome = runner.execute(first.pk, worker=WORKER)

    # then
    assert outcome == "succeeded"
    second = Job.objects.get(chain=chain, chain_index=1)
    assert (second.type, second.input, second.queue, second.parent_id) == ("examples.ping", {"step": 1}, "notifications", first.pk)
    assert second.status == Status.PENDING
    assert second.published_at is not None
    assert Job.objects.filter(chain=chain).count() == 2
    with connection.cursor() as cursor:
        cursor.execute("SELECT id, xmin::text FROM jobs_job WHERE id IN (%s, %s)", [first.pk, second.pk])
        xmin = dict(cursor.fetchall())
    assert xmin[first.pk] == xmin[second.pk], "the success and the next step were written by different transactions"
    assert row(first.pk).finished_at == second.created_at  # now(): the start of one transaction
    assert Chain.objects.get(pk=chain.pk).status == ChainStatus.RUNNING
    assert published_job_ids("notifications") == [second.pk]


def test_success_of_the_last_step_ends_the_chain_succeeded():
    # given
    chain = start_chain([Step("examples.echo", {"step": 0}), Step("examples.echo", {"step": 1})])
    first = Job.objects.get(chain=chain, chain_index=0)
    assert runner.execute(first.pk, worker=WORKER) == "succeeded"
    last = Job.objects.get(chain=chain, chain_index=1)
    assert Chain.objects.get(pk=chain.pk).status == ChainStatus.RUNNING

    # when
    outcome = runner.execute(last.pk, worker=WORKER)

    # then
    assert outcome == "succeeded"
    ended = Chain.objects.get(pk=chain.pk)
    assert ended.status == ChainStatus.SUCCEEDED
    assert ended.finished_at == row(last.pk).finished_at
    assert Job.objects.filter(chain=chain).count() == 2


def test_lone_job_that_continues_becomes_step_zero_of_a_new_chain():
    # given
    data = {"width": 8, "height": 8, "source": 16, "email": "ops@example.com"}
    job = enqueue("images.resize", data)

    # when
    outcome = runner.execute(job.pk, worker=WORKER)

    # then
    assert outcome == "succeeded"
    first = row(job.pk)
    assert first.chain_id is not None and first.chain_index == 0
    chain = Chain.objects.get(pk=first.chain_id)
    assert chain.status == ChainStatus.RUNNING
    assert [step["type"] for step in chain.steps] == ["images.resize", "notifications.send-email"]
    assert chain.steps[0]["input"] == first.input
    assert chain.steps[1]["input"]["to"] == "ops@example.com"
    nxt = Job.objects.get(chain=chain, chain_index=1)
    assert (nxt.type, nxt.queue, nxt.parent_id, nxt.status) == ("notifications.send-email", "notifications", job.pk, Status.PENDING)
    assert published_job_ids("notifications") == [nxt.pk]

    # and when the continuation runs, the new chain ends succeeded
    assert runner.execute(nxt.pk, worker=WORKER) == "succeeded"
    assert Chain.objects.get(pk=chain.pk).status == ChainStatus.SUCCEEDED


# --- fail -----------------------------------------------------------------------------------------


def test_failed_attempt_before_the_last_is_failed_until_its_backoff_and_unpublished():
    # given: examples.fail backs off 0.2 s * 2**(attempt-1), times 0.5..1.0
    job = enqueue("examples.fail", {"times": 5})

    # when
    outcome = runner.execute(job.pk, worker=WORKER)

    # then
    assert outcome == "failed"
    saved = row(job.pk)
    assert (saved.status, saved.attempt, saved.max_attempts) == (Status.FAILED, 1, 4)
    backoff = (saved.run_after - saved.updated_at).total_seconds()
    assert 0.1 <= backoff <= 0.2, backoff
    assert saved.published_at is None
    assert saved.lease_expires_at is None
    assert saved.finished_at is None
    assert "failing attempt 1" in saved.error


def test_failure_of_the_last_attempt_is_dead_and_fails_the_chain():
    # given
    chain = start_chain([Step("examples.fail", {"times": 5}, retries=1), Step("examples.echo", {})])
    job = Job.objects.get(chain=chain, chain_index=0)
    assert runner.execute(job.pk, worker=WORKER) == "failed"

    # when
    outcome = execute_when_due(job.pk)

    # then
    assert outcome == "dead"
    saved = row(job.pk)
    assert (saved.status, saved.attempt, saved.max_attempts) == (Status.DEAD, 2, 2)
    assert saved.finished_at is not None
    assert "failing attempt 2" in saved.error
    ended = Chain.objects.get(pk=chain.pk)
    assert ended.status == ChainStatus.FAILED
    assert ended.finished_at is not None
    assert Job.objects.filter(chain=chain).count() == 1


def test_a_handler_raising_permanent_is_dead_after_one_attempt_whatever_attempts_are_left():
    # given a type of 4 attempts whose handler knows no retry can help
    def handler(ctx, data: dict) -> dict:
        raise jobs.Permanent("customer 7 was deleted: nothing to bill")

    registry.add(registry.JobType("t.permanent", handler, retries=3))
    try:
        job = enqueue("t.permanent")

        # when it runs
        outcome = runner.execute(job.pk, worker=WORKER)
    finally:
        registry.remove("t.permanent")

    # then it is dead after attempt 1, never published again, its error the handler's
    saved = row(job.pk)
    assert (outcome, saved.status, saved.attempt, saved.max_attempts) == ("dead", Status.DEAD, 1, 4)
    assert saved.finished_at is not None and saved.published_at is None
    assert saved.error.strip().endswith("jobs.engine.registry.Permanent: customer 7 was deleted: nothing to bill")
    assert runner.execute(job.pk, worker=WORKER) == "skipped"


# --- reap -----------------------------------------------------------------------------------------


def test_reaper_returns_a_running_row_whose_lease_expired_to_pending_keeping_its_attempt():
    # given
    lost = enqueue("examples.echo", {})
    held = enqueue("examples.echo", {})
    store.claim(lost.pk, WORKER, LEASE)
    store.claim(held.pk, WORKER, LEASE)
    expire_lease(lost.pk)

    # when
    reaped = recovery.reap()

    # then
    assert reaped == 1
    saved = row(lost.pk)
    assert (saved.status, saved.attempt, saved.max_attempts) == (Status.PENDING, 1, 4)
    assert saved.lease_expires_at is None
    assert saved.published_at is None
    assert saved.finished_at is None
    assert saved.run_after <= db_now()
    assert "lease expired" in saved.error and WORKER in saved.error
    assert row(held.pk).status == Status.RUNNING
    assert store.claim(lost.pk, "node@test/2", LEASE).attempt == 2


def test_reaper_ends_a_row_on_its_last_attempt_dead_and_fails_its_chain():
    # given
    chain = start_chain([Step("examples.echo", {}, retries=0), Step("examples.echo", {})])
    job = Job.objects.get(chain=chain, chain_index=0)
    store.claim(job.pk, WORKER, LEASE)
    expire_lease(job.pk)

    # when
    reaped = recovery.reap()

    # then
    assert reaped == 1
    saved = row(job.pk)
    assert (saved.status, saved.attempt) == (Status.DEAD, 1)
    assert saved.finished_at is not None
    assert Chain.objects.get(pk=chain.pk).status == ChainStatus.FAILED
    assert Job.objects.filter(chain=chain).count() == 1


# --- relay ----------------------------------------------------------------------------------------


def test_relay_publishes_a_due_row_never_published():
    # given: a delayed row whose time has come
    job = enqueue("examples.echo", {}, run_after=db_now() + dt.timedelta(hours=1))
    sql("UPDATE jobs_job SET run_after = now() - interval '1 second' WHERE id = %s", [job.pk])
    assert published_job_ids("default") == []
    before = db_now()

    # when
    relayed = recovery.relay()

    # then
    assert relayed == 1
    saved = row(job.pk)
    assert before <= saved.published_at <= db_now()
    assert saved.status == Status.PENDING
    assert published_job_ids("default") == [job.pk]


def test_relay_leaves_a_row_not_yet_due_unpublished():
    # given
    job = enqueue("examples.echo", {}, run_after=db_now() + dt.timedelta(hours=1))

    # when
    relayed = recovery.relay()

    # then
    assert relayed == 0
    assert row(job.pk).published_at is None
    assert published_job_ids("default") == []


# --- hand-back ------------------------------------------------------------------------------------


def test_hand_back_of_a_drained_node_returns_its_running_rows_to_pending_without_counting_the_attempt():
    # given
    mine = enqueue("examples.echo", {})
    other = enqueue("examples.echo", {})
    store.claim(mine.pk, store.worker_name("node-a@test", 101), LEASE)
    store.claim(other.pk, store.worker_name("node-a@test2", 102), LEASE)

    # when: the supervisor stopped the node on purpose (a drain past its grace period)
    handed = recovery.hand_back("node-a@test", drained=True)

    # then
    assert handed == 1
    saved = row(mine.pk)
    assert (saved.status, saved.attempt, saved.max_attempts) == (Status.PENDING, 1, 5)
    assert saved.lease_expires_at is None
    assert saved.published_at is None
    assert saved.finished_at is None
    assert "handed back" in saved.error
    untouched = row(other.pk)
    assert (untouched.status, untouched.attempt, untouched.max_attempts) == (Status.RUNNING, 1, 4)
    assert store.claim(mine.pk, WORKER, LEASE).attempt == 2


def test_hand_back_after_a_crash_counts_the_attempt_and_the_last_ends_dead_saying_the_worker_died():
    # given: a chain's first step with 2 attempts, on a worker whose process died by itself
    chain = start_chain([Step("examples.echo", {}, retries=1), Step("examples.echo", {})])
    job = Job.objects.get(chain=chain, chain_index=0)
    store.claim(job.pk, store.worker_name("node-a@test", 101, "s1"), LEASE)

    # when: the supervisor hands its jobs back (not drained: it crashed)
    assert recovery.hand_back("node-a@test", "s1") == 1

    # then: the attempt counted, nothing granted back; it runs again
    saved = row(job.pk)
    assert (saved.status, saved.attempt, saved.max_attempts, saved.crashes) == (Status.PENDING, 1, 2, 1)
    assert saved.finished_at is None and saved.published_at is None
    assert "worker process died while running this job (1 time;" in saved.error

    # when: its second (last) attempt kills its worker too
    assert store.claim(job.pk, store.worker_name("node-a@test", 102, "s2"), LEASE).attempt == 2
    assert recovery.hand_back("node-a@test", "s2") == 1

    # then: dead, saying the worker process died while running it, twice; its chain failed
    saved = row(job.pk)
    assert (saved.status, saved.attempt, saved.max_attempts, saved.crashes) == (Status.DEAD, 2, 2, 2)
    assert saved.finished_at is not None
    assert saved.error.startswith("worker process died while running this job (2 times; last: attempt 2 on node-a@test/102/s2)")
    assert Chain.objects.get(pk=chain.pk).status == ChainStatus.FAILED
    assert store.claim(job.pk, WORKER, LEASE) is None


def test_the_reaper_counts_a_lost_run_as_a_crash():
    job = enqueue("examples.echo", {})
    store.claim(job.pk, WORKER, LEASE)
    expire_lease(job.pk)
    assert recovery.reap() == 1
    store.claim(job.pk, store.worker_name("node-a@test", 101), LEASE)

    recovery.hand_back("node-a@test")

    assert (row(job.pk).crashes, row(job.pk).attempt) == (2, 2)
    assert "(2 times;" in row(job.pk).error


def test_hand_back_of_a_running_row_whose_cancel_was_asked_ends_it_and_its_chain_cancelled():
    # given
    chain = start_chain([Step("examples.echo", {}), Step("examples.echo", {})])
    job = Job.objects.get(chain=chain, chain_index=0)
    store.claim(job.pk, store.worker_name("node-a@test", 101), LEASE)
    assert control.cancel(job) is True
    assert row(job.pk).status == Status.RUNNING

    # when
    handed = recovery.hand_back("node-a@test")

    # then
    assert handed == 1
    saved = row(job.pk)
    assert saved.status == Status.CANCELLED
    assert saved.finished_at is not None
    assert Chain.objects.get(pk=chain.pk).status == ChainStatus.CANCELLED
    assert Job.objects.filter(chain=chain).count() == 1
    assert store.claim(job.pk, WORKER, LEASE) is None


def test_hand_back_of_one_start_of_a_node_touches_only_that_starts_rows():
    # given: three starts of one node (one without an instance token), a token that is a prefix
    workers = {
        "this": store.worker_name("node-a@test", 101, "a1"),
        "later": store.worker_name("node-a@test", 102, "a10"),
        "earlier": store.worker_name("node-a@test", 103, "b1"),
        "untokened": store.worker_name("node-a@test", 104),
    }
    jobs = {name: enqueue("examples.echo", {}) for name in workers}
    for name, job in jobs.items():
        store.claim(job.pk, workers[name], LEASE)

    # when
    handed = recovery.hand_back("node-a@test", "a1")

    # then
    assert handed == 1
    assert {name: row(job.pk).status for name, job in jobs.items()} == {
        "this": Status.PENDING,
        "later": Status.RUNNING,
        "earlier": Status.RUNNING,
        "untokened": Status.RUNNING,
    }
    # and without a token, every start of the node
    assert recovery.hand_back("node-a@test") == 3
    assert {row(job.pk).status for job in jobs.values()} == {Status.PENDING}


def test_hand_back_matches_node_names_literally_not_as_like_patterns():
    # given: `_` and `%` are LIKE wildcards
    exact = enqueue("examples.echo", {})
    lookalike = enqueue("examples.echo", {})
    store.claim(exact.pk, store.worker_name("node_%@test", 101), LEASE)
    store.claim(lookalike.pk, store.worker_name("nodeX-anything@test", 102), LEASE)

    # when
    handed = recovery.hand_back("node_%@test")

    # then
    assert handed == 1
    assert row(exact.pk).status == Status.PENDING
    assert row(lookalike.pk).status == Status.RUNNING


def test_hand_back_matches_an_instance_token_literally():
    # given
    job = enqueue("examples.echo", {})
    store.claim(job.pk, store.worker_name("node-a@test", 101, "x\\y"), LEASE)

    # when
    handed = recovery.hand_back("node-a@test", "x\\y")

    # then
    assert handed == 1
    assert row(job.pk).status == Status.PENDING


# --- cancel ---------------------------------------------------------------------------------------


def test_cancel_of_a_pending_row_ends_it_and_its_chain_cancelled_at_once():
    # given
    chain = start_chain([Step("examples.echo", {}), Step("examples.echo", {})])
    job = Job.objects.get(chain=chain, chain_index=0)

    # when
    cancelled = control.cancel(job)

    # then
    assert cancelled is True
    saved = row(job.pk)
    assert (saved.status, saved.cancel_requested, saved.attempt) == (Status.CANCELLED, True, 0)
    assert saved.finished_at is not None
    assert Chain.objects.get(pk=chain.pk).status == ChainStatus.CANCELLED
    assert store.claim(job.pk, WORKER, LEASE) is None


def test_cancel_of_a_failed_row_waiting_for_its_retry_ends_it_cancelled_at_once():
    # given
    job_id = _failed_in_backoff()

    # when
    cancelled = control.cancel(row(job_id))

    # then
    assert cancelled is True
    saved = row(job_id)
    assert (saved.status, saved.cancel_requested, saved.attempt) == (Status.CANCELLED, True, 1)
    assert saved.finished_at is not None


def test_cancel_of_a_finished_row_changes_nothing():
    # given
    job_id = _succeeded()
    before = row(job_id)

    # when
    cancelled = control.cancel(before)

    # then
    assert cancelled is False
    after = row(job_id)
    assert (after.status, after.cancel_requested, after.updated_at) == (Status.SUCCEEDED, False, before.updated_at)


def test_cancel_of_a_running_row_asks_it_to_stop_and_the_heartbeat_tells_the_run():
    # given: a long run in this process
    job = enqueue("examples.sleep", {"seconds": 60})
    thread, _result = run_in_thread(job.pk)
    ctx = tracked_context(job.pk)
    assert ctx.cancelled is False

    # when
    cancelled = control.cancel(row(job.pk))

    # then
    assert cancelled is True
    saved = row(job.pk)
    assert (saved.status, saved.cancel_requested, saved.attempt) == (Status.RUNNING, True, 1)
    wait_for(lambda: ctx.cancelled, 20, interval=0.05, what="the heartbeat to tell the run it was cancelled")
    assert ctx.lost is False
    thread.join(20)  # examples.sleep stops once cancelled
    assert not thread.is_alive()


def test_give_back_returns_in_order_the_messages_of_the_ids_still_to_run_marked_published_again():
    first, running, cancelled, last = (enqueue("examples.echo", {"i": i}) for i in range(4))
    assert store.claim(running.pk, "node@test/1", 30) is not None
    assert control.cancel(cancelled)
    Job.objects.filter(pk__in=[first.pk, last.pk]).update(published_at=dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc))

    messages = store.give_back([last.pk, running.pk, cancelled.pk, first.pk])

    assert [(m.job_id, m.queue, m.type) for m in messages] == [(last.pk, "default", "examples.echo"),
                                                               (first.pk, "default", "examples.echo")]
    assert all(row.year > 2020 for row in Job.objects.filter(pk__in=[first.pk, last.pk]).values_list("published_at", flat=True))


# --- a multi-id message: chunk claims, grouped outcomes, released claims (jobs.engine.batchrun) ---


def test_claim_many_takes_the_runnable_ids_in_their_order_and_ahead_only_those_with_an_attempt_to_spare():
    # given five jobs: one already running elsewhere, one on its last attempt, one cancelled
    first, taken, last_try, cancelled, fifth = (enqueue("examples.echo", {"i": i}) for i in range(5))
    assert store.claim(taken.pk, "node@test/2", LEASE) is not None
    sql("UPDATE jobs_job SET max_attempts = 1 WHERE id = %s", [last_try.pk])
    assert control.cancel(cancelled)

    # when one statement claims them all
    claimed = store.claim_many([fifth.pk, first.pk, taken.pk, last_try.pk, cancelled.pk], WORKER, LEASE)

    # then it took the runnable ones with an attempt to spare, in the order asked, for attempt 1
    assert [(c.id, c.attempt, c.type) for c in claimed] == [(fifth.pk, 1, "examples.echo"), (first.pk, 1, "examples.echo")]
    assert {row(i).status for i in (fifth.pk, first.pk)} == {Status.RUNNING}
    assert (row(last_try.pk).status, row(taken.pk).worker) == (Status.PENDING, "node@test/2")
    # and a row on its last attempt is claimed when it is the chunk's first (it runs at once)
    assert [c.id for c in store.claim_many([last_try.pk], WORKER, LEASE)] == [last_try.pk]


def test_succeed_many_records_each_attempts_success_and_refuses_an_attempt_that_lost_its_row():
    # given two claimed jobs, the second's row taken over by attempt 2 since
    mine = enqueue("examples.echo", {})
    assert store.claim(mine.pk, WORKER, LEASE) is not None
    lost = enqueue("examples.echo", {})
    second_attempt(lost.pk)

    # when the successes of attempt 1 of both are recorded together
    done = store.succeed_many([(mine.pk, 1, '{"a": 1}'), (lost.pk, 1, '{"b": 2}')])

    # then only the run that still held its row is recorded
    assert done == [store.Done(mine.pk, "examples.echo", Status.SUCCEEDED)]
    assert (row(mine.pk).status, row(mine.pk).output, row(mine.pk).lease_expires_at) == (Status.SUCCEEDED, {"a": 1}, None)
    assert (row(lost.pk).status, row(lost.pk).attempt, row(lost.pk).output) == (Status.RUNNING, 2, None)


def test_grouped_outcomes_and_the_next_claim_commit_together_in_one_transaction_or_not_at_all():
    ran, after, next_ = (enqueue("examples.echo", {"i": i}) for i in range(3))
    assert store.claim(ran.pk, WORKER, LEASE) is not None

    # when the claim half of the round trip fails (a lease PostgreSQL cannot read)
    with pytest.raises(Exception):
        store.succeed_many_and_claim([(ran.pk, 1, "{}")], [after.pk], WORKER, "not a number")  # type: ignore[arg-type]
    connections["default"].close()

    # then the success sent with it was rolled back too
    assert row(ran.pk).status == Status.RUNNING and row(after.pk).status == Status.PENDING

    # when both succeed: the success recorded, the next ids claimed, in the order asked
    done, claimed = store.succeed_many_and_claim([(ran.pk, 1, "{}")], [next_.pk, after.pk], WORKER, LEASE)
    assert [d.id for d in done] == [ran.pk] and [c.id for c in claimed] == [next_.pk, after.pk]
    assert [row(i).status for i in (ran.pk, after.pk, next_.pk)] == [Status.SUCCEEDED, Status.RUNNING, Status.RUNNING]


def test_a_claim_released_unstarted_is_runnable_again_with_its_attempt_uncounted_unless_its_cancel_was_asked():
    # given three jobs claimed ahead, one of them a retry (failed before), one asked to cancel
    fresh, retry, cancelled = (enqueue("examples.echo", {"i": i}) for i in range(3))
    sql("UPDATE jobs_job SET status = 'failed', attempt = 1, error = 'boom' WHERE id = %s", [retry.pk])
    claimed = store.claim_many([fresh.pk, retry.pk, cancelled.pk], WORKER, LEASE)
    assert [c.attempt for c in claimed] == [1, 2, 1]
    assert control.cancel(cancelled) is not None

    # when they are released (the message gives its rest back)
    messages = store.release_claimed([(c.id, c.attempt) for c in claimed])

    # then the two are runnable as before, published again, and the cancelled one is left to its lease
    assert [m.job_id for m in messages] == [fresh.pk, retry.pk]
    assert [(row(i).status, row(i).attempt) for i in (fresh.pk, retry.pk, cancelled.pk)] == [
        (Status.PENDING, 0), (Status.FAILED, 1), (Status.RUNNING, 1)]
    assert row(fresh.pk).lease_expires_at is None
    assert store.claim(fresh.pk, WORKER, LEASE).attempt == 1


def test_a_batch_run_in_process_runs_each_id_once_groups_short_successes_and_ends_a_chain_step_its_own_way(monkeypatch, settings):
    from jobs.engine import batchrun

    settings.CONVEYOR = {**settings.CONVEYOR, "BATCH_HOLD_SECONDS": 60.0}  # no give-back on a loaded machine
    monkeypatch.setattr(batchrun, "CARRIED", [0, None])  # this process's first message

    # given a message's ids: plain jobs, a chain's first step, an id already ended, a type with limits
    plain = [enqueue("examples.echo", {"i": i}).pk for i in range(6)]
    chain = start_chain([Step("examples.echo", {"s": 0}), Step("examples.echo", {"s": 1})])
    step = Job.objects.get(chain=chain, chain_index=0).pk
    ended = enqueue("examples.echo", {}).pk
    assert runner.execute(ended, WORKER) == "succeeded"
    limited = enqueue("examples.two-at-once", {"seconds": 0}).pk
    ids = [plain[0], step, *plain[1:3], ended, limited, *plain[3:]]
    # (the outcomes' statements observed: which job ids each one recorded)
    alone: list[int] = []
    grouped: list[list[int]] = []
    succeed, succeed_many = store.succeed, store.succeed_many

    def spy_succeed(job_id, *args, **kwargs):
        alone.append(job_id)
        return succeed(job_id, *args, **kwargs)

    def spy_succeed_many(outcomes):
        grouped.append([o[0] for o in outcomes])
        return succeed_many(outcomes)

    monkeypatch.setattr(store, "succeed", spy_succeed)
    monkeypatch.setattr(store, "succeed_many", spy_succeed_many)
    # (a chain step's success that inserts its next step is one statement: jobs.engine.continuing)
    continuing = store.succeed_continuing
    monkeypatch.setattr(store, "succeed_continuing",
                        lambda sql, job_id, *a, **k: (alone.append(job_id), continuing(sql, job_id, *a, **k))[1])
    together = store.succeed_many_and_claim
    monkeypatch.setattr(store, "succeed_many_and_claim",
                        lambda outcomes, *a: (grouped.append([o[0] for o in outcomes]), together(outcomes, *a))[1])

    # when the batch runs them in this process
    outcomes = batchrun.run(ids, WORKER, lambda job_id: runner.execute(job_id, WORKER, own_time_limit=True))

    # then each ran once, in order, the ended one skipped
    assert [str(o) for o in outcomes] == ["succeeded", "succeeded", "succeeded", "succeeded", "skipped",
                                          "succeeded", "succeeded", "succeeded", "succeeded"]
    assert all((row(i).status, row(i).attempt) == (Status.SUCCEEDED, 1) for i in [*plain, step, limited])
    assert row(plain[0]).output == {"i": 0}
    # and the chain went on (its step's outcome inserted the next step)
    assert Job.objects.filter(chain=chain, chain_index=1).exists()
    # and the plain jobs' successes were committed in grouped statements, each once; the chain's
    # step and the limited type's their own way
    assert sorted(i for ids_ in grouped for i in ids_) == sorted(plain)
    assert set(alone) == {step, limited}


def test_a_batch_that_gives_its_rest_back_releases_the_ids_it_claimed_ahead_unstarted(settings, monkeypatch):
    from jobs.engine import batchrun

    monkeypatch.setattr(batchrun, "CARRIED", [0, None])  # this process's first message

    # given a message whose fourth job outlasts its hold, its jobs all "fast" (the chunks grow: 1, 2, 4)
    settings.CONVEYOR = {**settings.CONVEYOR, "BATCH_HOLD_SECONDS": 1.0, "BATCH_FAST_SECONDS": 5.0}
    ids = [enqueue("examples.echo", {"i": i}).pk for i in range(3)]
    ids += [enqueue("examples.sleep", {"seconds": 1.2}).pk] + [enqueue("examples.echo", {"i": i}).pk for i in range(3, 8)]
    before = published_job_ids("default")  # the enqueues' own messages

    # when the batch runs it
    outcomes = batchrun.run(ids, WORKER, lambda job_id: runner.execute(job_id, WORKER, own_time_limit=True))

    # then it ran the first four, and gave the rest back: those it had claimed ahead (the chunk of
    # four: the sleep and three more) released, runnable, their attempt uncounted, and all published
    assert [str(o) for o in outcomes] == ["succeeded"] * 4 + ["given back"] * 5
    rest = ids[4:]
    assert [(row(i).status, row(i).attempt) for i in rest] == [(Status.PENDING, 0)] * len(rest)
    assert sum(1 for i in rest[:3] if row(i).started_at is None and row(i).worker == WORKER) == 3
    assert Counter(published_job_ids("default")) - Counter(before) == Counter(rest)  # one new message each
    assert not [ctx for ctx in runner.heartbeat.running() if ctx.job_id in rest]


def test_a_message_sent_before_its_commit_that_gives_its_rest_back_names_an_outcome_per_id(settings):
    # A live worker's log (schemathesis' fan-outs): a batch message published early (its rows not
    # yet committed: jobs.engine.early) gave its rest back, then failed with "zip() argument 2 is
    # shorter than argument 1": jobs.tasks.run_batch returned only the outcomes of the jobs it ran,
    # and the monitor pairs ids and outcomes strictly.
    from types import SimpleNamespace

    from jobs import tasks
    from jobs.interfaces.monitoring import describe

    settings.CONVEYOR = {**settings.CONVEYOR, "BATCH_HOLD_SECONDS": 1.0}
    ids = [enqueue("examples.sleep", {"seconds": 1.1}).pk] + [enqueue("examples.echo", {"i": i}).pk for i in range(3)]
    # when a worker runs the message (the task's `self` as run_batch reads it: the request's time limits)
    task = SimpleNamespace(request=SimpleNamespace(timelimit=(None, None)))
    outcomes = tasks.run_batch(task, ids, WORKER, published_early=True)
    # then there is an outcome per id: the first ran, the rest were given back, and the summary reads
    assert [str(o) for o in outcomes] == ["succeeded"] + ["given back"] * 3
    assert "; ".join(describe(i, o) for i, o in zip(ids, outcomes, strict=True)).endswith(f"job {ids[-1]} given back")
    assert [row(i).status for i in ids[1:]] == [Status.PENDING] * 3


def test_a_batch_whose_give_back_cannot_publish_runs_the_rest_here_each_once(settings, monkeypatch):
    from jobs.engine import batchrun, publish

    monkeypatch.setattr(batchrun, "CARRIED", [0, None])
    # given the same message as above, and a publish that fails (Redis away: nothing sent)
    settings.CONVEYOR = {**settings.CONVEYOR, "BATCH_HOLD_SECONDS": 1.0, "BATCH_FAST_SECONDS": 5.0}
    ids = [enqueue("examples.echo", {"i": i}).pk for i in range(3)]
    ids += [enqueue("examples.sleep", {"seconds": 1.2}).pk] + [enqueue("examples.echo", {"i": i}).pk for i in range(3, 8)]
    monkeypatch.setattr(publish, "publish", lambda messages: 0)

    # when the batch runs it
    outcomes = batchrun.run(ids, WORKER, lambda job_id: runner.execute(job_id, WORKER, own_time_limit=True))

    # then the rest, released or never claimed, ran here one by one: every job once, succeeded
    assert [str(o) for o in outcomes] == ["succeeded"] * 9
    assert [(row(i).status, row(i).attempt) for i in ids] == [(Status.SUCCEEDED, 1)] * 9
    assert not [ctx for ctx in runner.heartbeat.running() if ctx.job_id in ids]


def test_an_id_twice_in_a_batch_message_runs_once(monkeypatch, settings):
    from jobs.engine import batchrun

    # given a message naming one job twice in one chunk (the process claims two at once)
    settings.CONVEYOR = {**settings.CONVEYOR, "BATCH_HOLD_SECONDS": 60.0, "BATCH_FAST_SECONDS": 5.0}
    monkeypatch.setattr(batchrun, "CARRIED", [1, 0.001])
    twice, other = enqueue("examples.echo", {"n": 1}).pk, enqueue("examples.echo", {"n": 2}).pk

    outcomes = batchrun.run([twice, twice, other], WORKER, lambda job_id: runner.execute(job_id, WORKER, own_time_limit=True))

    # then it ran once: the second mention finds it done
    assert [str(o) for o in outcomes] == ["succeeded", "skipped", "succeeded"]
    assert [(row(i).status, row(i).attempt) for i in (twice, other)] == [(Status.SUCCEEDED, 1)] * 2
