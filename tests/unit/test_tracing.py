"""jobs.engine.tracing's stored context and project.tracing's reading of the environment.

No server, no exporter: the context a row stores is a propagator's carrier, validated; a round
trip through JSON restores the same trace, parent span and baggage; the OTEL_* variables decide
whether the SDK is set up at all."""
from __future__ import annotations

import json

import pytest
from opentelemetry import baggage, propagate, trace
from opentelemetry.sdk.trace import TracerProvider

from jobs.engine import tracing
from project import tracing as setup

PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


# --- the stored context --------------------------------------------------------------------------


def test_a_context_round_trips_through_the_row_with_its_trace_parent_span_and_baggage():
    # given a span, current, with baggage beside it
    provider = TracerProvider()
    with provider.get_tracer("t").start_as_current_span("request") as request:
        ctx = baggage.set_baggage("tenant", "acme")
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=ctx)
    # when it is stored as the row stores it (JSON) and read back
    stored = json.loads(json.dumps(tracing.encode(carrier)))
    restored = propagate.extract(tracing.decode(stored))
    # then the restored parent is the same span of the same trace, with the baggage
    parent = trace.get_current_span(restored).get_span_context()
    assert (parent.trace_id, parent.span_id) == (request.get_span_context().trace_id, request.get_span_context().span_id)
    assert parent.is_remote and parent.trace_flags.sampled
    assert baggage.get_baggage("tenant", restored) == "acme"
    assert tracing.trace_id_of(stored) == format(parent.trace_id, "032x")


def test_encode_keeps_only_the_w3c_headers_and_nothing_without_a_traceparent():
    assert tracing.encode({"traceparent": PARENT, "tracestate": "a=1", "baggage": "k=v", "x-other": "no"}) == {
        "traceparent": PARENT, "tracestate": "a=1", "baggage": "k=v",
    }
    assert tracing.encode({}) is None  # no span was current: nothing to join
    assert tracing.encode({"baggage": "k=v"}) is None


@pytest.mark.parametrize("stored", [
    None, "text", 12, [], {"traceparent": 5},
    {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331"},  # no flags
    {"traceparent": "00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-01"},  # upper case
    {"traceparent": "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},  # the forbidden version
])
def test_a_stored_value_that_is_no_context_is_ignored_not_an_error(stored):
    assert tracing.decode(stored) == {}
    assert tracing.trace_id_of(stored) is None


def test_an_oversized_or_empty_header_beside_a_good_traceparent_is_dropped():
    stored = {"traceparent": PARENT, "baggage": "k=" + "v" * tracing.MAX_VALUE, "tracestate": ""}
    assert tracing.decode(stored) == {"traceparent": PARENT}


def test_off_nothing_is_captured_restored_or_spanned():
    assert not tracing.on
    assert tracing.capture() is None
    assert tracing.parent({"traceparent": PARENT}) is None
    assert tracing.ids() is None
    with tracing.span("conveyor.enqueue") as span:
        assert span is None


# --- the environment -------------------------------------------------------------------------------


@pytest.mark.parametrize(("environ", "expected"), [
    ({}, False),
    ({"OTEL_SERVICE_NAME": "shop"}, False),  # a name alone exports nowhere
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, True),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, True),
    ({"OTEL_TRACES_EXPORTER": "console"}, True),
    ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, False),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_SDK_DISABLED": "true"}, False),
])
def test_tracing_is_on_only_when_the_standard_variables_ask_for_an_exporter(environ, expected):
    assert setup.wanted(environ) is expected


def test_an_unknown_exporter_stops_the_process_naming_the_variable(capsys):
    with pytest.raises(SystemExit):
        setup.wanted({"OTEL_TRACES_EXPORTER": "jaeger"})
    assert "OTEL_TRACES_EXPORTER" in capsys.readouterr().err


def test_each_role_is_its_own_service():
    assert setup.service_name({}, "worker") == "conveyor-worker"
    assert setup.service_name({"OTEL_SERVICE_NAME": "shop"}, "web") == "shop-web"


def test_off_the_environment_sets_nothing_up():
    assert setup.setup("worker", {}) is False
    assert not tracing.on


# --- log lines ---------------------------------------------------------------------------------------


def test_a_json_log_line_written_in_a_span_carries_its_trace_and_span_ids():
    import logging

    from project.logs import JobContext, JsonFormatter

    provider = TracerProvider()
    tracing.enable(provider)
    try:
        with provider.get_tracer("t").start_as_current_span("conveyor.run") as run:
            record = logging.LogRecord("conveyor.runner", logging.INFO, __file__, 1, "job %s failed", (7,), None)
            JobContext().filter(record)
        line = json.loads(JsonFormatter().format(record))
    finally:
        tracing.disable()
    context = run.get_span_context()
    assert (line["trace_id"], line["span_id"]) == (format(context.trace_id, "032x"), format(context.span_id, "016x"))
    # and off, a line has neither
    record = logging.LogRecord("conveyor.runner", logging.INFO, __file__, 1, "job %s failed", (7,), None)
    JobContext().filter(record)
    assert "trace_id" not in json.loads(JsonFormatter().format(record))


def test_a_block_under_a_restored_context_carries_its_baggage_into_what_it_captures():
    # given a stored context with baggage, restored (as the runner does for a run)
    provider = TracerProvider()
    tracing.enable(provider)
    try:
        parent = tracing.parent({"traceparent": PARENT, "baggage": "tenant=acme"})
        # when a span runs under it and captures the context (as an enqueue in the run does)
        with tracing.span("conveyor.run", context=parent):
            captured = tracing.capture()
        after = tracing.capture()
    finally:
        tracing.disable()
    # then the capture is the run's span in the same trace, with the baggage; after it, nothing
    assert captured["traceparent"].split("-")[1] == PARENT.split("-")[1] and captured["baggage"] == "tenant=acme"
    assert after is None
