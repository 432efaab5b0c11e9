"""One trace per request across real worker processes (issue 30): the trace context stored in
each job row, restored by the worker that runs it.

The test process serves the HTTP request (Django's test client, Django's OpenTelemetry
instrumentation) and exports to the SDK's InMemorySpanExporter; two real `manage.py start`
workers (one per queue, prefork) export over OTLP/HTTP to a receiver the test starts
(hosts.otlp, the official protobuf classes). Both halves are read as one trace.

Timings come from tests.support.FAST: a lost worker's lease lapses in 3 s.
"""
from __future__ import annotations

import json
import os
import signal

import pytest
from opentelemetry.instrumentation.django import DjangoInstrumentor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from hosts.otlp import Received, Receiver
from jobs.models import ChainStatus, Job, Status
from tests.support import api_client, is_dead, traced_in_memory, wait_chain, wait_for

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True, databases="__all__"), pytest.mark.usefixtures("stop_together")]

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


@pytest.fixture
def traced():
    """This process traced into memory (and Django instrumented) for the test; off again after."""
    with traced_in_memory() as (exporter, provider):
        DjangoInstrumentor().instrument(tracer_provider=provider)
        try:
            yield exporter
        finally:
            DjangoInstrumentor().uninstrument()


def local(exporter: InMemorySpanExporter) -> list[Received]:
    """The in-memory spans, as the receiver keeps the workers' (OTLP's numbers for kind and status)."""
    return [
        Received(s.name, format(s.context.trace_id, "032x"), format(s.context.span_id, "016x"),
                 format(s.parent.span_id, "016x") if s.parent else "", "test", dict(s.attributes or {}),
                 s.start_time, s.end_time, s.status.status_code.value, s.kind.value + 1)  # OTLP numbers its kinds from 1
        for s in exporter.get_finished_spans()
    ]


def one(spans: list[Received], name: str, **attributes: object) -> Received:
    found = [s for s in spans if s.name == name and all(s.attributes.get(k) == v for k, v in attributes.items())]
    assert len(found) == 1, (name, attributes, [(s.name, s.attributes) for s in spans if s.name == name])
    return found[0]


