"""Regression tests for the job core's correctness defects (issue 10), in process against the
real PostgreSQL and Redis of the test session. Each test is named after the defect it closes;
the defects that need worker processes and signals are in tests/acceptance/test_core_defects_live.py.
"""
from __future__ import annotations

import datetime as dt
from contextlib import contextmanager
from typing import Any, Iterator

import pytest
from django.db import connection, connections
from django.test import Client
from django.utils import timezone

from jobs import Step, enqueue, enqueue_many, new_job
from jobs.engine import control, recovery, registry, runner, store
from jobs.interfaces.beat import enqueue_tick
from jobs.engine.creation import IdempotencyConflict
from jobs.models import Chain, ChainStatus, Job, Status
from tests.factories import api_token
from tests.support import published_job_ids, queue_length, redis_client

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")


@pytest.fixture(autouse=True)
def empty_redis() -> Iterator[None]:
    redis_client().flushall()
    yield
    redis_client().flushall()


@contextmanager
def declared(jt: registry.JobType) -> Iterator[registry.JobType]:
    """A job type of the test's own, forgotten afterwards."""
    registry.add(jt)
    try:
        yield jt
    finally:
        registry.remove(jt.name)


def sql(statement: str, params: list[Any] | None = None) -> None:
    with connection.cursor() as cursor:
        cursor.execute(statement, params or [])


def expire_lease(job_id: int) -> None:
    sql("UPDATE jobs_job SET lease_expires_at = now() - interval '1 second' WHERE id = %s", [job_id])


def api() -> Client:
    return Client(HTTP_AUTHORIZATION=f"Bearer {api_token()}")


# --- 2. idempotency keys share one namespace with the platform's own --------------------------------


def test_a_client_key_cannot_squat_a_schedule_tick():
    # given a client that enqueued a job under what a tick's key used to be, and the new form
    tick = dt.datetime(2026, 1, 1, 2, 0, tzinfo=dt.timezone.utc)
    squatter = enqueue("examples.echo", {}, idempotency_key="schedule:examples.nightly-report:2026-01-01T02:00:00Z")
    refused = api().post(
        "/api/jobs",
        {"type": "examples.echo", "idempotency_key": "conveyor:schedule:examples.nightly-report:2026-01-01T02:00:00Z"},
        content_type="application/json",
    )
    assert refused.status_code == 400 and "idempotency_key" in refused.json()["fields"]

    # when the tick fires
    job = enqueue_tick("examples.nightly-report", "examples.nightly-report", {}, tick)

    # then it writes its own job, not the client's
    assert job.pk != squatter.pk and job.type == "examples.nightly-report"
    assert job.idempotency_key == "conveyor:schedule:examples.nightly-report:2026-01-01T02:00:00Z"


def test_a_platform_key_over_http_is_a_400_naming_the_field():
    response = api().post(
        "/api/jobs", {"type": "examples.echo", "idempotency_key": "conveyor:delivery:1:shop.audit"}, content_type="application/json"
    )
    assert response.status_code == 400
    assert "idempotency_key" in response.json()["fields"]


def test_an_idempotent_replay_answers_200_with_the_job_and_409_for_other_input():
    client = api()
    body = {"type": "examples.echo", "input": {"n": 1}, "idempotency_key": "order-7"}
    first = client.post("/api/jobs", body, content_type="application/json")
    again = client.post("/api/jobs", body, content_type="application/json")
    other = client.post("/api/jobs", {**body, "input": {"n": 2}}, content_type="application/json")
    other_type = client.post("/api/jobs", {**body, "type": "examples.ping"}, content_type="application/json")

    assert first.status_code == 201
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    assert other.status_code == 409 and "idempotency_key" in other.json()["fields"]
    assert other_type.status_code == 409
    assert Job.objects.filter(idempotency_key="order-7").count() == 1
    with pytest.raises(IdempotencyConflict):
        enqueue("examples.echo", {"n": 3}, idempotency_key="order-7")


# --- 3. one bad row stops recovery on every worker ------------------------------------------------


def raising_hook(job_id: int, status: str) -> None:
    raise RuntimeError("this hook always fails")


