"""The trace context through the job rows, in process on real PostgreSQL and Redis: every way a
job is made stores the context it was made in, and the runner, the reaper and the chain restore it.

The SDK exports to its InMemorySpanExporter; the runner is called in process (as a worker's task
would call it). The same paths across real worker processes: tests/acceptance/test_tracing_live.py.
"""
from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from jobs import Step, enqueue, enqueue_many
from jobs.engine import recovery, registry, runner, store
from jobs.engine.registry import Backoff, JobType
from jobs.interfaces.beat import enqueue_tick
from jobs.models import Job
from subscribers import emit
from tests.integration.conftest import RUNNER_IN_PROCESS
from tests.support import traced_in_memory

pytestmark = RUNNER_IN_PROCESS

WORKER = "tracing@test/1"
TYPE = "t.traced"


def handler(ctx: Any, data: dict[str, Any]) -> dict[str, Any]:
    if ctx.attempt <= data.get("fail", 0):
        raise ValueError(f"failing attempt {ctx.attempt}")
    return {"attempt": ctx.attempt}


@pytest.fixture(autouse=True)
def traced_type():
    registry.add(JobType(TYPE, handler, retries=2, backoff=Backoff(0.0, 0.0)))
    yield
    registry.remove(TYPE)


@pytest.fixture
def spans():
    """This process traced into memory for the test; the finished spans by name."""
    with traced_in_memory() as (exporter, provider):
        yield Spans(exporter, provider.get_tracer("test"))


class Spans:
    def __init__(self, exporter: InMemorySpanExporter, tracer: Any) -> None:
        self.exporter, self.tracer = exporter, tracer

    def named(self, name: str) -> list[Any]:
        return [s for s in self.exporter.get_finished_spans() if s.name == name]

    def one(self, name: str) -> Any:
        [found] = self.named(name)
        return found


def span_id(span: Any) -> str:
    return format(span.context.span_id, "016x")


def stored_parent(job_id: int) -> str:
    """The span id of the context a row stores."""
    return Job.objects.get(pk=job_id).trace_context["traceparent"].split("-")[2]


def test_off_a_row_stores_no_context_and_its_run_records_no_span():
    job = enqueue(TYPE, {})
    assert runner.execute(job.pk, WORKER) == "succeeded"
    assert Job.objects.get(pk=job.pk).trace_context is None


@pytest.mark.django_db(databases="__all__")  # no run: rolled back, no flush
def test_enqueue_stores_its_own_span_a_child_of_the_callers(spans):
    # given a caller's span (a request's, say)
    with spans.tracer.start_as_current_span("request") as request:
        # when it enqueues a job and two more in bulk
        one = enqueue(TYPE, {})
        many = enqueue_many([Step(TYPE, {}), Step("examples.echo", {})])
    # then each insert is a conveyor.enqueue span under the request, naming types and queues
    single, bulk = spans.named("conveyor.enqueue")
    assert single.parent.span_id == bulk.parent.span_id == request.get_span_context().span_id
    assert (single.attributes["conveyor.job.type"], single.attributes["conveyor.queue"]) == (TYPE, "default")
    assert list(bulk.attributes["conveyor.job.types"]) == sorted([TYPE, "examples.echo"]) and bulk.attributes["conveyor.jobs"] == 2
    # and each row stores its enqueue span as the parent of its attempts
    assert stored_parent(one.pk) == span_id(single)
    assert {stored_parent(job.pk) for job in many} == {span_id(bulk)}


def test_every_attempt_of_a_retried_job_runs_under_the_span_that_enqueued_it(spans):
    # given a job that fails its first attempt, enqueued in a trace
    job = enqueue(TYPE, {"fail": 1})
    # when two attempts run
    assert runner.execute(job.pk, WORKER) == "failed"
    assert runner.execute(job.pk, WORKER) == "succeeded"
    # then both runs, and both waits and claims, are children of the enqueue span
    enqueued = spans.one("conveyor.enqueue")
    runs = spans.named("conveyor.run")
    assert [(r.attributes["conveyor.attempt"], r.attributes["conveyor.outcome"]) for r in runs] == [(1, "failed"), (2, "succeeded")]
    for name in ("conveyor.run", "conveyor.wait", "conveyor.claim"):
        assert [s.parent.span_id for s in spans.named(name)] == [enqueued.context.span_id] * 2, name
    assert {r.context.trace_id for r in runs} == {enqueued.context.trace_id}
    assert runs[0].status.status_code.name == "ERROR" and runs[1].attributes["conveyor.worker"] == WORKER
    # and the wait ends where the claim does, after it started
    for wait, claim in zip(spans.named("conveyor.wait"), spans.named("conveyor.claim")):
        assert wait.start_time <= wait.end_time == claim.end_time


def test_an_attempt_whose_worker_died_is_recorded_by_the_reaper_in_its_jobs_trace(spans):
    # given a traced job claimed by a worker that then died (its lease lapsed)
    job = enqueue(TYPE, {})
    store.claim(job.pk, "dead@test/9", 30)
    Job.objects.filter(pk=job.pk).update(lease_expires_at=dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc))
    # when the reaper settles it
    assert recovery.reap() == 1
    # then its lost attempt is a conveyor.run span in the job's trace, an error saying why
    lost = spans.one("conveyor.run")
    assert lost.parent.span_id == spans.one("conveyor.enqueue").context.span_id
    assert (lost.attributes["conveyor.attempt"], lost.attributes["conveyor.outcome"], lost.attributes["conveyor.recorded_by"]) == (
        1, "lost", "reaper")
    assert lost.attributes["conveyor.worker"] == "dead@test/9" and "lease expired" in lost.status.description


@pytest.mark.django_db(databases="__all__")  # no run: rolled back, no flush
def test_an_events_deliveries_are_enqueued_under_its_emit(spans):
    event = emit("order.placed", {"email": "a@example.com"})
    emitted = spans.one("conveyor.event.emit")
    assert emitted.attributes["conveyor.event.id"] == event.pk and emitted.attributes["conveyor.deliveries"] == 3
    enqueued = spans.one("conveyor.enqueue")
    assert enqueued.parent.span_id == emitted.context.span_id
    deliveries = Job.objects.filter(pk__in=event.deliveries.values("job_id"))
    assert deliveries.count() == 3 and {stored_parent(job.pk) for job in deliveries} == {span_id(enqueued)}


@pytest.mark.django_db(databases="__all__")  # no run: rolled back, no flush
def test_a_schedules_tick_is_a_trace_of_its_own_with_its_job_under_it(spans):
    job = enqueue_tick("nightly", TYPE, {}, dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc))
    tick = spans.one("conveyor.schedule.tick")
    assert tick.parent is None and tick.attributes["conveyor.schedule"] == "nightly"
    assert spans.one("conveyor.enqueue").parent.span_id == tick.context.span_id
    assert stored_parent(job.pk) == span_id(spans.one("conveyor.enqueue"))
