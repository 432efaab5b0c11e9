"""Atomic job types (issue 27, part 2): the handler's database writes and its outcome commit in one
transaction fenced by the attempt, or not at all. The runner in this process on real PostgreSQL;
what a run meets while it runs (a reaper, another claimant, a heartbeat) comes from another
thread, on its own connection, while the handler's transaction is open.

The SIGKILL of a worker process mid-transaction is tests/acceptance/test_crashing_jobs_live.py's.
"""
from __future__ import annotations

import threading
from typing import Any, Callable, Iterator

import pytest
from django.db import connection, connections, transaction

from jobs import enqueue
from jobs.engine import recovery, registry, runner, store
from jobs.engine.registry import Backoff, JobType
from jobs.models import Job, Status
from examples.models import Effect
from tests.integration.conftest import RUNNER_IN_PROCESS

pytestmark = RUNNER_IN_PROCESS

TYPE = "t.atomic"
WORKER = "atomic@test/1"

#: Called by the handler after its write, inside its transaction (the test's "meanwhile").
meanwhile: list[Callable[[Any], None]] = []
#: What each run saw of the job's earlier writes, by attempt.
seen: dict[int, int] = {}
#: (job id, status) of every on_finish call, in order.
finished: list[tuple[int, str]] = []


def write_once(ctx: Any, data: dict[str, Any]) -> dict[str, Any]:
    seen[ctx.attempt] = Effect.objects.filter(job_id=ctx.job_id).count()
    Effect.objects.create(job_id=ctx.job_id, attempt=ctx.attempt, worker_pid=0)
    if data.get("follow_up"):
        enqueue("examples.echo", {"from": ctx.job_id})
    for step in meanwhile:
        step(ctx)
    if data.get("raise_on") == ctx.attempt:
        raise ValueError(f"attempt {ctx.attempt} fails after its write")
    if data.get("unstorable"):
        return {"value": float("nan")}
    return {"attempt": ctx.attempt}


@pytest.fixture(autouse=True)
def atomic_type() -> Iterator[None]:
    meanwhile.clear()
    seen.clear()
    finished.clear()
    registry.add(JobType(TYPE, write_once, retries=2, backoff=Backoff(0.0, 0.0), atomic=True,
                         on_finish=lambda job_id, status: finished.append((job_id, status))))
    yield
    registry.remove(TYPE)


def in_another_thread(work: Callable[[], Any]) -> Any:
    """Run `work` on another thread (so on its own database connections) and return its result."""
    result: list[Any] = []
    errors: list[BaseException] = []

    def body() -> None:
        try:
            result.append(work())
        except BaseException as exc:  # re-raised in the test's thread
            errors.append(exc)
        finally:
            connections.close_all()

    thread = threading.Thread(target=body)
    thread.start()
    thread.join(20)
    assert not thread.is_alive(), "the other thread is still waiting (blocked by the run's transaction?)"
    if errors:
        raise errors[0]
    return result[0] if result else None


def effects(job_id: int) -> list[int]:
    return sorted(Effect.objects.filter(job_id=job_id).values_list("attempt", flat=True))


def reap_now(job_id: int) -> None:
    """The lease lapses and the reaper settles the row, in one transaction (no heartbeat between)."""
    with transaction.atomic():
        Job.objects.filter(pk=job_id).update(lease_expires_at="2000-01-01T00:00:00Z")
        recovery.reap()


def test_an_atomic_success_commits_the_handlers_writes_and_its_outcome_together():
    # given an atomic job whose handler writes a row and enqueues a follow-up job
    job = enqueue(TYPE, {"follow_up": True})
    # (another connection, while the handler's transaction is open, sees neither yet)
    meanwhile.append(lambda ctx: seen.update(outside=in_another_thread(lambda: Effect.objects.filter(job_id=ctx.job_id).count())))

    # when it runs
    outcome = runner.execute(job.pk, WORKER)

    # then the write, the follow-up and the outcome are there, all of them committed at once
    assert outcome == "succeeded"
    assert seen["outside"] == 0
    assert effects(job.pk) == [1]
    assert Job.objects.get(pk=job.pk).output == {"attempt": 1}
    assert Job.objects.filter(type="examples.echo", input={"from": job.pk}).count() == 1
    assert finished == [(job.pk, "succeeded")]


def test_an_atomic_handler_that_writes_then_raises_leaves_no_write_and_its_retry_sees_a_clean_slate():
    # given an atomic job whose first attempt writes, then raises
    job = enqueue(TYPE, {"raise_on": 1, "follow_up": True})

    # when the attempt runs
    first = runner.execute(job.pk, WORKER)

    # then its write and its follow-up were rolled back, and the failure recorded for a retry
    assert first == "failed"
    assert effects(job.pk) == []
    assert not Job.objects.filter(type="examples.echo").exists()
    assert "attempt 1 fails after its write" in Job.objects.get(pk=job.pk).error

    # when the retry runs
    second = runner.execute(job.pk, WORKER)

    # then it saw nothing of attempt 1 and wrote exactly once
    assert second == "succeeded"
    assert seen == {1: 0, 2: 0}
    assert effects(job.pk) == [2]


