"""ASGI entry point of the HTTP servers: gunicorn runs it with project.asgi_worker's worker class
(uvicorn's, `manage.py start`).

Why ASGI: a `GET /api/jobs/{id}?wait=` waits on the event loop (jobs/interfaces/listener.py: one listening
PostgreSQL connection per process for every wait), so open waits take no request slot and no
database connection; every other view is sync and runs in a thread of its request's own
(Django's ThreadSensitiveContext), its database connection from a small per-process pool
(project/settings.py, ASGI_SERVER).

Django's ASGI handler is project/asgi_handler.py's: Django's, less the reference cycles it left per
request (their collection stalled the loop with 1,000 open streams). Around it: the request-line limit gunicorn enforced before (its
`--limit-request-line`, the 414 the OpenAPI document names: uvicorn has none), and the ASGI
lifespan messages (Django answers HTTP only).
"""
from __future__ import annotations

import gc
import os
from typing import Any, Awaitable, Callable

# Before the settings load: they give this process a connection pool (project/settings.py).
os.environ["CONVEYOR_ASGI"] = "1"
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

import django
from django.urls import get_resolver

from project import embedded

embedded.start()  # the embedded servers, unless DATABASE_URL / REDIS_URL name others
from project import tracing  # noqa: E402

tracing.setup("web")  # OTEL_* asked for it: before Django loads its middleware (the Django instrumentation adds one)
django.setup(set_prefix=False)  # (as django.core.asgi.get_asgi_application, with the handler below)
from project.asgi_handler import Handler, quiet_request_started  # noqa: E402 - after Django's setup

# Django's ASGIHandler less the reference cycles it leaves per request (project/asgi_handler.py).
django_application = Handler()
quiet_request_started()  # nothing for them to do in a request's new thread: one thread hop less per request

from django.conf import settings  # noqa: E402
from jobs.engine import cpu_policy  # noqa: E402

# WORKER_CPU_POLICY=idle (the roles share this machine, the jobs yield to the servers): this server's
# session weighs more than the others' where the kernel's autogroup applies (root only; elsewhere nothing).
cpu_policy.favour_own_autogroup(settings.WORKER_CPU_POLICY)

from api.validation import REQUEST_LINE_LIMIT  # noqa: E402 - after Django's setup
from jobs.interfaces import listener  # noqa: E402

listener.KEEP_OPEN = True  # one server process, one loop: its listening connection stays

# The process's long-lived objects (Django, the API's routes and schemas, loaded now) out of the
# collector's reach: a full collection walks every tracked object, and with 1,000 open streams
# those passes came often enough to stall the event loop 100-150 ms mid-measurement, the p99 of
# every request with it (bench.streams, issue 27). Frozen, a pass walks only what came after.
get_resolver().url_patterns  # (the URLconf and the API it mounts, imported before the freeze)
gc.collect()
gc.freeze()
# And full collections ten times rarer. CPython considers one after every 10 collections of the
# middle generation (its third threshold) and runs it once a quarter more objects reached the
# oldest generation than the last full pass left: with 1,000 open streams (~100,000 objects per
# process, ~200 of them Django's and uvicorn's per open request) that was a ~70 ms pass every
# ~17 s, and each stalled every request in flight, enough for the p99 of ordinary requests
# (bench.streams: 2.46x with the streams open under load). With 100, a pass comes about every
# three minutes there; what only a full pass frees (cycles that outlived two younger passes)
# waits longer, a few MB (the servers' RSS in bench.streams: 290 → 274 MB).
FULL_COLLECTION_AFTER = 100  # collections of the middle generation between two full ones (CPython: 10)
gc.set_threshold(*gc.get_threshold()[:2], FULL_COLLECTION_AFTER)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

TOO_LONG = b"<html><body><h1>414 Request-URI Too Long</h1></body></html>"


def _request_line(scope: Scope) -> int:
    """`METHOD /path?query HTTP/1.1` in bytes, as the client sent it."""
    target = scope.get("raw_path") or scope["path"].encode()
    query = scope.get("query_string") or b""
    return len(scope["method"]) + 1 + len(target) + (1 + len(query) if query else 0) + 9


async def application(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await listener.aclose()  # its waits were answered when the drain began
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] == "http" and _request_line(scope) > REQUEST_LINE_LIMIT:
        await send({"type": "http.response.start", "status": 414,
                    "headers": [(b"content-type", b"text/html"), (b"content-length", str(len(TOO_LONG)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": TOO_LONG})
        return
    await django_application(scope, receive, send)
