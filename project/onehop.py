"""Django's sync middleware under ASGI in one thread hop each way, not one per method.

Under ASGI Django runs a `MiddlewareMixin` middleware's `process_request` and `process_response`
each in `sync_to_async` (a hop from the event loop to the request's thread and back): this
project's MIDDLEWARE made 14 hops per request that way, plus one for CSRF's `process_view`. A
hop is cheap alone, but each is a wake-up of a thread and of the loop, and on a machine whose
cores are busy with jobs every wake-up may wait for a core (bench.cluster traced 18 hops per
`GET /api/jobs/{id}`, 14 of them middleware: README "HTTP under load").

`OneHopMiddleware`, mixed into the server's ASGI handler, builds the same chain from the same
MIDDLEWARE (so Django's and the admin's checks, which read that list, see what they expect), but
each run of two or more consecutive plain `MiddlewareMixin` middleware (process_request /
process_view / process_response and nothing else) becomes one layer, `OneHop`, with Django's own
semantics, those of nested `MiddlewareMixin`s each wrapped by `convert_exception_to_response`:
- `process_request`s in order, in one hop; the first that answers stops the descent, and that
  middleware's own `process_response` and the outer ones' run on its answer;
- an exception in a `process_request` or `process_response` becomes Django's answer for it
  (`response_for_exception`) and only the outer middleware's `process_response`s run on it;
- `process_response`s innermost first, in one hop; `process_view`s in order, the first answer
  wins (Django collects them from the layer, one hop).
An async view (a `?wait=` answer, a stream) is awaited on the event loop between the two hops:
no thread is held for its duration (a sync-only middleware would hold one per open stream).
The sync handler (WSGI, Django's test client) is Django's, untouched.
"""
from __future__ import annotations

from typing import Any, Callable

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.conf import settings
from django.core.exceptions import MiddlewareNotUsed
from django.core.handlers.exception import response_for_exception
from django.http import HttpRequest, HttpResponseBase
from django.utils.deprecation import MiddlewareMixin
from django.utils.module_loading import import_string

def _never_called(request: HttpRequest) -> HttpResponseBase:
    raise AssertionError("a grouped middleware's own get_response is never called")


def grouped_instances(paths: list[str]) -> list[Any]:
    """The middleware named (each `groupable`), made with a get_response they never call: only
    their process_* methods run."""
    members = []
    for path in paths:
        try:
            members.append(import_string(path)(_never_called))
        except MiddlewareNotUsed:  # as Django does: left out of the chain
            continue
    return members


class OneHop:
    """The middleware of `paths`, in that order, as one layer (a subclass per run: see groups)."""

    sync_capable = True
    async_capable = True
    paths: tuple[str, ...] = ()

    def __init__(self, get_response: Callable) -> None:
        self.get_response = get_response
        self.members = grouped_instances(list(self.paths))
        if not self.members:
            raise MiddlewareNotUsed
        self.viewers = [member.process_view for member in self.members if hasattr(member, "process_view")]
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)

    def requests(self, request: HttpRequest) -> tuple[HttpResponseBase | None, int]:
        """Every process_request in order: (an answer or None, how many members' process_response
        must run on the answer)."""
        for index, member in enumerate(self.members):
            if not hasattr(member, "process_request"):
                continue
            try:
                response = member.process_request(request)
            except Exception as exc:  # Django's layer around this member turns it into an answer
                return response_for_exception(request, exc), index
            if response is not None:
                return response, index + 1
        return None, len(self.members)

    def responses(self, request: HttpRequest, response: HttpResponseBase, ran: int) -> HttpResponseBase:
        """The process_response of the first `ran` members, innermost first."""
        for member in reversed(self.members[:ran]):
            if not hasattr(member, "process_response"):
                continue
            try:
                response = member.process_response(request, response)
            except Exception as exc:
                response = response_for_exception(request, exc)
        return response

    def process_view(self, request: HttpRequest, view: Callable, args: tuple, kwargs: dict) -> HttpResponseBase | None:
        for process_view in self.viewers:
            response = process_view(request, view, args, kwargs)
            if response is not None:
                return response
        return None

    def __call__(self, request: HttpRequest) -> Any:
        if self.async_mode:
            return self.__acall__(request)
        response, ran = self.requests(request)
        if response is None:
            response = self.get_response(request)
        return self.responses(request, response, ran)

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        response, ran = await sync_to_async(self.requests, thread_sensitive=True)(request)
        if response is None:
            response = await self.get_response(request)
        return await sync_to_async(self.responses, thread_sensitive=True)(request, response, ran)


def groupable(path: str) -> bool:
    """A plain MiddlewareMixin: its behaviour is its process_request/_view/_response alone."""
    try:
        cls = import_string(path)
    except ImportError:
        return False  # Django's own loading reports it
    return (
        isinstance(cls, type) and issubclass(cls, MiddlewareMixin)
        and cls.__call__ is MiddlewareMixin.__call__
        and getattr(cls, "__acall__", None) is MiddlewareMixin.__acall__
        and not any(hasattr(cls, name) for name in ("process_exception", "process_template_response"))
        and getattr(cls, "async_capable", False) and getattr(cls, "sync_capable", True)
    )


def grouped(paths: list[str]) -> list[str]:
    """MIDDLEWARE with each run of two or more groupable middleware replaced by the path of a
    OneHop subclass made for it (an attribute of this module, so that Django imports it by name)."""
    out: list[str] = []
    run: list[str] = []

    def close_run() -> None:
        if len(run) >= 2:
            name = f"OneHop_{len(GROUPS)}"
            GROUPS[name] = type(name, (OneHop,), {"paths": tuple(run), "__module__": __name__})
            globals()[name] = GROUPS[name]
            out.append(f"{__name__}.{name}")
        else:
            out.extend(run)
        run.clear()

    for path in paths:
        if groupable(path):
            run.append(path)
        else:
            close_run()
            out.append(path)
    close_run()
    return out


GROUPS: dict[str, type] = {}


class OneHopMiddleware:
    """Mixed into an ASGI handler: its middleware chain built with runs of plain middleware grouped."""

    def load_middleware(self, is_async: bool = False) -> None:
        if not is_async:
            super().load_middleware(is_async)  # type: ignore[misc]
            return
        # Django's load_middleware reads settings.MIDDLEWARE: give it the grouped list for the
        # time it builds the chain (once, at the handler's creation, before any request).
        original = settings.MIDDLEWARE
        settings.MIDDLEWARE = grouped(list(original))
        try:
            super().load_middleware(is_async)  # type: ignore[misc]
        finally:
            settings.MIDDLEWARE = original