def test_one_row_whose_settlement_fails_does_not_stop_reaping_or_relaying():
    with declared(registry.JobType("tests.bad-hook", handler=lambda ctx, data: None, retries=0, on_finish=raising_hook)):
        # given a dead worker's row whose settlement raises, another dead worker's row, and a
        # delayed job now due
        bad = enqueue("tests.bad-hook", {})
        good = enqueue("examples.echo", {})
        for job in (bad, good):
            assert store.claim(job.pk, "gone@test/1", 30) is not None
            expire_lease(job.pk)
        due = enqueue("examples.echo", {}, run_after=timezone.now() + dt.timedelta(hours=1))
        sql("UPDATE jobs_job SET run_after = now() - interval '1 second' WHERE id = %s", [due.pk])
        redis_client().flushall()

        # when one recovery pass runs
        reaped, relayed = recovery.recover_once()

    # then the good row was reaped, the due row published, and the bad row waits for the next pass
    assert reaped == 1
    assert Job.objects.get(pk=good.pk).status == Status.PENDING
    assert Job.objects.get(pk=bad.pk).status == Status.RUNNING
    assert Job.objects.get(pk=due.pk).published_at is not None
    assert relayed >= 2 and queue_length("default") >= 2  # the due row and the reaped one


# --- 4. a failure to record an outcome re-runs a handler that succeeded ----------------------------


class NotJson:
    pass


@pytest.mark.parametrize(
    ("output", "reason"),
    [(NotJson(), "cannot be stored as JSON"), ({"x": float("nan")}, "cannot be stored as JSON"), ({"x": "a\x00b"}, "NUL")],
)
def test_an_output_that_cannot_be_stored_fails_the_attempt_instead_of_leaving_it_running(output, reason):
    with declared(registry.JobType("tests.bad-output", handler=lambda ctx, data: output, retries=0)):
        job = enqueue("tests.bad-output", {})
        assert runner.execute(job.pk, "node@test/1") == Status.DEAD
    row = Job.objects.get(pk=job.pk)
    assert row.status == Status.DEAD and row.attempt == 1 and reason in row.error


def test_a_nul_in_the_error_text_is_recorded():
    def fails(ctx: Any, data: Any) -> None:
        raise ValueError("bad byte \x00 here")

    with declared(registry.JobType("tests.nul-error", handler=fails, retries=0)):
        job = enqueue("tests.nul-error", {})
        assert runner.execute(job.pk, "node@test/1") == Status.DEAD
    row = Job.objects.get(pk=job.pk)
    assert row.status == Status.DEAD and "bad byte \\x00 here" in row.error


def test_postgres_dropping_the_connection_before_the_outcome_does_not_rerun_the_handler():
    runs = []

    def drop_my_connection(ctx: Any, data: Any) -> dict:
        runs.append(ctx.attempt)
        # The outcome's connection dies under the runner, as in a PostgreSQL restart.
        outcome = connections["default"]
        outcome.ensure_connection()
        with connections[store.CLAIMS].cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(%s)", [outcome.connection.info.backend_pid])
        return {"ran": True}

    with declared(registry.JobType("tests.drop-connection", handler=drop_my_connection, retries=0)):
        job = enqueue("tests.drop-connection", {})
        assert runner.execute(job.pk, "node@test/1") == Status.SUCCEEDED
    row = Job.objects.get(pk=job.pk)
    assert (row.status, row.attempt, row.output, runs) == (Status.SUCCEEDED, 1, {"ran": True}, [1])


# --- 6. lease fencing ------------------------------------------------------------------------------


def test_a_stale_runner_cannot_extend_the_lease_of_the_next_attempt():
    # given attempt 1 lost to the reaper and attempt 2 claimed by another worker
    job = enqueue("examples.echo", {})
    store.claim(job.pk, "old@test/1", 30)
    expire_lease(job.pk)
    assert recovery.reap() == 1
    store.claim(job.pk, "new@test/2", 2)
    lease = Job.objects.get(pk=job.pk).lease_expires_at

    # when the stale runner heartbeats attempt 1
    beats = store.heartbeat([(job.pk, 1)], 3600)

    # then nothing is extended and the stale runner is not told it still holds the row
    assert beats == []
    assert Job.objects.get(pk=job.pk).lease_expires_at == lease


