"""A small OTLP/HTTP trace receiver: what a test (or the hosts run) reads processes' spans from.

The OpenTelemetry Collector's binary is not available here; this receives `POST /v1/traces`
(`application/x-protobuf`, an ExportTraceServiceRequest decoded with the official protobuf
classes of `opentelemetry-proto`) and keeps each span as a `Received`, in a thread of the process
that starts it. JSON-encoded OTLP is refused (415): the SDK's exporter sends protobuf.
"""
from __future__ import annotations

import gzip
import threading
import zlib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)


@dataclass(frozen=True)
class Received:
    """One span as an exporter sent it: ids as hex, the parent's "" for a root."""

    name: str
    trace_id: str
    span_id: str
    parent_id: str
    service: str
    attributes: dict[str, Any] = field(hash=False)
    start_ns: int = 0
    end_ns: int = 0
    status_code: int = 0  # 0 unset, 1 ok, 2 error
    kind: int = 0
    #: The resource's `host.name` (the hosts harness names each host's processes by it).
    host: str = ""


def _value(any_value: Any) -> Any:
    kind = any_value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in any_value.array_value.values]
    return getattr(any_value, kind) if kind else None


def decode(body: bytes) -> list[Received]:
    """The spans of one ExportTraceServiceRequest."""
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    spans = []
    for resource_spans in request.resource_spans:
        resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(Received(
                    name=span.name, trace_id=span.trace_id.hex(), span_id=span.span_id.hex(),
                    parent_id=span.parent_span_id.hex(), service=str(resource.get("service.name", "")),
                    attributes={a.key: _value(a.value) for a in span.attributes},
                    start_ns=span.start_time_unix_nano, end_ns=span.end_time_unix_nano,
                    status_code=span.status.code, kind=span.kind, host=str(resource.get("host.name", "")),
                ))
    return spans


class Receiver:
    """`with Receiver() as receiver:` an OTLP/HTTP endpoint at `receiver.endpoint` (loopback by
    default); `receiver.spans()` is everything received so far."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._spans: list[Received] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                # `GET /count`: how many spans were received (a receiver in a process of its own).
                if self.path != "/count":
                    self.send_error(404)
                    return
                body = str(len(receiver.spans())).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                encoding = (self.headers.get("Content-Encoding") or "").lower()
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                if self.path.rstrip("/") != "/v1/traces":
                    self.send_error(404)
                    return
                if "protobuf" not in (self.headers.get("Content-Type") or ""):
                    self.send_error(415)
                    return
                spans = decode(body)
                with receiver._lock:
                    receiver._spans.extend(spans)
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
                pass

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="otlp-receiver", daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def spans(self) -> list[Received]:
        with self._lock:
            return list(self._spans)

    def clear(self) -> None:
        with self._lock:
            self._spans.clear()

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def main(argv: list[str] | None = None) -> None:
    """`python -m hosts.otlp PORT [HOST]`: a receiver in a process of its own (a bench's, so that
    decoding the spans costs the measured process nothing); `GET /count` answers how many."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    with Receiver(args[1] if len(args) > 1 else "127.0.0.1", int(args[0])) as receiver:
        print(f"listening on {receiver.endpoint}", flush=True)
        threading.Event().wait()


if __name__ == "__main__":
    main()
