"""OpenTelemetry through the job rows: the context a job is created in, stored with its row and
restored as the parent of each of its attempts, so one request, its chain, every step, group
member and delivery, and their retries form one trace across processes and hosts.

A job crosses queues and hosts as a row, not as a Celery message, so the context travels in the
row (`jobs_job.trace_context`: the W3C `traceparent`, `tracestate` and `baggage` headers as the
configured propagator writes them, a JSON object). A retry is the same row: every attempt of a
job has the same parent, the span that created it.

Off by default, at the cost of one attribute read: `on` is False until project.tracing has set up
the SDK in this process (OTEL_* environment variables). Off, nothing here touches OpenTelemetry
beyond importing its API; `capture` returns None and `span` yields None.

The engine's spans (names are what they are; attributes `conveyor.*`):

| span | where | parent |
| `conveyor.enqueue` | creation.submit: rows inserted | the caller's (an HTTP request, a run) |
| `conveyor.wait` | runner: from due to the claim (explicit start time) | the row's stored context |
| `conveyor.claim` | runner: the claim statement (explicit times) | the row's stored context |
| `conveyor.run` | runner: one attempt (type, attempt, worker, outcome) | the row's stored context |
| `conveyor.handoff` | chains.release: a chain's next step inserted | the run that ended the step |
| `conveyor.run` (lost) | recovery: an attempt whose worker died, recorded by the reaper or hand-back | the row's stored context |
| `conveyor.event.emit` | subscribers.bus.emit | the caller's |
"""
from __future__ import annotations

import re
import time
from contextlib import contextmanager
from typing import Any, Iterator, Mapping

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace

#: True once the SDK is set up in this process (project.tracing.setup); the hot path reads only this.
on = False
_tracer: trace.Tracer = trace.NoOpTracer()
#: The psycopg instrumentation's cursor class for the store's prepared statements (set with the
#: SDK by project.tracing; None: plain psycopg cursors).
statement_cursor: type | None = None

#: The headers a stored context may hold, and the longest value kept (W3C: a traceparent is 55
#: characters; tracestate at most 32 members; baggage at most 8192 bytes).
HEADERS = ("traceparent", "tracestate", "baggage")
MAX_VALUE = 8192
TRACEPARENT = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")


_provider: Any = None


def enable(provider: trace.TracerProvider) -> None:
    """Trace with `provider` from now on in this process (project.tracing.setup; the tests)."""
    global on, _tracer, _provider
    _tracer, _provider = provider.get_tracer("conveyor"), provider
    on = True


def disable() -> None:
    global on, _tracer, statement_cursor, _provider
    on, _tracer, statement_cursor, _provider = False, trace.NoOpTracer(), None, None


def flush(timeout_ms: int = 5000) -> None:
    """Send the spans still batched now: a prefork pool process ends without atexit."""
    if on and hasattr(_provider, "force_flush"):
        _provider.force_flush(timeout_ms)


# --- The stored context: pure (de)serialisation ------------------------------------------------


def encode(carrier: Mapping[str, str]) -> dict[str, str] | None:
    """What a row stores of a propagator's carrier: the known headers, None when there is no
    valid traceparent (no span was current: nothing to join)."""
    kept = decode(carrier)
    return kept or None


def decode(stored: Any) -> dict[str, str]:
    """A stored context as a carrier for the propagator, or {} when it is not one: a row written
    by hand or by another version is ignored (its run starts a new trace), never an error."""
    if not isinstance(stored, Mapping):
        return {}
    parent = stored.get("traceparent")
    if not isinstance(parent, str) or not TRACEPARENT.match(parent) or parent.startswith("ff"):
        return {}
    kept = {"traceparent": parent}
    for name in HEADERS[1:]:
        value = stored.get(name)
        if isinstance(value, str) and value and len(value) <= MAX_VALUE:
            kept[name] = value
    return kept


def trace_id_of(stored: Any) -> str | None:
    """The 32 hex digits of a stored context's trace, for a link to a trace viewer."""
    carrier = decode(stored)
    return carrier["traceparent"][3:35] if carrier else None


# --- Capture and restore -------------------------------------------------------------------------


def capture() -> dict[str, str] | None:
    """The current context as a row stores it; None when tracing is off or no span is current."""
    if not on:
        return None
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return encode(carrier)


def parent(stored: Any) -> otel_context.Context | None:
    """The context a row was created in, as the parent of its attempt's spans (None: off, or the
    row has none: its spans start a trace of their own)."""
    if not on:
        return None
    carrier = decode(stored)
    return propagate.extract(carrier) if carrier else None


# --- Spans ---------------------------------------------------------------------------------------


@contextmanager
def span(name: str, attributes: Mapping[str, Any] | None = None, *, context: otel_context.Context | None = None,
         kind: trace.SpanKind = trace.SpanKind.INTERNAL) -> Iterator[trace.Span | None]:
    """A span made current for the block (None when tracing is off). An exception leaving the
    block is recorded on it and marks it an error."""
    if not on:
        yield None
        return
    # A restored context is made current, not only named as the parent: its baggage then goes on
    # with the block (into the rows it enqueues), as the span does.
    token = otel_context.attach(context) if context is not None else None
    try:
        with _tracer.start_as_current_span(name, context=context, kind=kind, attributes=_clean(attributes)) as current:
            yield current
    finally:
        if token is not None:
            otel_context.detach(token)


def past(name: str, start_ns: int, end_ns: int, attributes: Mapping[str, Any] | None = None,
         context: otel_context.Context | None = None, error: str = "") -> None:
    """A span of something already over (a wait, a claim, an attempt a dead worker never ended),
    with its explicit times (ns since the epoch)."""
    if not on:
        return
    done = _tracer.start_span(name, context=context, attributes=_clean(attributes), start_time=start_ns)
    if error:
        done.set_status(trace.Status(trace.StatusCode.ERROR, error))
    done.end(end_time=max(start_ns, end_ns))


def now_ns() -> int:
    return time.time_ns()


def ids() -> tuple[str, str] | None:
    """(trace_id, span_id) of the current span as hex, for log lines; None when off or none."""
    if not on:
        return None
    found = trace.get_current_span().get_span_context()
    if not found.is_valid:
        return None
    return format(found.trace_id, "032x"), format(found.span_id, "016x")


def _clean(attributes: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Attributes without None values (OpenTelemetry refuses them)."""
    if not attributes:
        return None
    return {key: value for key, value in attributes.items() if value is not None}
