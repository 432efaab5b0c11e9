"""Local handoff (jobs.engine.handoff): a worker that succeeds a chain step claims the next step in
the outcome's transaction and runs it next, with no message, when it consumes the step's queue."""
from __future__ import annotations

import pytest

from jobs import Group, Step, start_chain
from jobs.engine import handoff, runner
from jobs.models import Chain, ChainStatus, Job, Status
from tests.integration.conftest import RUNNER_IN_PROCESS
from tests.support import published_job_ids as queued

pytestmark = RUNNER_IN_PROCESS
WORKER = "handoff@test/1/x"


def steps(chain: Chain) -> list[Job]:
    return list(Job.objects.filter(chain=chain).order_by("chain_index", "member"))


@pytest.fixture
def consuming(monkeypatch):
    def consume(*queues: str) -> None:
        monkeypatch.setattr(handoff, "LOCAL_QUEUES", frozenset(queues))
    return consume


def test_a_next_step_on_a_queue_the_worker_consumes_is_claimed_with_the_outcome_and_run_next_without_a_message(consuming):
    # given a worker consuming both queues of a three-step chain
    consuming("default", "notifications")
    chain = start_chain([Step("examples.echo", {"i": 1}), Step("examples.ping", {}), Step("examples.echo", {"i": 2})])
    first = steps(chain)[0]
    assert queued("default") == [first.pk]
    redis_flush_default()

    # when it runs the first step's message
    assert runner.execute(first.pk, worker=WORKER) == "succeeded"

    # then every step ran, here, each claimed in its previous step's outcome transaction (the
    # same now(): its start is that outcome's end), and no message was sent for the later steps
    done = steps(chain)
    assert [(j.status, j.attempt, j.worker) for j in done] == [(Status.SUCCEEDED, 1, WORKER)] * 3
    assert [done[1].started_at, done[2].started_at] == [done[0].finished_at, done[1].finished_at]
    assert (queued("default"), queued("notifications")) == ([], [])
    assert Chain.objects.get(pk=chain.pk).status == ChainStatus.SUCCEEDED


def test_a_message_of_a_step_claimed_here_claims_nothing(consuming):
    # given a chain whose second step was handed off (its row claimed in the first's outcome)
    consuming("default", "notifications")
    chain = start_chain([Step("examples.echo", {}), Step("examples.ping", {})])
    assert runner.execute(steps(chain)[0].pk, worker=WORKER) == "succeeded"
    second = steps(chain)[1]

    # when a message for it arrives anyway (a relay's, a duplicate)
    outcome = runner.execute(second.pk, worker="other@test/2/y")

    # then it claims nothing: one attempt, by the first worker
    assert outcome == "skipped"
    assert (Job.objects.get(pk=second.pk).attempt, Job.objects.get(pk=second.pk).worker) == (1, WORKER)


def test_a_next_step_on_a_queue_the_worker_does_not_consume_goes_by_its_message(consuming):
    consuming("default")
    chain = start_chain([Step("examples.echo", {}), Step("examples.ping", {})])
    first = steps(chain)[0]

    assert runner.execute(first.pk, worker=WORKER) == "succeeded"

    second = steps(chain)[1]
    assert (second.status, second.attempt) == (Status.PENDING, 0)
    assert queued("notifications") == [second.pk]


def test_a_group_is_not_handed_off_its_members_go_to_their_queue(consuming):
    consuming("default", "images")
    chain = start_chain([Step("examples.echo", {}), Group([Step("examples.member", {"n": 0}), Step("examples.member", {"n": 1})])])
    redis_flush_default()

    assert runner.execute(steps(chain)[0].pk, worker=WORKER) == "succeeded"

    members = steps(chain)[1:]
    assert [m.status for m in members] == [Status.PENDING] * 2
    assert queued("default") == sorted(m.pk for m in members)


def test_under_a_celery_time_limit_the_next_step_goes_by_its_message(consuming, monkeypatch):
    # given a prefork pool process (Celery enforces the message's time limit) and a message
    # that carries one: the next step must not run under what is left of it
    consuming("default", "notifications")
    monkeypatch.setattr(runner, "POOL_ENFORCES_TIME_LIMITS", True)
    chain = start_chain([Step("examples.echo", {}), Step("examples.ping", {})])

    assert runner.execute(steps(chain)[0].pk, worker=WORKER, own_time_limit=False) == "succeeded"

    second = steps(chain)[1]
    assert second.status == Status.PENDING and queued("notifications") == [second.pk]


def test_a_worker_runs_at_most_max_steps_in_a_row_then_the_next_goes_by_its_message(consuming, monkeypatch):
    consuming("default")
    monkeypatch.setattr(handoff, "MAX_STEPS", 1)
    chain = start_chain([Step("examples.echo", {"i": i}) for i in range(3)])
    first = steps(chain)[0]
    redis_flush_default()

    assert runner.execute(first.pk, worker=WORKER) == "succeeded"

    done = steps(chain)
    assert [j.status for j in done] == [Status.SUCCEEDED, Status.SUCCEEDED, Status.PENDING]
    assert queued("default") == [done[2].pk]


def redis_flush_default() -> None:
    from tests.support import redis_client

    redis_client().delete(*(["default"] + [f"default:{n}" for n in range(1, 10)]))
