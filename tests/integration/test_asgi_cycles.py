"""The web servers' ASGI handler (project/asgi_handler.py) leaves no reference cycles per request.

Each request through Django's own handler left ~130 objects that only the collector frees (issue
27: with 1,000 streams opened and closed, full passes of 80-200 ms stalled the servers' loops).
These drive a request through the handler as uvicorn does (ASGI messages, the disconnect after
the response) with the collector off, then collect with `gc.DEBUG_SAVEALL` and look at what was
unreachable: what reference counting could not free. Django's own handler is the control: the
same probe finds its cycles.
"""
from __future__ import annotations

import asyncio
import collections
import gc
from typing import Any, Awaitable, Callable

import pytest

from tests.support import asgi_get, in_server_loop
from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIHandler
from django.core.signals import request_finished
from django.db import connections

from jobs import enqueue
from jobs.engine import store
from jobs.interfaces import listener, streams
from project.asgi_handler import Handler
from tests.factories import api_token

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

#: The objects of a request's cycles under Django's own handler (one of each per request).
REQUEST_CYCLES = (
    "ASGIRequest", "DatabaseWrapper", "DatabaseOperations", "RequestAborted", "FallbackStorage", "ResolverMatch",
    "Task", "SpooledTemporaryFile",
)


@pytest.fixture
def production_connections(monkeypatch: pytest.MonkeyPatch) -> None:
    """As in a web server process: each request's connection closed at its end (there: back to the
    pool; CONN_MAX_AGE 0), streams giving theirs back at once (settings.ASGI_SERVER), and the
    streams' listening connection kept open (project/asgi.py; opened once, not per stream)."""
    from django.conf import settings

    for alias in connections:
        monkeypatch.setitem(connections.settings[alias], "CONN_MAX_AGE", 0)
    monkeypatch.setattr(settings, "ASGI_SERVER", True)
    monkeypatch.setattr(listener, "KEEP_OPEN", True)


@pytest.fixture
def servers_handler() -> Any:
    """The servers' handler class; what making one connects is disconnected after the test."""
    yield Handler
    request_finished.disconnect(dispatch_uid="conveyor-release-connections")


async def _get(app: Callable[..., Awaitable[None]], path: str, token: str) -> tuple[int, bytes]:
    """`GET path` through `app` as uvicorn sends it, with the token."""
    return await asgi_get(app, path, [(b"authorization", f"Bearer {token}".encode())])


async def _cyclic_garbage(app: Any, paths: list[str], token: str) -> collections.Counter[str]:
    """The objects that `GET` of each path through `app` left which only the collector frees, by
    type name."""
    gc.collect()
    gc.disable()
    try:
        for path in paths:
            status, body = await _get(app, path, token)
            assert status == 200, body
        await asyncio.sleep(0.05)  # (a stream's watcher lets its row go)
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
    finally:
        gc.set_debug(0)
        found = collections.Counter(type(each).__name__ for each in gc.garbage)
        gc.garbage.clear()
        gc.enable()
    return found


in_loop = in_server_loop


@in_loop
async def test_an_api_request_through_the_servers_handler_leaves_no_reference_cycle(
    servers_handler, production_connections
):
    # given a job and a token
    token = await sync_to_async(api_token)()
    job = await sync_to_async(enqueue)("examples.echo", {"n": 1})
    paths = [f"/api/jobs/{job.pk}"] * 3
    djangos_handler = ASGIHandler()
    await _get(djangos_handler, paths[0], token)  # (the first request imports and caches what it needs)

    # when three requests of its row go through Django's handler, then through the servers'
    djangos = await _cyclic_garbage(djangos_handler, paths, token)
    ours = await _cyclic_garbage(servers_handler(), paths, token)

    # then Django's left each request's cycles (the probe sees them)...
    missing = [name for name in REQUEST_CYCLES if djangos[name] < 3]
    assert not missing, (missing, sorted(djangos.items()))
    assert sum(djangos.values()) >= 3 * 100, djangos
    # ...and the servers' none of them: the request, its database wrapper, the disconnect listener's
    # task and its exception are freed by reference counting (the rest: the SQL compiler's closure)
    assert not any(ours[name] for name in (*REQUEST_CYCLES, "ClosingASGIRequest")), sorted(ours.items())
    assert sum(ours.values()) <= 3 * 10, sorted(ours.items())