def test_a_request_its_chain_group_retry_and_killed_attempt_form_one_trace_across_workers(live, traced):
    with Receiver() as receiver:
        # given two workers, one per queue, exporting over OTLP to the test's receiver
        env = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
               "OTEL_SERVICE_NAME": "shop", "OTEL_BSP_SCHEDULE_DELAY": "100", "LOG_FORMAT": "json"}
        procs = [live.start("--queues", queue, "--concurrency", "2", mode="worker", name=f"trace-{queue}", wait=False, env=env)
                 for queue in ("default", "images")]
        for proc in procs:
            proc.wait_ready()

        # when a request in a client's trace starts a chain: a step failing once, a group with a
        # member on each queue, a last step
        response = api_client().post("/api/chains", content_type="application/json", data={"steps": [
            {"type": "examples.fail", "input": {"times": 1}},
            {"group": [{"type": "examples.member", "input": {"n": 0}},
                       {"type": "examples.member-images", "input": {"n": 1, "sleep": 2.0}}]},
            {"type": "examples.gather"},
        ]}, HTTP_TRACEPARENT=f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01", HTTP_BAGGAGE="tenant=acme")
        assert response.status_code == 201, response.content
        chain_id = response.json()["id"]

        # and the images member's pool process is killed with SIGKILL while it runs
        victim = wait_for(lambda: Job.objects.filter(chain_id=chain_id, chain_index=1, member=1, status=Status.RUNNING).first(),
                          30, interval=0.05, what="the images member to run")
        wait_for(lambda: any(s.name == "conveyor.claim" and s.attributes.get("conveyor.job.id") == victim.pk
                             for s in receiver.spans()), 10, interval=0.05, what="the first attempt's claim to be exported")
        pid = int(victim.worker.split("/")[1])
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: is_dead(pid), 10, what="the pool process to die")

        # then the chain succeeds, the killed member by its second attempt
        wait_chain(chain_id, ChainStatus.SUCCEEDED, 45)
        assert Job.objects.get(pk=victim.pk).attempt == 2
        gather = Job.objects.get(chain_id=chain_id, chain_index=2)
        # (each worker exports on its own schedule: the last step's worker may export first; and
        # the member's run span ends after its outcome's commit, which the early publish of the
        # last step does not wait for)
        for job_id, what in ((gather.pk, "the last step's run"), (victim.pk, "the killed member's re-run")):
            wait_for(lambda: any(s.name == "conveyor.run" and s.attributes.get("conveyor.job.id") == job_id
                                 and s.attributes.get("conveyor.outcome") == "succeeded" for s in receiver.spans()),
                     10, what=f"{what} to be exported")
        spans = local(traced) + receiver.spans()

    # and every span of the request and of its jobs is in the client's trace
    conveyor = [s for s in spans if s.name.startswith("conveyor.") or s.service == "test"]
    assert {s.trace_id for s in conveyor} == {CLIENT_TRACE}
    assert {s.service for s in spans if s.service != "test"} == {"shop-worker"}
    by_id = {s.span_id: s for s in spans}

    # the request's server span is the client's child; the first step is enqueued under it
    request = one([s for s in spans if s.service == "test"], next(s.name for s in spans if s.parent_id == CLIENT_SPAN))
    assert request.parent_id == CLIENT_SPAN and request.kind == 2  # SERVER
    first = one(spans, "conveyor.enqueue", **{"conveyor.job.type": "examples.fail", "conveyor.chain.step": 0})
    assert first.parent_id == request.span_id and first.attributes["conveyor.queue"] == "default"

    # the retried step: both attempts, each after its wait, children of the same enqueue
    failed = one(spans, "conveyor.run", **{"conveyor.job.type": "examples.fail", "conveyor.attempt": 1})
    retried = one(spans, "conveyor.run", **{"conveyor.job.type": "examples.fail", "conveyor.attempt": 2})
    assert (failed.attributes["conveyor.outcome"], retried.attributes["conveyor.outcome"]) == ("failed", "succeeded")
    assert failed.parent_id == retried.parent_id == first.span_id
    assert failed.status_code == 2 and retried.status_code != 2
    assert failed.attributes["conveyor.worker"].startswith("trace-default@test")
    for attempt in (1, 2):
        wait = one(spans, "conveyor.wait", **{"conveyor.job.type": "examples.fail", "conveyor.attempt": attempt})
        assert wait.parent_id == first.span_id and wait.start_ns <= wait.end_ns

    # the handoff to the group is the retried run's child; the group is enqueued under it, both queues
    handoff = one(spans, "conveyor.handoff", **{"conveyor.chain.step": 1})
    assert handoff.parent_id == retried.span_id and handoff.attributes["conveyor.group"] is True
    group = one(spans, "conveyor.enqueue", **{"conveyor.chain.step": 1})
    assert group.parent_id == handoff.span_id
    assert group.attributes["conveyor.queues"] == ["default", "images"] and group.attributes["conveyor.jobs"] == 2

    # the killed member: its lost attempt (recorded by the recovery) and its re-run, under the group's enqueue
    runs = sorted((s for s in spans if s.name == "conveyor.run" and s.attributes.get("conveyor.job.id") == victim.pk),
                  key=lambda s: s.attributes["conveyor.attempt"])
    assert [(s.attributes["conveyor.attempt"], s.attributes["conveyor.outcome"]) for s in runs] == [(1, "lost"), (2, "succeeded")]
    assert runs[0].attributes["conveyor.recorded_by"] in ("reaper", "hand-back") and runs[0].status_code == 2
    assert {s.parent_id for s in runs} == {group.span_id}
    assert all(s.attributes["conveyor.worker"].startswith("trace-images@test") for s in runs)
    member = one(spans, "conveyor.run", **{"conveyor.job.type": "examples.member"})
    assert member.parent_id == group.span_id and member.attributes["conveyor.queue"] == "default"

    # the fan-in: the last member to end hands off to the last step, which runs under it
    last = one(spans, "conveyor.enqueue", **{"conveyor.chain.step": 2})
    fan_in = by_id[last.parent_id]
    assert fan_in.name == "conveyor.handoff" and by_id[fan_in.parent_id] is runs[1]
    final = one(spans, "conveyor.run", **{"conveyor.job.id": gather.pk})
    assert final.parent_id == last.span_id and final.attributes["conveyor.outcome"] == "succeeded"
    # and the client's baggage crossed both workers with the trace: the last step's row, written by
    # a worker under a run restored from a row, stores it
    assert Job.objects.get(pk=gather.pk).trace_context == {"traceparent": f"00-{CLIENT_TRACE}-{last.span_id}-01", "baggage": "tenant=acme"}

    # and the outcome's statements are the run's children (psycopg instrumented); a statement
    # outside any span (the heartbeat's, the relay's) is no trace of its own
    statements = [s for s in spans if s.parent_id == failed.span_id and s.kind == 3]  # CLIENT
    assert statements and all(s.attributes.get("db.system", s.attributes.get("db.system.name")) == "postgresql" for s in statements)
    assert not [s for s in spans if s.kind == 3 and not s.parent_id]

    # and the JSON log line of the failed attempt carries its trace and span beside the job's fields
    lines = [json.loads(line) for line in procs[0].log().splitlines() if line.startswith("{")]
    [logged] = [line for line in lines if line.get("job") == failed.attributes["conveyor.job.id"] and line.get("attempt") == 1
                and "failed" in line["message"]]
    assert (logged["trace_id"], logged["span_id"]) == (CLIENT_TRACE, failed.span_id)
