"""A chain step's success and its next step in one statement (jobs.engine.continuing,
store.SUCCEED_CONTINUING_SQL): the success, the chain's lock and the next step's insert with its
early lock, or nothing at all when the attempt's fence fails or the transaction rolls back."""
from __future__ import annotations

import threading
import time
from typing import Any, Callable

import pytest
from django.db import connections, transaction
from psycopg.pq import TransactionStatus

from jobs import Group, Step, start_chain
from jobs.engine import continuing, decisions, handoff, publish, registry, reserved, runner, store
from jobs.models import Chain, ChainStatus, Job, Status
from tests.integration.conftest import RUNNER_IN_PROCESS
from tests.support import published_job_ids

pytestmark = RUNNER_IN_PROCESS
WORKER = "continuing@test/1/x"
IDLE = TransactionStatus.IDLE


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


def succeed(first: Job, attempt: int = 1, local: list[str] | None = None) -> Any:
    return store.succeed_continuing(continuing._statement() or "", first.pk, attempt, '{"done": 1}', first.chain_id,
                                    first.chain_index, local or [])


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


@pytest.mark.parametrize("case", ["last step", "a group next", "a queue taken here", "cancel asked"])
def test_a_step_the_general_path_must_continue_is_recorded_alone_with_the_plan(case):
    # given a chain's step whose continuation is the general path's
    after = {"last step": [], "a group next": [Group([Step("examples.ping", {}), Step("examples.ping", {})])],
             "a queue taken here": [Step("examples.ping", {})], "cancel asked": [Step("examples.ping", {})]}[case]
    chain, first = claimed_first([Step("examples.echo", {}), *after])
    if case == "cancel asked":
        Job.objects.filter(pk=first.pk).update(cancel_requested=True)

    # when the statement records its success
    with transaction.atomic():
        done, message = succeed(first, local=["notifications"] if case == "a queue taken here" else [])
        inserted = Job.objects.filter(chain=chain, chain_index=1).exists()
        transaction.set_rollback(True)

    # then it inserted nothing and gave back the row with the chain's plan, for the general path
    assert (message, inserted) == (None, False)
    assert done.status == (Status.CANCELLED if case == "cancel asked" else Status.SUCCEEDED)
    assert (done.chain_steps, done.chain_status) == (Chain.objects.get(pk=chain.pk).steps, ChainStatus.RUNNING)


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

    # when its first step runs
    assert runner.execute(first.pk, worker=WORKER) == "succeeded"

    # then the second ran here with no message (the general path's claim in the outcome)
    assert [(j.status, j.worker) for j in Job.objects.filter(chain=chain).order_by("chain_index")] == [(Status.SUCCEEDED, WORKER)] * 2
    assert published_job_ids("notifications") == []


# --- The next step's id reserved by the claim, its message published before the statement's answer
# (jobs.engine.reserved) -----------------------------------------------------------------------------


def reserved_claim(steps: list[Any]) -> tuple[Chain, Job, tuple[int, str]]:
    """A chain started and its first step claimed, with the id its claim reserved for step 2."""
    chain = start_chain(steps)
    first = Job.objects.get(chain=chain, chain_index=0)
    claimed = store.claim(first.pk, WORKER, 60)
    assert claimed is not None and claimed.reserved is not None
    id_text, _, type_name = claimed.reserved.partition(" ")
    return chain, first, (int(id_text), type_name)


def claim_reserved(job_id: int, after: tuple[int, int]) -> Any:
    """What the next worker's claim of the early message gets (jobs.engine.reserved.claim), from another connection."""
    return elsewhere(lambda _: reserved.claim(job_id, "other@test/2/y", 60, [], after))


def test_a_chain_steps_claim_reserves_the_next_steps_id_only_where_one_job_follows():
    # given chains whose first step is followed by one job, a group, or nothing
    _, _, (reserved_id, type_name) = reserved_claim([Step("examples.echo", {}), Step("examples.ping", {})])
    grouped = start_chain([Step("examples.echo", {}), Group([Step("examples.ping", {}), Step("examples.ping", {})])])
    alone = start_chain([Step("examples.echo", {})])

    # then the first claim reserved a fresh id for examples.ping, the others nothing
    assert type_name == "examples.ping" and reserved_id > Job.objects.order_by("-pk").first().pk - 10
    for chain in (grouped, alone):
        claimed = store.claim(Job.objects.get(chain=chain, chain_index=0).pk, WORKER, 60)
        assert claimed is not None and claimed.reserved is None


