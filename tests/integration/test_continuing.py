"""A chain step's success and its next step in one statement (jobs.engine.continuing,
store.SUCCEED_CONTINUING_SQL): the success, the chain's lock and the next step's insert with its
early lock, or nothing at all when the attempt's fence fails or the transaction rolls back."""
from __future__ import annotations

import threading
from typing import Any, Callable

import pytest
from django.db import connections, transaction

from jobs import Group, Step, start_chain
from jobs.engine import continuing, decisions, handoff, pauses, registry, runner, store
from jobs.models import Chain, ChainStatus, Job, Status
from tests.integration.conftest import RUNNER_IN_PROCESS
from tests.support import published_job_ids

pytestmark = RUNNER_IN_PROCESS
WORKER = "continuing@test/1/x"


def elsewhere(read: Callable[[Any], Any]) -> Any:
    """`read(cursor)` on another connection (another thread's): what a second worker sees."""
    out: list[Any] = []

    def run() -> None:
        try:
            with connections["default"].cursor() as cursor:
                out.append(read(cursor))
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(10)
    return out[0]


def early_lock_free(job_id: int) -> bool:
    def read(cursor: Any) -> bool:
        cursor.execute("SELECT pg_try_advisory_xact_lock_shared(%s, %s)", list(decisions.early_lock_key(job_id)))
        return cursor.fetchone()[0]
    return elsewhere(read)


def row_seen(job_id: int) -> bool:
    def read(cursor: Any) -> bool:
        cursor.execute("SELECT count(*) FROM jobs_job WHERE id = %s", [job_id])
        return cursor.fetchone()[0] == 1
    return elsewhere(read)


def claimed_first(steps: list[Any]) -> tuple[Chain, Job]:
    chain = start_chain(steps)
    first = Job.objects.get(chain=chain, chain_index=0)
    assert store.claim(first.pk, WORKER, 60) is not None
    return chain, first


def succeed(first: Job, attempt: int = 1) -> Any:
    """The statement with no local queue: (the row, the next step's message) or None."""
    continued = store.succeed_continuing(continuing._statement() or "", first.pk, attempt, '{"done": 1}', first.chain_id,
                                         first.chain_index, [])
    if continued is None:
        return None
    done, message, claimed = continued
    assert claimed is None  # nothing is claimed for a worker that takes no queue
    return done, message


@pytest.mark.parametrize("prepared", [True, False], ids=["prepared", "behind a pooler"])
def test_a_success_inserts_the_next_step_as_its_type_plans_it_holding_its_early_lock_until_commit(prepared, settings):
    # given a chain's first step claimed (its statements prepared, or not: DATABASE_PREPARED)
    settings.DATABASE_PREPARED = prepared
    chain, first = claimed_first([Step("examples.echo", {"i": 1}), Step("examples.ping", {})])

    # when its success and next step are recorded in one statement
    with transaction.atomic():
        done, message = succeed(first)
        # then, before the commit, another connection sees no row and finds its early lock held:
        # the early message's claim waits for this transaction
        assert (done.status, done.chain_steps) == (Status.SUCCEEDED, None)
        assert (row_seen(message.job_id), early_lock_free(message.job_id)) == (False, False)

    # and after it the row is there, as the general path would have made it, and the lock free
    ping = registry.get("examples.ping")
    second = Job.objects.get(pk=message.job_id)
    assert message == (second.pk, ping.queue, ping.priority, "examples.ping", chain.pk, 1)
    assert (second.status, second.chain_index, second.parent_id, second.input, second.max_attempts) == (
        Status.PENDING, 1, first.pk, {}, ping.retries + 1)
    assert second.published_at is not None and second.idempotency_key is None and second.member is None
    assert early_lock_free(second.pk)
    assert (Job.objects.get(pk=first.pk).status, Job.objects.get(pk=first.pk).output) == (Status.SUCCEEDED, {"done": 1})


def test_a_fenced_out_success_inserts_nothing_and_commits_nothing():
    # given a chain's first step whose attempt 1 runs
    chain, first = claimed_first([Step("examples.echo", {}), Step("examples.ping", {})])

    # when an outcome of another attempt (a run whose lease was taken over) is recorded
    with transaction.atomic():
        assert succeed(first, attempt=2) is None

    # then the row still runs its attempt, and no next step exists
    row = Job.objects.get(pk=first.pk)
    assert (row.status, row.attempt, row.output) == (Status.RUNNING, 1, None)
    assert not Job.objects.filter(chain=chain, chain_index=1).exists()


def test_a_rolled_back_outcome_leaves_no_row_and_its_early_message_claims_nothing():
    # given a chain's first step claimed
    chain, first = claimed_first([Step("examples.echo", {}), Step("examples.ping", {})])

    # when its success and next step are written, then the transaction rolls back (its COMMIT failed)
    with transaction.atomic():
        _, message = succeed(first)
        transaction.set_rollback(True)

    # then no next step exists, the step still runs (its outcome to be written again), and the
    # message already sent for the next step claims nothing
    assert not Job.objects.filter(pk=message.job_id).exists()
    assert Job.objects.get(pk=first.pk).status == Status.RUNNING
    assert runner.execute(message.job_id, worker="other@test/2/y", published_early=True) == "skipped"


