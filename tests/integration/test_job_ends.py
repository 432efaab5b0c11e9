"""The ends table of docs/architecture.md ("How a job ends"), one test per end, through the real
callers (runner, recovery, control) on real PostgreSQL: the row's status, its chain's, and its
type's on_finish hook called exactly once for a final end, never for an attempt that runs again.
"""
from __future__ import annotations

from typing import Any

import pytest

from jobs import Step, enqueue, start_chain
from jobs.engine import control, recovery, registry, runner, store
from jobs.models import Chain, ChainStatus, Job, Status
from jobs.engine.registry import Backoff, JobType, Permanent
from tests.integration.conftest import RUNNER_IN_PROCESS

pytestmark = RUNNER_IN_PROCESS

WORKER = "ends@test/1"
TYPE = "t.ends"
#: (job id, status) of every on_finish call, in order.
finished: list[tuple[int, str]] = []


def handler(ctx: Any, data: dict[str, Any]) -> dict[str, Any]:
    if data.get("permanent"):
        raise Permanent("no retry can change this")
    if data.get("fail"):
        raise ValueError("failed")
    return {"ok": True}


@pytest.fixture(autouse=True)
def ends_type():
    finished.clear()
    registry.add(JobType(TYPE, handler, retries=1, backoff=Backoff(0.0, 0.0), on_finish=lambda i, s: finished.append((i, s))))
    yield
    registry.remove(TYPE)


def status(job_id: int) -> str:
    return Job.objects.get(pk=job_id).status


def chain_status(chain_id: int) -> str:
    return Chain.objects.get(pk=chain_id).status


def claim(job_id: int, worker: str = WORKER) -> store.Claimed:
    claimed = store.claim(job_id, worker, 30)
    assert claimed is not None
    return claimed


def expire(job_id: int) -> None:
    Job.objects.filter(pk=job_id).update(lease_expires_at="2000-01-01T00:00:00Z")


def test_a_success_runs_the_hook_once_and_ends_its_last_step_chain():
    chain = start_chain([Step(TYPE, {})])
    job = Job.objects.get(chain=chain)
    assert runner.execute(job.pk, WORKER) == "succeeded"
    assert finished == [(job.pk, "succeeded")]
    assert chain_status(chain.pk) == ChainStatus.SUCCEEDED


def test_a_failed_attempt_with_a_retry_left_runs_no_hook_and_leaves_its_chain_running():
    chain = start_chain([Step(TYPE, {"fail": True})])
    job = Job.objects.get(chain=chain)
    assert runner.execute(job.pk, WORKER) == "failed"
    assert finished == [] and chain_status(chain.pk) == ChainStatus.RUNNING


def test_the_last_failed_attempt_is_dead_runs_the_hook_once_and_fails_its_chain():
    chain = start_chain([Step(TYPE, {"fail": True})])
    job = Job.objects.get(chain=chain)
    Job.objects.filter(pk=job.pk).update(max_attempts=1)
    assert runner.execute(job.pk, WORKER) == "dead"
    assert finished == [(job.pk, "dead")] and chain_status(chain.pk) == ChainStatus.FAILED


def test_a_permanent_failure_is_dead_at_once_with_one_hook_call():
    job = enqueue(TYPE, {"permanent": True})
    assert runner.execute(job.pk, WORKER) == "dead"
    assert finished == [(job.pk, "dead")]


def test_a_reaped_row_back_to_pending_runs_no_hook_and_a_reaped_last_attempt_runs_it_once():
    job = enqueue(TYPE, {})
    claim(job.pk)
    expire(job.pk)
    assert recovery.reap() == 1 and status(job.pk) == Status.PENDING and finished == []
    Job.objects.filter(pk=job.pk).update(max_attempts=2)
    claim(job.pk)
    expire(job.pk)
    assert recovery.reap() == 1 and status(job.pk) == Status.DEAD
    assert finished == [(job.pk, "dead")]


def test_a_drained_hand_back_runs_no_hook_and_a_crash_on_the_last_attempt_runs_it_once():
    chain = start_chain([Step(TYPE, {})])
    job = Job.objects.get(chain=chain)
    claim(job.pk, "ends@test/7/start1")
    assert recovery.hand_back("ends@test", "start1", drained=True) == 1
    assert status(job.pk) == Status.PENDING and finished == []
    Job.objects.filter(pk=job.pk).update(max_attempts=2)
    claim(job.pk, "ends@test/8/start2")
    assert recovery.hand_back("ends@test", "start2", drained=False) == 1
    assert status(job.pk) == Status.DEAD and chain_status(chain.pk) == ChainStatus.FAILED
    assert finished == [(job.pk, "dead")]


def test_an_operators_cancel_of_a_waiting_job_runs_the_hook_once_and_cancels_its_chain():
    chain = start_chain([Step(TYPE, {})])
    job = Job.objects.get(chain=chain)
    assert control.cancel(job) is True
    assert status(job.pk) == Status.CANCELLED and chain_status(chain.pk) == ChainStatus.CANCELLED
    assert finished == [(job.pk, "cancelled")]
    assert control.cancel(job) is False and finished == [(job.pk, "cancelled")]  # ended once


def test_a_run_whose_cancel_was_asked_ends_cancelled_with_one_hook_call():
    job = enqueue(TYPE, {})
    claimed = claim(job.pk)
    assert control.cancel(Job.objects.get(pk=job.pk)) is True  # a running job: asked to stop
    assert finished == []
    assert runner._succeed(_context(claimed), "{}", registry.get(TYPE)) == "cancelled"
    assert finished == [(job.pk, "cancelled")]


def test_a_run_of_a_type_without_hook_or_chain_whose_cancel_was_asked_ends_cancelled_in_one_statement():
    # given a type with no hook, no chain, no limits: its success is one statement, no transaction
    registry.add(JobType("t.ends-plain", handler))
    try:
        job = enqueue("t.ends-plain", {})
        claimed = claim(job.pk)
        assert control.cancel(Job.objects.get(pk=job.pk)) is True
        # when its run returns, then it ends cancelled (and nothing after the row raises)
        assert runner._succeed(_context(claimed), "{}", registry.get("t.ends-plain")) == "cancelled"
        assert status(job.pk) == Status.CANCELLED
    finally:
        registry.remove("t.ends-plain")


def _context(claimed: store.Claimed) -> Any:
    from jobs.engine.context import Context

    return Context(job_id=claimed.id, type=claimed.type, attempt=claimed.attempt, max_attempts=claimed.max_attempts,
                   chain_id=claimed.chain_id, chain_index=claimed.chain_index, parent_id=claimed.parent_id,
                   idempotency_key=f"conveyor-job-{claimed.id}")