@pytest.mark.parametrize("taken_by", ["the reaper", "another claimant", "a hand-back"])
def test_an_atomic_run_that_loses_its_row_mid_run_commits_none_of_its_writes(taken_by: str):
    # given an atomic job whose lease lapses while its handler runs, after the handler's write:
    # the reaper settles the row (and, in the second case, another worker claims attempt 2), or
    # its worker's supervisor hands it back (a drain: the attempt given back)
    job = enqueue(TYPE)

    def taken(ctx: Any) -> None:
        if taken_by == "a hand-back":
            assert in_another_thread(lambda: recovery.hand_back(WORKER.split("/")[0], drained=True)) == 1
            return
        in_another_thread(lambda: reap_now(ctx.job_id))
        if taken_by == "another claimant":
            assert in_another_thread(lambda: store.claim(ctx.job_id, "other@test/2", 30)).attempt == 2

    meanwhile.append(taken)

    # when the first run returns
    outcome = runner.execute(job.pk, WORKER)

    # then its outcome was refused by the fence and its write rolled back with it
    assert outcome == "lost"
    assert effects(job.pk) == []
    row = Job.objects.get(pk=job.pk)
    assert (row.status, row.attempt) == ((Status.RUNNING, 2) if taken_by == "another claimant" else (Status.PENDING, 1))

    # when the job runs again (after the other claimant's lease lapses too, in the second case)
    meanwhile.clear()
    if taken_by == "another claimant":
        reap_now(job.pk)
    again = runner.execute(job.pk, WORKER)

    # then that run saw a clean slate and wrote exactly once
    assert again == "succeeded"
    assert effects(job.pk) == [row.attempt + 1]
    assert seen[max(seen)] == 0


def test_the_heartbeat_and_progress_go_on_while_an_atomic_handler_holds_its_transaction_open():
    # given an atomic handler that, after its write, reports progress and lets the heartbeat beat
    job = enqueue(TYPE)

    def beat_and_report(ctx: Any) -> None:
        ctx.progress(40, "half way")
        before = in_another_thread(lambda: Job.objects.values_list("lease_expires_at", flat=True).get(pk=ctx.job_id))
        in_another_thread(runner.heartbeat.beat)  # the heartbeat thread's work, on another connection
        after = in_another_thread(lambda: Job.objects.values_list("lease_expires_at", "progress", "progress_message").get(pk=ctx.job_id))
        seen.update(extended=after[0] > before, progress=after[1:], lost=ctx.lost)

    meanwhile.append(beat_and_report)

    # when it runs
    outcome = runner.execute(job.pk, WORKER)

    # then neither waited for the handler's transaction: the lease was extended, the progress seen
    # from outside at once, the run not told it lost its row; and the outcome committed
    assert outcome == "succeeded"
    assert seen["extended"] is True and seen["lost"] is False
    assert seen["progress"] == (40, "half way")
    assert effects(job.pk) == [1]


def test_an_atomic_run_whose_output_cannot_be_stored_rolls_its_writes_back_and_fails():
    job = enqueue(TYPE, {"unstorable": True})

    outcome = runner.execute(job.pk, WORKER)

    assert outcome == "failed"
    assert "cannot be stored as JSON" in outcome.error
    assert effects(job.pk) == []


def test_an_atomic_transaction_is_bounded_in_postgresql_by_the_types_timeout_and_only_it():
    # given an atomic type with a 5 s timeout, whose handler reads its transaction's bounds
    job = enqueue(TYPE)

    def bounds(ctx: Any) -> None:
        with connection.cursor() as cursor:
            cursor.execute("SELECT current_setting('statement_timeout'), current_setting('idle_in_transaction_session_timeout')")
            seen["bounds"] = cursor.fetchone()

    meanwhile.append(bounds)
    registry.remove(TYPE)
    registry.add(JobType(TYPE, write_once, timeout=5, atomic=True))

    runner.execute(job.pk, WORKER)

    # then PostgreSQL ends it past the timeout plus the hard limit's grace; the session keeps none
    assert seen["bounds"] == ("15s", "15s")
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('statement_timeout'), current_setting('idle_in_transaction_session_timeout')")
        assert cursor.fetchone() == ("0", "0")


def test_an_atomic_chain_step_commits_its_writes_its_success_and_the_next_step_together():
    # given a chain whose first step is atomic; the handler looks, from another connection, for the
    # next step while its transaction is open
    from jobs import Step, start_chain

    chain = start_chain([Step(TYPE, {}), Step("examples.echo", {"after": "atomic"})])
    first = Job.objects.get(chain_id=chain.pk, chain_index=0)
    meanwhile.append(lambda ctx: seen.update(next_outside=in_another_thread(
        lambda: Job.objects.filter(chain_id=ctx.chain_id, chain_index=1).exists())))

    # when the step runs
    outcome = runner.execute(first.pk, WORKER)

    # then its write and the chain's next step appeared together, at the commit
    assert outcome == "succeeded"
    assert seen["next_outside"] is False
    assert effects(first.pk) == [1]
    assert Job.objects.filter(chain_id=chain.pk, chain_index=1, type="examples.echo").count() == 1


def test_the_catalog_says_which_types_are_atomic():
    from tests.support import api_client

    types = {t["name"]: t for t in api_client().get("/api/types").json()}

    assert types[TYPE]["atomic"] is True
    assert types["examples.echo"]["atomic"] is False


def test_an_atomic_run_whose_cancel_is_asked_while_it_runs_ends_cancelled_with_its_writes_rolled_back():
    # given an atomic job cancelled by an operator while its handler runs, after its write
    from jobs.engine import control

    job = enqueue(TYPE)
    meanwhile.append(lambda ctx: in_another_thread(lambda: control.cancel(Job.objects.get(pk=ctx.job_id))))

    # when the handler returns
    outcome = runner.execute(job.pk, WORKER)

    # then the job ended cancelled, and its write went with the cancel; its hook ran once
    assert outcome == "cancelled"
    assert Job.objects.get(pk=job.pk).status == Status.CANCELLED
    assert effects(job.pk) == []
    assert finished == [(job.pk, "cancelled")]
