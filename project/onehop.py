"""Django's sync middleware under ASGI in one thread hop each way, not one per method.

Under ASGI Django runs a `MiddlewareMixin` middleware's `process_request` and `process_response`
each in `sync_to_async` (a hop from the event loop to the request's thread and back): this
project's MIDDLEWARE made 14 hops per request that way, plus one for CSRF's `process_view`. A
hop is cheap alone, but each is a wake-up of a thread and of the loop, and on a machine whose
cores are busy with jobs every wake-up may wait for a core (bench.cluster traced 18 hops per
`GET /api/jobs/{id}`, 14 of them middleware: docs/performance.md "HTTP under load").

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
Fewer still (issue 28): where Django's own middleware do no I/O, which their code says and tables
below name (REQUEST_ON_LOOP, RESPONSE_ON_LOOP, VIEW_ON_LOOP: a class exactly, each with the check
of when: a session to save, messages to store, CSRF's secret in the session, a POST's CSRF check
are I/O), the group runs them on the event loop itself, and from the first member that must read
or write, the rest in one hop as above. For `GET /api/jobs/{id}` that is every one of them.
A plain middleware known to do no I/O and nothing that blocks (`ON_LOOP`: Django's
SecurityMiddleware, a few header checks and settings) runs on the event loop, no hop at all,
whatever its neighbours; an exception it raises is its layer's answer as before (Django's
`convert_exception_to_response` around the layer: in a thread, it may log and render).
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


#: Plain middleware whose process_request and process_response do no I/O and cannot block (the
#: class itself at that path, not a subclass: read before adding one; each a layer of its own).
ON_LOOP = frozenset({"django.middleware.security.SecurityMiddleware"})


class OnLoop:
    """One plain middleware of ON_LOOP, run on the event loop as Django's `MiddlewareMixin` runs it
    in a thread (a subclass per middleware: see grouped)."""

    sync_capable = True
    async_capable = True
    path = ""

    def __init__(self, get_response: Callable) -> None:
        self.get_response = get_response
        members = grouped_instances([self.path])
        if not members:
            raise MiddlewareNotUsed
        self.member = members[0]
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self.async_mode:
            return self.__acall__(request)
        response = self._request(request)
        return self._response(request, response or self.get_response(request))

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        # MiddlewareMixin.__acall__ without its two sync_to_async. An exception is this layer's
        # answer, as it is the member's there: Django wraps each layer of the chain, this one too,
        # in convert_exception_to_response (which sends it to a thread: response_for_exception).
        response = self._request(request)
        return self._response(request, response or await self.get_response(request))

    def _request(self, request: HttpRequest) -> HttpResponseBase | None:
        return self.member.process_request(request) if hasattr(self.member, "process_request") else None

    def _response(self, request: HttpRequest, response: HttpResponseBase) -> HttpResponseBase:
        if hasattr(self.member, "process_response"):
            return self.member.process_response(request, response)
        return response


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
        #: For each viewer, when it does no I/O (None: never known): then the views run on the loop.
        self.view_on_loop = [_view_on_loop(member) for member in self.members if hasattr(member, "process_view")]
        #: For each member, when its process_request / process_response does no I/O (None: never known).
        self.request_on_loop = [_known(member, REQUEST_ON_LOOP) for member in self.members]
        self.response_on_loop = [_known(member, RESPONSE_ON_LOOP) for member in self.members]
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)
            # A coroutine function: Django awaits it as it is, no sync_to_async of its own.
            self.process_view = self.aprocess_view  # type: ignore[method-assign]

    def requests(self, request: HttpRequest, start: int = 0) -> tuple[HttpResponseBase | None, int]:
        """Every process_request in order (from the member `start` on): (an answer or None, how
        many members' process_response must run on the answer)."""
        for index, member in enumerate(self.members):
            if index < start or not hasattr(member, "process_request"):
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

    async def aprocess_view(self, request: HttpRequest, view: Callable, args: tuple, kwargs: dict) -> HttpResponseBase | None:
        """process_view in async mode: on the loop when every viewer is known to do no I/O for this
        request and view (CSRF's for a safe method or an exempt view), else in one hop."""
        if all(on_loop is not None and on_loop(request, view) for on_loop in self.view_on_loop):
            return OneHop.process_view(self, request, view, args, kwargs)
        return await sync_to_async(OneHop.process_view, thread_sensitive=True)(self, request, view, args, kwargs)

    def __call__(self, request: HttpRequest) -> Any:
        if self.async_mode:
            return self.__acall__(request)
        response, ran = self.requests(request)
        if response is None:
            response = self.get_response(request)
        return self.responses(request, response, ran)

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        response, ran = await self.arequests(request)
        if response is None:
            response = await self.get_response(request)
        return await self.aresponses(request, response, ran)

    async def arequests(self, request: HttpRequest) -> tuple[HttpResponseBase | None, int]:
        """`requests` in async mode: on the loop while each member's process_request is known to
        do no I/O at its turn (REQUEST_ON_LOOP), the rest from the first that is not in one hop."""
        for index, member in enumerate(self.members):
            if not hasattr(member, "process_request"):
                continue
            on_loop = self.request_on_loop[index]
            if on_loop is None or not on_loop(request):
                return await sync_to_async(self.requests, thread_sensitive=True)(request, index)
            try:
                response = member.process_request(request)
            except Exception as exc:  # this member's answer, as in `requests` (its rendering in a thread)
                return await sync_to_async(response_for_exception, thread_sensitive=False)(request, exc), index
            if response is not None:
                return response, index + 1
        return None, len(self.members)

    async def aresponses(self, request: HttpRequest, response: HttpResponseBase, ran: int) -> HttpResponseBase:
        """`responses` in async mode: innermost first, on the loop while each member's
        process_response is known to do no I/O at its turn (RESPONSE_ON_LOOP: a session to save is
        I/O), the rest from the first that is not in one hop."""
        for index in reversed(range(ran)):
            member = self.members[index]
            if not hasattr(member, "process_response"):
                continue
            on_loop = self.response_on_loop[index]
            if on_loop is None or not on_loop(request, response):
                return await sync_to_async(self.responses, thread_sensitive=True)(request, response, index + 1)
            try:
                response = member.process_response(request, response)
            except Exception as exc:
                response = await sync_to_async(response_for_exception, thread_sensitive=False)(request, exc)
        return response


def _csrf_view_on_loop(request: HttpRequest, view: Callable) -> bool:
    """CsrfViewMiddleware.process_view returns None, having only set an attribute, before it reads
    the body, the session or anything else: for a request already accepted, an exempt view, a
    safe method (Django 5.2's code: tests/integration/test_onehop.py compares the answers)."""
    return (
        getattr(request, "csrf_processing_done", False)
        or getattr(view, "csrf_exempt", False)
        or request.method in ("GET", "HEAD", "OPTIONS", "TRACE")
    )


#: Middleware (the class itself at that path) whose process_view does no I/O for some requests.
VIEW_ON_LOOP: dict[str, Callable[[HttpRequest, Callable], bool]] = {
    "django.middleware.csrf.CsrfViewMiddleware": _csrf_view_on_loop,
}


def _view_on_loop(member: Any) -> Callable[[HttpRequest, Callable], bool] | None:
    return _known(member, VIEW_ON_LOOP)


def _known(member: Any, table: dict[str, Callable[..., bool]]) -> Callable[..., bool] | None:
    """The member's check in `table` (by the path of its very class, not a subclass'), or None."""
    for path, check in table.items():
        if type(member) is import_string(path):
            return check
    return None


# What Django 5.2's own plain middleware do at each step, read from their code (a new Django version:
# read it again; tests/integration/test_onehop.py compares every answer with Django's handler's):
# - SessionMiddleware: process_request makes the engine's SessionStore (no I/O in Django's own
#   engines' constructors: the session loads when first read); process_response saves it (I/O)
#   only when it was modified (or SESSION_SAVE_EVERY_REQUEST) and is not empty.
# - CommonMiddleware: headers, the host, APPEND_SLASH's resolution of the path: no I/O.
# - CsrfViewMiddleware: the secret from the cookie, or from the session (CSRF_USE_SESSIONS: I/O).
# - AuthenticationMiddleware: request.user made lazy (the user's read happens where it is used).
# - MessageMiddleware: makes its storage; process_response stores only messages added or read
#   (`added_new`, `used`: the session's storage is a write, the cookie's a header).
# - XFrameOptionsMiddleware: a header.
_DJANGO_SESSION_ENGINES = frozenset(
    f"django.contrib.sessions.backends.{name}" for name in ("db", "cache", "cached_db", "file", "signed_cookies")
)


def _session_request_on_loop(request: HttpRequest) -> bool:
    return settings.SESSION_ENGINE in _DJANGO_SESSION_ENGINES


def _session_response_on_loop(request: HttpRequest, response: HttpResponseBase) -> bool:
    session = getattr(request, "session", None)
    if session is None:
        return True
    return not ((session.modified or settings.SESSION_SAVE_EVERY_REQUEST) and not session.is_empty())


def _csrf_on_loop(request: HttpRequest, *response: HttpResponseBase) -> bool:
    return not settings.CSRF_USE_SESSIONS


def _messages_response_on_loop(request: HttpRequest, response: HttpResponseBase) -> bool:
    storage = getattr(request, "_messages", None)
    return storage is None or not (getattr(storage, "used", True) or getattr(storage, "added_new", True))


def _always(request: HttpRequest, *response: HttpResponseBase) -> bool:
    return True


#: Middleware (the class itself at that path) whose process_request does no I/O, when its check says so.
REQUEST_ON_LOOP: dict[str, Callable[[HttpRequest], bool]] = {
    "django.contrib.sessions.middleware.SessionMiddleware": _session_request_on_loop,
    "django.middleware.common.CommonMiddleware": _always,
    "django.middleware.csrf.CsrfViewMiddleware": _csrf_on_loop,
    "django.contrib.auth.middleware.AuthenticationMiddleware": _always,
    "django.contrib.messages.middleware.MessageMiddleware": _always,
}
#: Likewise for process_response, checked at the member's turn (an inner one may have changed what it reads).
RESPONSE_ON_LOOP: dict[str, Callable[[HttpRequest, HttpResponseBase], bool]] = {
    "django.contrib.sessions.middleware.SessionMiddleware": _session_response_on_loop,
    "django.middleware.common.CommonMiddleware": _always,
    "django.middleware.csrf.CsrfViewMiddleware": _csrf_on_loop,
    "django.contrib.messages.middleware.MessageMiddleware": _messages_response_on_loop,
    "django.middleware.clickjacking.XFrameOptionsMiddleware": _always,
}


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


def on_loop(path: str) -> bool:
    """One of ON_LOOP, as Django ships it: groupable and without a process_view."""
    return path in ON_LOOP and groupable(path) and not hasattr(import_string(path), "process_view")


def grouped(paths: list[str]) -> list[str]:
    """MIDDLEWARE with each run of two or more groupable middleware replaced by the path of a
    OneHop subclass made for it, and each of ON_LOOP by an OnLoop subclass (attributes of this
    module, so that Django imports them by name)."""
    out: list[str] = []
    run: list[str] = []

    def made(base: type, **attributes: Any) -> str:
        name = f"{base.__name__}_{len(GROUPS)}"
        GROUPS[name] = type(name, (base,), {**attributes, "__module__": __name__})
        globals()[name] = GROUPS[name]
        return f"{__name__}.{name}"

    def close_run() -> None:
        if len(run) >= 2:
            out.append(made(OneHop, paths=tuple(run)))
        else:
            out.extend(run)
        run.clear()

    for path in paths:
        if on_loop(path):
            close_run()
            out.append(made(OnLoop, path=path))
        elif groupable(path):
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