@pytest.mark.parametrize("prepared", [True, False], ids=["prepared", "behind a pooler"])
def test_a_success_with_a_reserved_id_publishes_before_its_answer_and_inserts_the_step_under_that_id(prepared, settings):
    # given a chain's first step claimed with the next step's id reserved
    settings.DATABASE_PREPARED = prepared
    chain, first, (reserved_id, type_name) = reserved_claim([Step("examples.echo", {}), Step("examples.ping", {})])
    answered: list[bool] = []

    # when its success is recorded with that id, the message's publish called before the answer
    with transaction.atomic():
        done, message = store.succeed_continuing(
            continuing._statement() or "", first.pk, 1, "{}", chain.pk, 0, [], reserved=(reserved_id, type_name),
            meanwhile=lambda: answered.append(connections["default"].connection.pgconn.transaction_status == IDLE))
        # then the row is the reserved id's (published while the statement ran, or before it behind a
        # pooler); prepared, the COMMIT went behind the statement (the
        # row committed, its lock gone); behind a pooler, not: the row unseen, its early lock held
        assert (message.job_id, done.status, answered) == (reserved_id, Status.SUCCEEDED, [not prepared])
        assert (row_seen(reserved_id), early_lock_free(reserved_id)) == ((True, True) if prepared else (False, False))
    assert Job.objects.get(pk=reserved_id).chain_index == 1 and early_lock_free(reserved_id)

    # and the message's claim, once the outcome committed, takes it at once
    claimed = claim_reserved(reserved_id, (first.pk, 1))
    assert claimed is not None and claimed.id == reserved_id


def test_a_fenced_out_success_with_a_reserved_id_leaves_its_message_nothing_to_claim():
    # given a chain's first step whose attempt 1 runs, its next step's id reserved
    chain, first, reservation = reserved_claim([Step("examples.echo", {}), Step("examples.ping", {})])

    # when an outcome of another attempt (its lease taken over) is recorded with the reservation
    with transaction.atomic():
        assert store.succeed_continuing(continuing._statement() or "", first.pk, 2, "{}", chain.pk, 0, [],
                                        reserved=reservation) is None

    # then nothing was inserted, and that attempt's message claims nothing, at once (no retries:
    # attempt 2 does not run)
    assert not Job.objects.filter(pk=reservation[0]).exists()
    assert claim_reserved(reservation[0], (first.pk, 2)) is None
    assert runner.execute(reservation[0], WORKER, published_early=True, after=(first.pk, 2)) == "skipped"


def test_a_message_whose_outcome_rolled_back_claims_nothing_after_its_patience(monkeypatch):
    # given a chain's first step whose success with the reserved id rolled back (a crash before
    # the commit: the step still runs its attempt)
    monkeypatch.setattr(reserved, "PATIENCE_MS", 50)
    chain, first, reservation = reserved_claim([Step("examples.echo", {}), Step("examples.ping", {})])
    with transaction.atomic():
        store.succeed_continuing(continuing._statement() or "", first.pk, 1, "{}", chain.pk, 0, [], reserved=reservation)
        transaction.set_rollback(True)

    # when the message published before the answer is claimed: nothing, within its patience
    started = time.monotonic()
    assert claim_reserved(reservation[0], (first.pk, 1)) is None
    assert 0.04 < time.monotonic() - started < 2

    # then no row exists and the step still runs, its outcome to be written again
    assert not Job.objects.filter(pk=reservation[0]).exists()
    assert Job.objects.get(pk=first.pk).status == Status.RUNNING


def test_a_claim_that_arrives_before_the_outcomes_statement_waits_for_its_commit_and_claims_the_step():
    # given a chain's first step claimed, its next step's message already published (its id reserved)
    chain, first, reservation = reserved_claim([Step("examples.echo", {}), Step("examples.ping", {})])
    got: list[Any] = []
    claimer = threading.Thread(target=lambda: got.append(claim_reserved(reservation[0], (first.pk, 1))))

    # when its claim starts before the outcome's statement has even begun, which commits 30 ms later
    claimer.start()
    time.sleep(0.03)
    with transaction.atomic():
        store.succeed_continuing(continuing._statement() or "", first.pk, 1, "{}", chain.pk, 0, [], reserved=reservation)
    claimer.join(5)

    # then the claim, tried again while the step still ran, took the step once it committed
    assert got and got[0] is not None and got[0].id == reservation[0]
    assert Job.objects.get(pk=reservation[0]).status == Status.RUNNING


