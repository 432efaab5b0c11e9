"""The servers' middleware chain with its plain sync middleware grouped (project/onehop.py).

Django's own ASGI handler is the oracle: the same MIDDLEWARE, the same requests, through both;
the calls the middleware see, in order, and the answers must be the same, with fewer thread hops.
"""
from __future__ import annotations

import asyncio
from typing import Any

import pytest
from asgiref import sync
from asgiref.testing import ApplicationCommunicator
from django.core.handlers.asgi import ASGIHandler
from django.http import HttpRequest, HttpResponse
from django.test import override_settings
from django.urls import path
from django.utils.deprecation import MiddlewareMixin

from jobs import enqueue
from project import onehop
from project.onehop import OneHopMiddleware
from tests.factories import api_token

CALLS: list[str] = []


class Grouped(OneHopMiddleware, ASGIHandler):
    """Django's ASGI handler with the grouping, as the servers' handler mixes it in."""


def _view(request: HttpRequest) -> HttpResponse:
    CALLS.append("view")
    if request.GET.get("raise") == "view":
        raise ValueError("from the view")
    return HttpResponse("view", headers={"X-Seen": ",".join(getattr(request, "seen", []))})


urlpatterns = [path("probe", _view)]


def _member(name: str) -> type:
    """A plain MiddlewareMixin that records its calls and, asked by the query string, answers or raises."""

    def process_request(self: Any, request: HttpRequest) -> HttpResponse | None:
        CALLS.append(f"{name}.request")
        request.seen = [*getattr(request, "seen", []), name]
        if request.GET.get("answer") == f"{name}.request":
            return HttpResponse(f"answered by {name}", status=203)
        if request.GET.get("raise") == f"{name}.request":
            raise PermissionError(name)  # Django answers 403
        return None

    def process_view(self: Any, request: HttpRequest, view: Any, args: Any, kwargs: Any) -> HttpResponse | None:
        CALLS.append(f"{name}.view")
        if request.GET.get("answer") == f"{name}.view":
            return HttpResponse(f"view answered by {name}", status=202)
        return None

    def process_response(self: Any, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        CALLS.append(f"{name}.response")
        if request.GET.get("raise") == f"{name}.response":
            raise ValueError(name)  # Django answers 500
        response[f"X-{name}"] = "1"
        return response

    return type(name, (MiddlewareMixin,), {
        "process_request": process_request, "process_view": process_view, "process_response": process_response,
        "__module__": __name__,
    })


A, B, C = _member("A"), _member("B"), _member("C")


class WithExceptions(MiddlewareMixin):
    def process_exception(self, request: HttpRequest, exception: Exception) -> None:
        return None
PROBE_MIDDLEWARE = [f"{__name__}.A", f"{__name__}.B", f"{__name__}.C"]

CASES = [
    "",  # every method of every member, then the view
    "answer=B.request",  # B answers: B's and A's process_response run, not C's, no view
    "raise=B.request",  # B raises: Django's 403, only A's process_response runs on it
    "raise=B.response",  # B's process_response raises: Django's 500, A's runs on it
    "answer=B.view",  # B's process_view answers: C's process_view and the view do not run
    "raise=view",  # the view raises: a 500 through every process_response
]


def _request(app: Any, path_: str, query: str = "", headers: list[tuple[bytes, bytes]] | None = None) -> tuple[int, dict, bytes, int]:
    """GET through `app` as a server sends it: status, headers, body and the sync_to_async calls made."""
    calls = {"hops": 0}
    original = sync.SyncToAsync.__call__

    async def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls["hops"] += 1
        return await original(self, *args, **kwargs)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
        "path": path_, "raw_path": path_.encode(), "query_string": query.encode(), "root_path": "",
        "headers": [(b"host", b"localhost"), *(headers or [])], "client": ("127.0.0.1", 1234), "server": ("127.0.0.1", 80),
    }

    async def run() -> tuple[int, dict, bytes]:
        communicator = ApplicationCommunicator(app, scope)
        await communicator.send_input({"type": "http.request", "body": b"", "more_body": False})
        start = await communicator.receive_output(10)
        body = b""
        while True:
            message = await communicator.receive_output(10)
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        await communicator.send_input({"type": "http.disconnect"})
        await communicator.wait(10)
        return start["status"], {k.decode().lower(): v.decode() for k, v in start["headers"]}, body

    sync.SyncToAsync.__call__ = counted
    try:
        status, answer_headers, body = asyncio.run(run())
    finally:
        sync.SyncToAsync.__call__ = original
    return status, answer_headers, body, calls["hops"]


