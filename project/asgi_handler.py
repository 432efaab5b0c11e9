"""Django's ASGI handler, less the reference cycles it leaves per request (project/asgi.py serves it).

Every request through Django's `ASGIHandler` under uvicorn left about 130 objects in reference
cycles, which reference counting never frees: only the collector does, and once they reach its
oldest generation, only a full pass (tens to hundreds of ms with 1,000 open streams, every request
in flight stalled: bench.streams, issue 27; docs/streams.md). A stream's request lives long
enough to get there; ordinary requests' cycles besides bring the passes on sooner. The cycles, found
with `gc.DEBUG_SAVEALL` and the strongly connected components of the garbage, each broken here:

- `handle()`'s disconnect listener ends by raising `RequestAborted`, which `handle()` re-raises to
  ignore it (`task.result()`): the exception's traceback then holds `handle()`'s frame, whose
  `tasks` list holds the task, which holds the exception. That frame holds everything of the
  request (the request, the response, uvicorn's cycle, its send and receive, the contexts): ~105
  of the ~130 objects. Here the listener returns instead (the same outcome: `handle()` ignores
  the abort either way);
- the request and what the middleware hang on it that refers back to it (the messages storages,
  `request.auser`'s partial, a lazy `request.user`): ~50 objects. Cleared when Django closes the
  request (the response's last closer; nothing reads the request after it);
- the request's own `DatabaseWrapper` (Django's are per thread, and under ASGI each request's sync
  parts run in a thread of the request's own; each of the wrapper's helpers, `ops`, `features`,
  ..., refers back to it): ~15 objects. When the request has finished (Django's `request_finished`,
  in that thread, after `close_old_connections` gave its connection back to the pool) the wrapper
  leaves the thread's storage and, if nothing else holds it, its attributes are cleared. A stream
  lets its thread go early (jobs/interfaces/streams.py): it does the same there.

Its middleware chain: Django's, from the same MIDDLEWARE, with each run of plain sync middleware
as one layer, one thread hop each way instead of one per method (project/onehop.py).

In a server process (project/asgi.py calls `quiet_request_started`), Django's two receivers of
`request_started` are disconnected: they act on the database connections of the thread they run
in, which under this handler is the request's own thread, holding none at its start (a new
thread, or one whose last request left none: project/request_threads.py ends any other), so they
have nothing to do, and sending the signal to sync
receivers costs a thread hop per request. `request_finished` keeps its receivers (the
connection goes back to the pool there).

Left (Python's and Django's own, ~10 objects): asyncio's socket transport refers to itself (its read
callback, a bound method) and the SQL compiler makes a self-referring closure per query.

And a stream (`DetachedStreamingResponse`: a body that needs nothing of its request) is sent
detached: once its headers are sent, Django's part of the request ends as for any response (the
response closed, the request with it, `request_finished`, the request's context and thread), and
its body is sent with only the body, uvicorn's `receive` and `send` and one task listening for the
client's disconnect held. Under Django's handler an open stream held ~175 objects of Django's and
asyncio's for its whole life (the request and what the middleware hung on it, the response,
`handle()`'s two tasks and their `asyncio.wait`, the contexts), each walked by every pass of the
collector that reached them: with 1,000 streams opened together, the first middle-generation pass
after them walked ~30,000 objects, ~10 ms of the loop (bench.streams, issue 27).
"""
from __future__ import annotations

import asyncio
import sys
from typing import Any, AsyncIterator, Awaitable, Callable

from asgiref.sync import SyncToAsync, ThreadSensitiveContext
from django.core.handlers.asgi import ASGIHandler, ASGIRequest
from django.core.signals import request_finished, request_started
from django.db import close_old_connections, connections, reset_queries
from django.http import StreamingHttpResponse

from project import request_threads
from project.onehop import OneHopMiddleware


class ClosingASGIRequest(ASGIRequest):
    """A request whose attributes go when Django closes it, and the cycles through it with them."""

    def close(self) -> None:
        try:
            super().close()
        finally:
            # The last of the response's closers (BaseHandler.get_response appends it): nothing
            # reads the request after it. `request.close()` again finds nothing to close.
            self.__dict__.clear()
            self._stream = _CLOSED


class _Closed:
    """The request's body stream, after the request: closing it again does nothing."""

    def close(self) -> None:
        pass


_CLOSED = _Closed()


class DetachedStreamingResponse(StreamingHttpResponse):
    """A streaming response whose body (an async iterator of bytes) needs nothing of its request or
    of this response once its headers are sent: the servers' handler then ends the request as for
    any response and sends the body alone (`Handler.__call__`). Elsewhere (Django's own handler,
    its test client) a StreamingHttpResponse like any other."""


Message = dict[str, Any]
Send = Callable[[Message], Awaitable[None]]
Receive = Callable[[], Awaitable[Message]]


class _Detaching:
    """uvicorn's `send`, as `handle()` gets it: where `send_response` leaves a detached body."""

    __slots__ = ("send", "body", "charset")

    def __init__(self, send: Send) -> None:
        self.send = send
        self.body: AsyncIterator[Any] | None = None
        self.charset = "utf-8"

    def __call__(self, message: Message) -> Awaitable[None]:
        return self.send(message)