@pytest.mark.parametrize("case", [
    "last step", "a group next", "a queue taken here, paused", "a type taken here, paused", "a queue taken here, limited type",
    "cancel asked",
])
def test_a_step_the_general_path_must_continue_is_recorded_alone_with_the_plan(case):
    # given a chain's step whose continuation is the general path's
    after = {"last step": [], "a group next": [Group([Step("examples.ping", {}), Step("examples.ping", {})])],
             "a queue taken here, limited type": [Step("examples.two-at-once", {})]}.get(case, [Step("examples.ping", {})])
    chain, first = claimed_first([Step("examples.echo", {}), *after])
    if case == "cancel asked":
        Job.objects.filter(pk=first.pk).update(cancel_requested=True)
    local = {"a queue taken here, limited type": ["default"]}.get(case, ["notifications"] if "taken here" in case else [])

    # when the statement records its success
    with transaction.atomic():
        if case == "a queue taken here, paused":
            pauses.pause("queue", "notifications")
        if case == "a type taken here, paused":
            pauses.pause("type", "examples.ping")
        done, message, claimed = store.succeed_continuing(
            continuing._statement() or "", first.pk, 1, '{"done": 1}', first.chain_id, 0, local, worker=WORKER, lease_seconds=60,
        )
        inserted = Job.objects.filter(chain=chain, chain_index=1).exists()
        transaction.set_rollback(True)
    assert claimed is None

    # then it inserted nothing and gave back the row with the chain's plan, for the general path
    assert (message, inserted) == (None, False)
    assert done.status == (Status.CANCELLED if case == "cancel asked" else Status.SUCCEEDED)
    assert (done.chain_steps, done.chain_status) == (Chain.objects.get(pk=chain.pk).steps, ChainStatus.RUNNING)


def test_a_step_on_a_queue_taken_here_is_inserted_claimed_for_this_worker_with_no_message_and_no_early_lock():
    # given a chain's first step claimed by a worker that also takes the second step's queue
    chain, first = claimed_first([Step("examples.echo", {"i": 1}), Step("examples.ping", {"p": 2})])

    # when its success is recorded in one statement, the worker's queues named
    with transaction.atomic():
        done, message, claimed = store.succeed_continuing(
            continuing._statement() or "", first.pk, 1, '{"done": 1}', first.chain_id, 0, ["default", "notifications"],
            worker=WORKER, lease_seconds=60,
        )
        # then no message and no early lock: nothing can claim it before the commit but this worker
        assert (done.status, message) == (Status.SUCCEEDED, None)
        assert early_lock_free(claimed.id)

    # and the next step is running, its first attempt this worker's, as store.claim leaves a row,
    # with what the runner needs to run it (the claim's own columns)
    second = Job.objects.get(chain=chain, chain_index=1)
    ping = registry.get("examples.ping")
    assert (second.pk, second.type, second.queue, second.status, second.attempt, second.worker) == (
        claimed.id, "examples.ping", ping.queue, Status.RUNNING, 1, WORKER)
    assert (second.max_attempts, second.priority, second.input, second.parent_id) == (ping.retries + 1, ping.priority, {"p": 2}, first.pk)
    assert second.started_at == Job.objects.get(pk=first.pk).finished_at
    assert 59 <= (second.lease_expires_at - second.started_at).total_seconds() <= 60
    assert (claimed.type, claimed.input, claimed.attempt, claimed.max_attempts, claimed.chain_id, claimed.chain_index) == (
        "examples.ping", {"p": 2}, 1, ping.retries + 1, chain.pk, 1)
    assert (claimed.queue, claimed.worker, claimed.started_at, claimed.errors, claimed.waited) == (
        ping.queue, WORKER, second.started_at, [], 0.0)
    assert published_job_ids("notifications") == []


def test_a_run_whose_step_goes_on_by_message_inserts_it_in_the_success_statement(monkeypatch):
    # given a chain across two queues and a worker consuming neither
    chain = start_chain([Step("examples.echo", {}), Step("examples.ping", {}), Step("examples.echo", {})])
    first = Job.objects.get(chain=chain, chain_index=0)
    general = []
    monkeypatch.setattr(store, "insert", lambda *a, **k: general.append(a))  # the general path's insert

    # when its steps run, each from its message
    assert runner.execute(first.pk, worker=WORKER) == "succeeded"
    second = Job.objects.get(chain=chain, chain_index=1)
    assert published_job_ids("notifications") == [second.pk]
    assert runner.execute(second.pk, worker=WORKER, published_early=True) == "succeeded"
    third = Job.objects.get(chain=chain, chain_index=2)
    assert runner.execute(third.pk, worker=WORKER, published_early=True) == "succeeded"

    # then each next step came from the success's own statement, and the chain ended
    assert general == []
    assert [j.status for j in Job.objects.filter(chain=chain).order_by("chain_index")] == [Status.SUCCEEDED] * 3
    assert Chain.objects.get(pk=chain.pk).status == ChainStatus.SUCCEEDED


def test_a_step_on_a_queue_the_worker_takes_is_still_handed_off_here(monkeypatch):
    # given a worker consuming both queues of a chain
    monkeypatch.setattr(handoff, "LOCAL_QUEUES", frozenset({"default", "notifications"}))
    chain = start_chain([Step("examples.echo", {}), Step("examples.ping", {})])
    first = Job.objects.get(chain=chain, chain_index=0)
    general = []  # the general path's insert, and its claim in the outcome's transaction (on "default")
    real_insert, real_claim = store.insert, store.claim
    monkeypatch.setattr(store, "insert", lambda *a, **k: general.append(("insert", a)) or real_insert(*a, **k))

    def claim(*a: Any, **k: Any) -> Any:
        if k.get("alias") == "default":
            general.append(("claim", a))
        return real_claim(*a, **k)
    monkeypatch.setattr(store, "claim", claim)

    # when its first step runs
    assert runner.execute(first.pk, worker=WORKER) == "succeeded"

    # then the second ran here with no message, claimed by the success's own statement: the
    # general path's insert and claim never ran
    assert [(j.status, j.worker) for j in Job.objects.filter(chain=chain).order_by("chain_index")] == [(Status.SUCCEEDED, WORKER)] * 2
    assert published_job_ids("notifications") == []
    assert general == []