@pytest.mark.parametrize("query", CASES)
def test_a_grouped_chain_calls_the_middleware_and_answers_as_djangos_own_handler_does(query: str) -> None:
    with override_settings(MIDDLEWARE=PROBE_MIDDLEWARE, ROOT_URLCONF=__name__, DEBUG=False):
        seen = {}
        for name, handler_class in (("django", ASGIHandler), ("grouped", Grouped)):
            CALLS.clear()
            status, headers, body, hops = _request(handler_class(), "/probe", query)
            seen[name] = (status, {k: v for k, v in headers.items() if k.startswith("x-")}, body, list(CALLS), hops)
    django_answer, grouped_answer = seen["django"], seen["grouped"]
    assert grouped_answer[:4] == django_answer[:4], seen
    assert grouped_answer[4] < django_answer[4], seen  # and fewer hops
    if not query:
        assert django_answer[3] == ["A.request", "B.request", "C.request", "A.view", "B.view", "C.view", "view",
                                    "C.response", "B.response", "A.response"], seen


@pytest.mark.django_db(transaction=True, databases="__all__")
def test_the_projects_middleware_take_half_the_hops_and_answer_the_same(settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from django.db import connections

    for alias in connections:  # as in a server: the request's connection closed at its end (its thread's)
        monkeypatch.setitem(connections.settings[alias], "CONN_MAX_AGE", 0)
    # The servers' MIDDLEWARE: one run of six grouped (Session ... XFrameOptions); Security, WhiteNoise,
    # CORS, the JSON-error middleware and axes stay layers of their own.
    token = api_token()
    job = enqueue("examples.echo", {"n": 1}).id
    auth = [(b"authorization", f"Bearer {token}".encode())]
    django_answer = _request(ASGIHandler(), f"/api/jobs/{job}", headers=auth)
    grouped_answer = _request(Grouped(), f"/api/jobs/{job}", headers=auth)
    ignored = {"date"}
    assert grouped_answer[0] == django_answer[0] == 200, (django_answer, grouped_answer)
    assert {k: v for k, v in grouped_answer[1].items() if k not in ignored} == {
        k: v for k, v in django_answer[1].items() if k not in ignored
    }
    assert grouped_answer[2] == django_answer[2]
    assert grouped_answer[3] <= django_answer[3] - 8, (django_answer[3], grouped_answer[3])
    grouped_runs = [getattr(group, "paths", None) for group in onehop.GROUPS.values()]
    assert tuple(settings.MIDDLEWARE[5:11]) in grouped_runs, grouped_runs


def test_the_servers_handler_groups_its_middleware() -> None:
    from project import asgi_handler

    assert issubclass(asgi_handler.Handler, OneHopMiddleware)


def test_a_middleware_that_is_more_than_its_process_methods_is_not_grouped() -> None:
    assert onehop.groupable("django.middleware.csrf.CsrfViewMiddleware")
    assert not onehop.groupable("axes.middleware.AxesMiddleware")  # its own __call__
    assert not onehop.groupable("corsheaders.middleware.CorsMiddleware")
    assert not onehop.groupable(f"{__name__}.WithExceptions")  # process_exception
    assert onehop.grouped(["django.middleware.csrf.CsrfViewMiddleware", "axes.middleware.AxesMiddleware"]) == [
        "django.middleware.csrf.CsrfViewMiddleware", "axes.middleware.AxesMiddleware",
    ]  # a run of one stays as it is