@in_loop
async def test_a_stream_through_the_servers_handler_leaves_no_reference_cycle(servers_handler, production_connections):
    # given a job that has ended (its stream sends the end and closes) and a token
    token = await sync_to_async(api_token)()
    job = await sync_to_async(_ended_job)()
    paths = [f"/api/jobs/{job}/stream"] * 3
    handler = servers_handler()
    for path in paths[:2]:  # (the first opens the process's listening connection; its context goes with the second)
        await _get(handler, path, token)

    # when three streams of it run to their end through the servers' handler
    ours = await _cyclic_garbage(handler, paths, token)

    # then none left its request's cycles: the stream gave its thread's database wrapper back
    # before letting the thread go (streams.respond), the rest went with the request
    assert not any(ours[name] for name in (*REQUEST_CYCLES, "ClosingASGIRequest")), sorted(ours.items())


def _ended_job() -> int:
    job = enqueue("examples.echo", {"n": 2})
    store.claim(job.pk, "test/1", 30)
    store.succeed(job.pk, 1, '{"n": 2}')
    return job.pk


class _OpenStream:
    """`GET path` through `app` as uvicorn sends it, held open: the client disconnects when told
    (`disconnect()`), as a browser closing its tab."""

    def __init__(self, app: Callable[..., Awaitable[None]], path: str, token: str) -> None:
        self.messages: list[dict[str, Any]] = []
        self.received = asyncio.Event()
        self.gone = asyncio.Event()
        self._requested = False
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
            "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
            "headers": [(b"host", b"testserver"), (b"authorization", f"Bearer {token}".encode())],
            "client": ("127.0.0.1", 40000), "server": ("testserver", 80),
        }
        self.task = asyncio.ensure_future(app(scope, self._receive, self._send))

    async def _receive(self) -> dict[str, Any]:
        if not self._requested:
            self._requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def _send(self, message: dict[str, Any]) -> None:
        if not self.gone.is_set():  # (uvicorn drops what is sent after a disconnect)
            self.messages.append(message)
            self.received.set()

    @property
    def wire(self) -> str:
        return b"".join(m.get("body", b"") for m in self.messages if m["type"] == "http.response.body").decode()

    async def until(self, text: str, seconds: float = 5.0) -> None:
        async with asyncio.timeout(seconds):
            while text not in self.wire:
                self.received.clear()
                await self.received.wait()

    def disconnect(self) -> None:
        self.gone.set()


def _alive(*names: str) -> int:
    """Reachable objects of these classes: garbage an earlier test left for the collector (Django's
    own handler's cycles: the controls) is collected first, so it is not counted as held."""
    gc.collect()
    return sum(1 for each in gc.get_objects() if type(each).__name__ in names)


@in_loop
async def test_an_open_stream_through_the_servers_handler_holds_neither_its_request_nor_its_response(
    servers_handler, production_connections
):
    # given a waiting job and a token
    token = await sync_to_async(api_token)()
    job = await sync_to_async(enqueue)("examples.echo", {"n": 3})

    # when the servers' handler has sent the job's stream's headers and first event
    stream = _OpenStream(servers_handler(), f"/api/jobs/{job.pk}/stream", token)
    await stream.until("event: state")

    # then nothing of its request or response is alive while it is open...
    assert _alive("ClosingASGIRequest", "ASGIRequest", "DetachedStreamingResponse") == 0
    assert stream.messages[0]["status"] == 200
    assert (b"Content-Type", b"text/event-stream") in stream.messages[0]["headers"]
    # ...where Django's own handler (the control) holds both for as long as the stream is open
    control = _OpenStream(ASGIHandler(), f"/api/jobs/{job.pk}/stream", token)
    await control.until("event: state")
    assert _alive("ASGIRequest", "DetachedStreamingResponse") == 2

    # and when the job ends, the stream sends its end and completes the response
    await sync_to_async(_end)(job.pk)
    await stream.until("event: end")
    await asyncio.wait_for(stream.task, 5)
    assert stream.messages[-1] == {"type": "http.response.body", "body": b"", "more_body": False}
    await asyncio.wait_for(control.task, 5)


@in_loop
async def test_a_detached_stream_ends_at_once_when_its_client_disconnects(servers_handler, production_connections):
    # given a stream open through the servers' handler on a job that does not end
    token = await sync_to_async(api_token)()
    job = await sync_to_async(enqueue)("examples.echo", {"n": 5})
    stream = _OpenStream(servers_handler(), f"/api/jobs/{job.pk}/stream", token)
    await stream.until("event: state")
    assert streams.open_streams() == 1

    # when its client disconnects
    stream.disconnect()

    # then the handler returns at once (not at the next keep-alive): the stream is let go, the
    # watcher no longer follows the row, and nothing more is sent
    await asyncio.wait_for(stream.task, 1.0)
    assert streams.open_streams() == 0
    assert (streams.JOB, job.pk) not in streams.watcher().followers
    assert stream.task.exception() is None


def _end(job_id: int) -> None:
    store.claim(job_id, "test/1", 30)
    store.succeed(job_id, 1, '{"n": 3}')