def test_hand_back_never_reuses_an_attempt_number():
    job = enqueue("examples.echo", {})
    store.claim(job.pk, "node@test/1", 30)
    recovery.hand_back("node@test", drained=True)
    claimed = store.claim(job.pk, "node@test/2", 30)
    assert claimed is not None and claimed.attempt == 2
    row = Job.objects.get(pk=job.pk)
    assert row.max_attempts == 5  # examples.echo: 4 attempts, plus the interrupted one not counted


# --- 7. the relay can starve a lost message ---------------------------------------------------------


def test_the_relay_resends_a_lost_message_of_a_busy_queue_within_the_backlog_bound(settings):
    settings.CONVEYOR = {**settings.CONVEYOR, "RELAY_STALE_SECONDS": 30, "RELAY_BACKLOG_SECONDS": 300}
    # given a `default` queue that always holds messages, a row whose message was lost 400 s ago,
    # and one published 60 s ago (most likely still waiting its turn)
    lost = enqueue("examples.echo", {})
    waiting = enqueue("examples.echo", {})
    sql("UPDATE jobs_job SET published_at = now() - interval '400 seconds' WHERE id = %s", [lost.pk])
    sql("UPDATE jobs_job SET published_at = now() - interval '60 seconds' WHERE id = %s", [waiting.pk])
    redis_client().flushall()
    redis_client().rpush("default", b"someone else's message")

    # when the relay runs
    recovery.relay()

    # then the lost one is published again, and the waiting one is left alone
    published = dict(Job.objects.filter(pk__in=[lost.pk, waiting.pk]).values_list("pk", "published_at"))
    assert timezone.now() - published[lost.pk] < dt.timedelta(seconds=10)
    assert timezone.now() - published[waiting.pk] > dt.timedelta(seconds=50)


# --- 8. enqueue_many with an idempotency key ---------------------------------------------------------


def test_enqueue_many_with_idempotency_keys_returns_and_publishes_the_rows():
    taken = enqueue("examples.echo", {}, idempotency_key="batch-0")
    redis_client().flushall()

    jobs = enqueue_many([Step("examples.echo", {"i": i}, idempotency_key=f"batch-{i}") for i in range(3)] + [Step("examples.echo", {})])

    assert [job.input for job in jobs] == [{"i": 1}, {"i": 2}, {}]
    assert all(job.pk and job.pk != taken.pk for job in jobs)
    assert published_job_ids("default") == sorted(job.pk for job in jobs)


# --- 9. clock skew --------------------------------------------------------------------------------


def test_a_host_whose_clock_runs_ahead_still_enqueues_jobs_that_are_due_now(monkeypatch):
    real_now = timezone.now
    monkeypatch.setattr(timezone, "now", lambda: real_now() + dt.timedelta(seconds=5))
    job = enqueue("examples.echo", {})
    assert store.claim(job.pk, "node@test/1", 30) is not None


# --- 12. retrying a cancelled job that was scheduled for later ---------------------------------------


def test_retrying_a_cancelled_job_scheduled_for_later_keeps_its_time():
    later = timezone.now() + dt.timedelta(hours=1)
    job = enqueue("examples.echo", {}, run_after=later)
    assert control.cancel(job)
    redis_client().flushall()

    assert control.retry(Job.objects.get(pk=job.pk))

    row = Job.objects.get(pk=job.pk)
    assert row.status == Status.PENDING and row.run_after == later and row.published_at is None
    assert store.claim(job.pk, "node@test/1", 30) is None
    assert queue_length("default") == 0


# --- 1. a cancelled job handed back (the live test kills a real worker; this one is the rule) ------


def test_a_cancel_requested_job_handed_back_ends_cancelled_with_its_chain():
    chain = Chain.objects.create(steps=[{"type": "examples.echo", "input": {}}])
    [job] = store.insert([new_job(Step("examples.echo", {}), chain_id=chain.pk, chain_index=0)])
    store.claim(job.pk, "node@test/1", 30)
    assert control.cancel(job) is True  # running: asked to stop

    recovery.hand_back("node@test")

    assert Job.objects.get(pk=job.pk).status == Status.CANCELLED
    assert Chain.objects.get(pk=chain.pk).status == ChainStatus.CANCELLED