def test_a_reserved_step_the_statement_declines_holds_its_lock_and_its_message_is_dropped_after_the_commit():
    # given a chain's first step claimed (next id reserved), whose cancel is asked while it runs
    chain, first, reservation = reserved_claim([Step("examples.echo", {}), Step("examples.ping", {})])
    Job.objects.filter(pk=first.pk).update(cancel_requested=True)

    # when its success is recorded: cancelled, nothing inserted, the reserved id's lock held meanwhile
    with transaction.atomic():
        done, message = store.succeed_continuing(continuing._statement() or "", first.pk, 1, "{}", chain.pk, 0, [],
                                                 reserved=reservation)
        assert (done.status, message, early_lock_free(reservation[0])) == (Status.CANCELLED, None, False)

    # then its message claims nothing (the step ended: no retry)
    started = time.monotonic()
    assert claim_reserved(reservation[0], (first.pk, 1)) is None
    assert time.monotonic() - started < reserved.PATIENCE_MS / 1000


def test_a_run_publishes_its_next_step_under_the_reserved_id_with_the_outcome_it_waits_for(monkeypatch):
    # given a chain across two queues, run by a worker consuming neither
    chain = start_chain([Step("examples.echo", {}), Step("examples.ping", {})])
    first = Job.objects.get(chain=chain, chain_index=0)
    headers: list[Any] = []
    send = publish.publish
    monkeypatch.setattr(publish, "publish", lambda messages, headers=None: headers_seen(headers) or send(messages, headers))
    headers_seen = headers.append

    # when its first step runs
    assert runner.execute(first.pk, worker=WORKER) == "succeeded"

    # then step 2 went out with the early headers naming step 1's attempt, and runs from them
    second = Job.objects.get(chain=chain, chain_index=1)
    assert published_job_ids("notifications") == [second.pk]
    assert headers == [{"conveyor_early": 1, reserved.AFTER_HEADER: [first.pk, 1]}]
    assert runner.execute(second.pk, worker=WORKER, published_early=True, after=(first.pk, 1)) == "succeeded"
    assert Chain.objects.get(pk=chain.pk).status == ChainStatus.SUCCEEDED


def test_a_strict_success_that_inserts_nothing_raises_declined_and_writes_nothing():
    # given a chain's first step claimed (next id reserved), whose cancel is asked while it runs
    chain, first, reservation = reserved_claim([Step("examples.echo", {}), Step("examples.ping", {})])
    Job.objects.filter(pk=first.pk).update(cancel_requested=True)

    # when its success is recorded with its COMMIT pipelined behind it (a publish meanwhile)
    with pytest.raises(store.Declined), transaction.atomic():
        store.succeed_continuing(continuing._statement() or "", first.pk, 1, "{}", chain.pk, 0, [],
                                 reserved=reservation, meanwhile=lambda: None)

    # then nothing was written: the step still runs, for the general path to record
    assert (Job.objects.get(pk=first.pk).status, Job.objects.filter(pk=reservation[0]).exists()) == (Status.RUNNING, False)


def test_a_run_cancelled_while_it_ran_ends_cancelled_by_the_general_path_after_its_strict_success_declined():
    # given a chain across two queues whose first step runs 0.3 s in this process's worker
    chain = start_chain([Step("examples.count", {"sleep": 0.3}), Step("examples.ping", {})])
    first = Job.objects.get(chain=chain, chain_index=0)
    outcome: list[str] = []
    run = threading.Thread(target=lambda: (outcome.append(runner.execute(first.pk, worker=WORKER)), connections.close_all()))
    run.start()

    # when its cancel is asked while it runs
    deadline = time.monotonic() + 5
    while not Job.objects.filter(pk=first.pk, status=Status.RUNNING).exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    Job.objects.filter(pk=first.pk).update(cancel_requested=True)
    run.join(10)

    # then it ended cancelled, its chain with it, and no next step exists (the message published
    # for the reserved id claims nothing)
    assert outcome == ["cancelled"]
    assert list(Job.objects.filter(chain=chain).values_list("chain_index", "status")) == [(0, Status.CANCELLED)]
    assert Chain.objects.get(pk=chain.pk).status == ChainStatus.CANCELLED
    (reserved_id,) = published_job_ids("notifications")
    assert runner.execute(reserved_id, WORKER, published_early=True, after=(first.pk, 1)) == "skipped"