class Handler(OneHopMiddleware, ASGIHandler):
    """`django.core.asgi.get_asgi_application()`'s handler, its per-request cycles broken, its
    plain sync middleware run in one thread hop each way (project/onehop.py) and a
    `DetachedStreamingResponse`'s body sent once the request has ended."""

    request_class = ClosingASGIRequest

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        """Django's, its request's sync parts in a thread used again by later requests
        (project/request_threads.py) instead of a new one per request; and then a detached
        stream's body (`send_response` left it), once the request and its thread are let go."""
        if scope["type"] != "http":  # (as Django's)
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        detaching = _Detaching(send)
        executor = request_threads.take()
        context = ThreadSensitiveContext(executor=executor)
        try:
            async with context:
                await self.handle(scope, receive, detaching)
                # A stream that let the thread go (jobs/interfaces/streams.py) and a sync call after it
                # left another executor in the context's place: asgiref leaves a given one's to its owner.
                other = SyncToAsync.context_to_thread_executor.get(context)
                if other is not None and other is not executor:
                    other.shutdown(wait=False)
        finally:
            request_threads.give_back(executor)
        del context, executor
        body, charset = detaching.body, detaching.charset
        if body is not None:
            del detaching
            await send_body(body, charset, receive, send)

    async def send_response(self, response: Any, send: Any) -> None:
        """Django's; for a detached stream, its headers only, its body left to `__call__` (after
        `handle()` has closed the response and the request: nothing of them is held)."""
        if not (isinstance(response, DetachedStreamingResponse) and response.is_async and isinstance(send, _Detaching)):
            return await super().send_response(response, send)
        headers = [
            (header.encode("ascii") if isinstance(header, str) else bytes(header),
             value.encode("latin1") if isinstance(value, str) else bytes(value))
            for header, value in response.items()
        ]
        headers += [(b"Set-Cookie", c.output(header="").encode("ascii").strip()) for c in response.cookies.values()]
        await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
        # The iterator as the middleware left it (Django's own `aiter(response)` would hold the
        # response: it maps each part with `response.make_bytes`, done here by `send_body`).
        send.body, send.charset = response._iterator, response.charset  # noqa: SLF001

    def __init__(self) -> None:
        super().__init__()
        # After Django's close_old_connections (connected when django.db was imported).
        request_finished.connect(_release_connections, dispatch_uid="conveyor-release-connections")

    async def listen_for_disconnect(self, receive: Any) -> None:
        """Django's, returning on the disconnect instead of raising `RequestAborted` (which
        `handle()` ignores: the same outcome, no traceback holding `handle()`'s frame)."""
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        # As Django's: this should never happen.
        raise AssertionError(f"Invalid ASGI message after request body: {message['type']}")


async def send_body(body: AsyncIterator[Any], charset: str, receive: Receive, send: Send) -> None:
    """A detached stream's body, until it ends or the client goes (`receive` says `http.disconnect`:
    the body is cancelled where it waits, as Django cancels a view's task on a disconnect)."""
    over = False
    gone: asyncio.Timeout | None = None
    try:
        async with asyncio.timeout(None) as gone:
            def disconnected(_: object) -> None:
                if not over:  # (the body may have ended while this callback was scheduled)
                    gone.reschedule(-1.0)  # now: the task is cancelled where it waits

            listening = asyncio.ensure_future(receive())
            listening.add_done_callback(disconnected)
            try:
                async for part in body:
                    await send({"type": "http.response.body", "body": _as_bytes(part, charset), "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            finally:
                over = True
                listening.cancel()
                await body.aclose()  # type: ignore[attr-defined]
    except TimeoutError:
        if gone is None or not gone.expired():
            raise  # (the body's own)


def _as_bytes(part: Any, charset: str) -> bytes:
    """Django's `HttpResponse.make_bytes`, without the response."""
    if isinstance(part, (bytes, memoryview)):
        return bytes(part)
    if isinstance(part, str):
        return part.encode(charset)
    return str(part).encode(charset)


def _release_connections(**kwargs: Any) -> None:
    release_connections()


def release_connections() -> None:
    """This thread's database wrappers whose connections are closed (back in the pool) out of its
    storage, their cycles broken where nothing else holds them. Call it where the thread's work for
    the request is over: a later query makes a new wrapper, as in a new thread.

    A wrapper still connected (a transaction left open) stays as it is: Django closes it."""
    storage = connections._connections  # noqa: SLF001 - Django keeps its per-thread wrappers there
    for alias in connections:
        wrapper = getattr(storage, alias, None)
        if wrapper is None:
            continue
        if wrapper.connection is not None:
            request_threads.mark_dirty()  # this thread is not used for another request
            continue
        delattr(storage, alias)
        if sys.getrefcount(wrapper) == 2 + _back_references(wrapper):  # this name, the call's argument
            wrapper.__dict__.clear()
        del wrapper


def _back_references(wrapper: Any) -> int:
    """How many of the wrapper's own helpers refer to it (`ops.connection`, the errors wrapper's
    `wrapper`, ...): with none other, only its cycle holds it."""
    count = 0
    for value in wrapper.__dict__.values():
        attributes = getattr(value, "__dict__", None)
        if attributes:
            count += sum(1 for each in attributes.values() if each is wrapper)
    return count


def quiet_request_started() -> None:
    """Disconnect Django's `request_started` receivers, which have nothing to do under this
    handler: `close_old_connections` and `reset_queries` act on the calling thread's connections,
    and the signal reaches them in the request's thread, which has none (a new thread, or one
    that project/request_threads.py gives again only when its last request left none; a connection left
    by a request is closed by `request_finished`, in that request's thread, CONN_MAX_AGE being 0
    in a server: project/settings.py). Sent to no sync receiver, the signal makes no thread hop
    (Signal.asend). For the servers' process only: Django's test client and WSGI reuse a thread."""
    request_started.disconnect(close_old_connections)
    request_started.disconnect(reset_queries)


def restore_request_started() -> None:
    """The receivers `quiet_request_started` disconnected, back (tests)."""
    request_started.connect(reset_queries)
    request_started.connect(close_old_connections)
