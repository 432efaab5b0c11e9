"""OpenTelemetry's SDK, set up at a process's start from the standard environment variables.

Off unless asked for: `OTEL_TRACES_EXPORTER` (`otlp`, `console`; `none` is off) or an OTLP
endpoint (`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`), and not
`OTEL_SDK_DISABLED=true`. Off, nothing of the SDK is imported and the engine's hot path reads one
boolean (jobs.engine.tracing.on).

On, each process role names itself: `service.name` is `OTEL_SERVICE_NAME` (default `conveyor`)
with the role after a dash (`conveyor-web`, `conveyor-worker`, `conveyor-beat`). Spans go through
a BatchSpanProcessor (its OTEL_BSP_* variables apply) to OTLP over HTTP/protobuf (the SDK's
exporter reads its own OTEL_EXPORTER_OTLP_* variables), or to the console. The sampler is the one
OTEL_TRACES_SAMPLER names (default: parent-based, always on), except that a database statement
with no parent is dropped: the heartbeat's, the relay's, the claim's own (its context is in the
row it returns) would each be a trace of one span.

Instrumented: Django (the web role: a request's server span is the parent of what it enqueues)
and psycopg (every role: the ORM's statements and those on Django cursors, as children of the
span current when they run; the store's prepared statements use cursors of their own and are
not).

Called by project/asgi.py and project/wsgi.py (before Django loads its middleware) and by
project/celery.py in a `celery worker` or `celery beat` process (before the pool forks: the SDK's
batch processor starts its thread again in each child).
"""
from __future__ import annotations

import logging
import os
import socket
from typing import Any, Mapping

from jobs.engine import tracing

log = logging.getLogger("conveyor.tracing")

ENDPOINTS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
EXPORTERS = ("otlp", "console")

_provider: Any = None


def wanted(environ: Mapping[str, str]) -> bool:
    """Whether the environment asks for tracing (a pure reading of the OTEL_* variables)."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = exporter_names(environ)
    if exporters is not None:
        return bool(exporters)
    return any(environ.get(name, "").strip() for name in ENDPOINTS)


def exporter_names(environ: Mapping[str, str]) -> list[str] | None:
    """OTEL_TRACES_EXPORTER as a list ([] for `none`), None when unset; an unknown name stops the
    process with a message naming the variable."""
    raw = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if not raw:
        return None
    names = [name.strip() for name in raw.split(",") if name.strip() and name.strip() != "none"]
    for name in names:
        if name not in EXPORTERS:
            from project.env import fail

            fail(f"OTEL_TRACES_EXPORTER={raw!r}: {name!r} is not one of {', '.join(EXPORTERS)}, none")
    return names


def service_name(environ: Mapping[str, str], role: str) -> str:
    """`OTEL_SERVICE_NAME` (default `conveyor`) and the process's role: `conveyor-worker`."""
    base = environ.get("OTEL_SERVICE_NAME", "").strip() or "conveyor"
    return f"{base}-{role}"


def setup(role: str, environ: Mapping[str, str] | None = None) -> bool:
    """Set the SDK up for this process when the environment asks for it; True when tracing."""
    global _provider
    environ = os.environ if environ is None else environ
    if _provider is not None:
        return True
    if not wanted(environ):
        return False
    protocol = environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "")).strip()
    if protocol not in ("", "http/protobuf"):
        from project.env import fail

        fail(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: Conveyor exports traces over http/protobuf only")

    from opentelemetry import trace

    provider = provider_for(role, environ)
    trace.set_tracer_provider(provider)
    _provider = provider
    tracing.enable(provider)
    _instrument(role, provider)
    log.info("tracing on: %s, exporting to %s", service_name(environ, role), ", ".join(exporter_names(environ) or ["otlp"]))
    return True


def provider_for(role: str, environ: Mapping[str, str]) -> Any:
    """The SDK's TracerProvider this process's role exports with (not made global here)."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    attributes = {"service.name": service_name(environ, role), "conveyor.role": role, "process.pid": os.getpid()}
    if "host.name=" not in environ.get("OTEL_RESOURCE_ATTRIBUTES", ""):  # one given there wins (a host in a namespace)
        attributes["host.name"] = socket.gethostname()
    resource = Resource.create(attributes)
    provider = TracerProvider(resource=resource, sampler=_sampler())
    for name in exporter_names(environ) or ["otlp"]:
        if name == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
            base = environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
            if not endpoint and base:  # the SDK's rule: the base endpoint plus the signal's path
                endpoint = base.rstrip("/") + "/v1/traces"
            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint or None)))
        else:
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    return provider


def statement_cursor(provider: Any) -> type:
    """The psycopg instrumentation's traced cursor class over psycopg's server-binding cursor, for
    the store's prepared statements (jobs.engine.store.prepared opens cursors of its own class)."""
    import psycopg
    from opentelemetry.instrumentation.psycopg import _new_cursor_factory

    return _new_cursor_factory(base_factory=psycopg.Cursor, tracer_provider=provider)


def _sampler() -> Any:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import sampling

    # OTEL_TRACES_SAMPLER(_ARG), read as the SDK's TracerProvider reads them by default.
    inner = sampling._get_from_env_or_default()  # noqa: SLF001 - the SDK's own reading, not a copy of it

    class NoLoneStatements(sampling.Sampler):
        """The environment's sampler, but a root span of kind CLIENT (a database statement with
        no span around it: the heartbeat, the relay, the claim) is dropped."""

        def should_sample(
            self, parent_context: Any, trace_id: int, name: str, kind: Any = None, attributes: Any = None,
            links: Any = None, trace_state: Any = None,
        ) -> sampling.SamplingResult:
            if kind == trace.SpanKind.CLIENT and not trace.get_current_span(parent_context).get_span_context().is_valid:
                return sampling.SamplingResult(sampling.Decision.DROP)
            return inner.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

        def get_description(self) -> str:
            return f"NoLoneStatements({inner.get_description()})"

    return NoLoneStatements()


def _instrument(role: str, provider: Any) -> None:
    from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor

    PsycopgInstrumentor().instrument(tracer_provider=provider, skip_dep_check=True)
    tracing.statement_cursor = statement_cursor(provider)
    if role == "web":
        from opentelemetry.instrumentation.django import DjangoInstrumentor

        DjangoInstrumentor().instrument(tracer_provider=provider)
