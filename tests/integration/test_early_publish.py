"""Early publish (jobs.engine.early): a run's success sends the chain's next step's message just
before its COMMIT; a claim of that message that arrives first waits for the commit, never drops a
row that commits, and claims nothing when the transaction rolls back."""
from __future__ import annotations

import base64
import json
import threading
import time

from django.db import connections, transaction

from jobs import Step, start_chain
from jobs.engine import early, runner, store
from jobs.engine.creation import new_job
from jobs.models import Chain, ChainStatus, Job, Status
from tests.integration.conftest import RUNNER_IN_PROCESS
from tests.support import redis_client

pytestmark = RUNNER_IN_PROCESS
WORKER = "early@test/1/x"


def messages(queue: str) -> list[dict]:
    """The messages waiting in `queue`, over its priority lists."""
    keys = [queue] + [f"{queue}:{step}" for step in range(1, 10)]
    return [json.loads(raw) for key in keys for raw in redis_client().lrange(key, 0, -1)]


def job_ids(message: dict) -> list[int]:
    return json.loads(base64.b64decode(message["body"]))[0]


class Uncommitted:
    """A job inserted as a run's success inserts its next step (early lock held), in a transaction
    of another thread (its own connection) that ends `after` seconds later, committed or not."""

    def __init__(self, commit: bool, after: float) -> None:
        self.commit, self.after = commit, after
        self.inserted = threading.Event()
        self.job_id = 0
        self.thread = threading.Thread(target=self._run)

    def __enter__(self) -> Uncommitted:
        self.thread.start()
        assert self.inserted.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.thread.join(10)

    def _run(self) -> None:
        try:
            with transaction.atomic():
                (job,) = store.insert([new_job(Step("examples.ping", {}))], early=True)
                self.job_id = job.pk
                self.inserted.set()
                time.sleep(self.after)
                with connections["default"].cursor() as cursor:
                    cursor.execute("SELECT clock_timestamp()")
                    self.ending_at = cursor.fetchone()[0]  # PostgreSQL's clock, just before the end
                if not self.commit:
                    transaction.set_rollback(True)
        finally:
            connections.close_all()


def test_a_success_publishes_the_next_step_with_the_early_header_and_its_row_commits():
    # given a chain across two queues, its first step run here (a worker consuming neither)
    chain = start_chain([Step("examples.echo", {}), Step("examples.ping", {})])
    first = Job.objects.get(chain=chain, chain_index=0)

    # when its run succeeds
    assert runner.execute(first.pk, worker=WORKER) == "succeeded"

    # then the next step's one message says it was sent before the commit, and names a row that
    # is there, pending, for the worker that takes it
    second = Job.objects.get(chain=chain, chain_index=1)
    (message,) = messages("notifications")
    assert (job_ids(message), message["headers"][early.EARLY_HEADER]) == ([second.pk], 1)
    assert runner.execute(second.pk, worker="other@test/2/y", published_early=True) == "succeeded"
    assert Chain.objects.get(pk=chain.pk).status == ChainStatus.SUCCEEDED


def test_a_claim_that_arrives_before_the_commit_waits_for_it_and_runs_the_job_once():
    # given a job inserted early whose transaction commits 0.3 s later
    with Uncommitted(commit=True, after=0.3) as pending:
        # when its early message is claimed before that
        started = time.monotonic()
        outcome = runner.execute(pending.job_id, worker=WORKER, published_early=True)
        waited = time.monotonic() - started

    # then the claim waited for the commit (no drop), and the job ran once, started (PostgreSQL's
    # clock, what the handoff is measured with) after the commit, not when the claim arrived
    assert outcome == "succeeded"
    assert waited >= 0.2
    job = Job.objects.get(pk=pending.job_id)
    assert (job.status, job.attempt) == (Status.SUCCEEDED, 1)
    assert job.started_at > pending.ending_at


def test_a_message_not_sent_early_claims_nothing_before_the_commit():
    # given the same uncommitted row: a message that does not say it was sent early (a duplicate,
    # an old publisher's) is dropped at once, as always (the row, once committed, stays runnable)
    with Uncommitted(commit=True, after=0.3) as pending:
        assert runner.execute(pending.job_id, worker=WORKER) == "skipped"
    assert Job.objects.get(pk=pending.job_id).status == Status.PENDING


def test_a_claim_of_an_early_message_whose_transaction_rolls_back_claims_nothing():
    # given a job inserted early whose transaction rolls back (its outcome's COMMIT failed)
    with Uncommitted(commit=False, after=0.2) as pending:
        # when its early message is claimed meanwhile
        outcome = runner.execute(pending.job_id, worker=WORKER, published_early=True)

    # then the claim waited for the end, found no row, and dropped the message
    assert outcome == "skipped"
    assert not Job.objects.filter(pk=pending.job_id).exists()


def test_an_early_claim_waits_at_most_its_bound_and_the_row_stays_for_the_relay(monkeypatch):
    # given a claim allowed to wait 0.1 s for a transaction that commits 0.6 s later
    monkeypatch.setattr(early, "AWAIT_MS", 100)
    with Uncommitted(commit=True, after=0.6) as pending:
        started = time.monotonic()
        outcome = runner.execute(pending.job_id, worker=WORKER, published_early=True)
        waited = time.monotonic() - started

    # then it gave up after its bound (the message dropped) and the committed row is still
    # pending and published: the relay sends it again once stale
    assert outcome == "skipped"
    assert 0.05 <= waited < 0.5
    job = Job.objects.get(pk=pending.job_id)
    assert (job.status, job.attempt, job.published_at is not None) == (Status.PENDING, 0, True)

