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


def _exempt_view(request: HttpRequest) -> HttpResponse:
    CALLS.append("exempt view")
    return HttpResponse("exempt")


_exempt_view.csrf_exempt = True  # type: ignore[attr-defined]

def _session_view(request: HttpRequest) -> HttpResponse:
    request.session["seen"] = 1  # SessionMiddleware saves it: I/O
    return HttpResponse("session")


def _message_view(request: HttpRequest) -> HttpResponse:
    from django.contrib import messages

    messages.info(request, "stored")  # MessageMiddleware stores it
    return HttpResponse("message")


def _csrf_token_view(request: HttpRequest) -> HttpResponse:
    from django.middleware.csrf import get_token

    return HttpResponse(get_token(request)[:0] + "token")  # CSRF's cookie set on the way out


urlpatterns = [
    path("probe", _view), path("exempt", _exempt_view), path("session", _session_view), path("message", _message_view),
    path("csrf", _csrf_token_view),
]


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


class NoView(MiddlewareMixin):
    """A plain middleware without process_view (a group's only view check is then another's)."""

    def process_request(self, request: HttpRequest) -> None:
        CALLS.append("NoView.request")

    def process_response(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        CALLS.append("NoView.response")
        response["X-NoView"] = "1"
        return response


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


def _request(app: Any, path_: str, query: str = "", headers: list[tuple[bytes, bytes]] | None = None,
             method: str = "GET", body_in: bytes = b"", host: bytes = b"localhost") -> tuple[int, dict, bytes, int]:
    """A request through `app` as a server sends it: status, headers, body and the sync_to_async calls made."""
    calls = {"hops": 0}
    original = sync.SyncToAsync.__call__

    async def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls["hops"] += 1
        return await original(self, *args, **kwargs)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
        "path": path_, "raw_path": path_.encode(), "query_string": query.encode(), "root_path": "",
        "headers": [(b"host", host), *(headers or [])], "client": ("127.0.0.1", 1234), "server": ("127.0.0.1", 80),
    }

    async def run() -> tuple[int, dict, bytes]:
        communicator = ApplicationCommunicator(app, scope)
        await communicator.send_input({"type": "http.request", "body": body_in, "more_body": False})
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


def test_a_static_file_is_sent_from_the_loop_in_large_reads_without_djangos_sync_iterator_warning() -> None:
    # A live server's log: "StreamingHttpResponse must consume synchronous iterators in order to
    # serve them asynchronously" on the first static file of each process, and a thread hop per
    # 4 KiB block of WhiteNoise's FileResponse (Swagger UI's bundle: hundreds of hops)
    import warnings

    from django.contrib.staticfiles import finders

    from project.asgi_handler import Handler

    path_ = "/static/ninja/swagger-ui-bundle.js"
    expected = open(finders.find(path_.removeprefix("/static/")), "rb").read()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        status, headers, body, hops = _request(Handler(), path_)
    assert (status, body) == (200, expected) and headers["content-length"] == str(len(expected))
    assert not [w for w in caught if "synchronous iterators" in str(w.message)]
    assert hops < 30, hops  # 13 here: 7 reads of 256 KiB and the request's own; one per 4 KiB block was ~380
    # and a range is still the range, a revalidation a 304 with no body (and no warning either)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        status, _, body, _ = _request(Handler(), path_, headers=[(b"range", b"bytes=10-99")])
        assert (status, body) == (206, expected[10:100])
        status, _, body, _ = _request(Handler(), path_, headers=[(b"if-none-match", headers["etag"].encode())])
        assert (status, body) == (304, b"")
    assert not [w for w in caught if "synchronous iterators" in str(w.message)]


SECURITY_CASES = [
    ("", {}),  # headers added on the way out (nosniff, referrer policy)
    ("", {"SECURE_SSL_REDIRECT": True}),  # process_request answers: a redirect to https
    ("", {"SECURE_SSL_REDIRECT": True, "ALLOWED_HOSTS": ["elsewhere"]}),  # get_host raises: Django's 400
    ("answer=A.request", {"SECURE_HSTS_SECONDS": 60}),
    ("raise=view", {}),
]


@pytest.mark.parametrize(("query", "more"), SECURITY_CASES)
def test_security_middleware_runs_on_the_loop_and_answers_as_in_a_thread(query: str, more: dict) -> None:
    middleware = ["django.middleware.security.SecurityMiddleware", *PROBE_MIDDLEWARE]
    with override_settings(MIDDLEWARE=middleware, ROOT_URLCONF=__name__, DEBUG=False, **more):
        seen = {}
        for name, handler_class in (("django", ASGIHandler), ("grouped", Grouped)):
            CALLS.clear()
            status, headers, body, hops = _request(handler_class(), "/probe", query)
            seen[name] = (status, {k: v for k, v in headers.items() if k not in ("date",)}, body, list(CALLS), hops)
    django_answer, ours = seen["django"], seen["grouped"]
    assert ours[:4] == django_answer[:4], seen
    assert ours[4] <= django_answer[4] - 2 or django_answer[0] == 400, seen  # its two hops gone
    assert any(isinstance(group, type) and issubclass(group, onehop.OnLoop) for group in onehop.GROUPS.values())


CSRF_CASES = [
    ("GET", "/probe", b""),  # a safe method: its process_view on the loop
    ("POST", "/probe", b"x=1"),  # no token: CSRF's 403, decided in a thread (it reads the body)
    ("POST", "/exempt", b"x=1"),  # an exempt view: on the loop
]


def _three_ways(middleware: list[str], method: str, path_: str, body: bytes,
                monkeypatch: pytest.MonkeyPatch) -> tuple[tuple, tuple, tuple]:
    """A form request through Django's handler, the grouped one, and the grouped one with CSRF's
    process_view not known to read nothing (in a thread): (status, x- headers, body, calls, hops) each."""
    form = [(b"content-type", b"application/x-www-form-urlencoded")]
    seen = []
    with override_settings(MIDDLEWARE=middleware, ROOT_URLCONF=__name__, DEBUG=False):
        for handler_class, always_a_hop in ((ASGIHandler, False), (Grouped, False), (Grouped, True)):
            if always_a_hop:
                monkeypatch.setattr(onehop, "VIEW_ON_LOOP", {})
            CALLS.clear()
            status, headers, answer, hops = _request(handler_class(), path_, headers=form, method=method, body_in=body)
            seen.append((status, {k: v for k, v in headers.items() if k.startswith("x-")}, answer, list(CALLS), hops))
    return seen[0], seen[1], seen[2]


@pytest.mark.parametrize(("method", "path_", "body"), CSRF_CASES)
def test_a_group_with_view_checks_not_known_to_read_nothing_runs_them_in_a_thread(
    method: str, path_: str, body: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    middleware = ["django.middleware.csrf.CsrfViewMiddleware", *PROBE_MIDDLEWARE]
    django_answer, ours, hopping = _three_ways(middleware, method, path_, body, monkeypatch)
    assert ours[:4] == django_answer[:4] == hopping[:4], (django_answer, ours, hopping)
    assert django_answer[0] == (403 if path_ == "/probe" and method == "POST" else 200), (django_answer, ours, hopping)
    # the probe's members have a process_view of their own, not known to read nothing: a hop as before
    assert ours[4] == hopping[4], (django_answer, ours, hopping)


@pytest.mark.parametrize(("method", "path_", "body"), CSRF_CASES)
def test_a_group_whose_only_view_check_is_csrfs_takes_no_hop_for_it_where_csrf_reads_nothing(
    method: str, path_: str, body: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    middleware = ["django.middleware.csrf.CsrfViewMiddleware", f"{__name__}.NoView"]
    django_answer, ours, hopping = _three_ways(middleware, method, path_, body, monkeypatch)
    assert ours[:4] == django_answer[:4] == hopping[:4], (django_answer, ours, hopping)
    rejected = path_ == "/probe" and method == "POST"
    assert django_answer[0] == (403 if rejected else 200), (django_answer, ours, hopping)
    # a POST that CSRF must check (it reads the body) still goes to a thread; the others do not
    assert ours[4] == hopping[4] - (0 if rejected else 1), (django_answer, ours, hopping)


@pytest.fixture
def servers_handler() -> Any:
    """The servers' handler as project/asgi.py sets it up (request_started quiet), undone after."""
    from django.core.signals import request_finished

    from project import asgi_handler

    asgi_handler.quiet_request_started()
    yield asgi_handler.Handler
    asgi_handler.restore_request_started()
    request_finished.disconnect(dispatch_uid="conveyor-release-connections")


@pytest.mark.django_db(transaction=True, databases="__all__")
def test_get_job_through_the_servers_handler_takes_two_thread_hops_and_answers_as_djangos(
    servers_handler: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from django.db import connections

    from api.auth import issue_token
    from tests.factories import api_token as superuser_token

    for alias in connections:  # as in a server (CONN_MAX_AGE 0)
        monkeypatch.setitem(connections.settings[alias], "CONN_MAX_AGE", 0)
    token = superuser_token()
    from django.contrib.auth import get_user_model

    emitter = issue_token(get_user_model().objects.get(username="admin@example.com"), "events:emit")
    job = enqueue("examples.echo", {"n": 1}).id
    cases = {  # path, bearer: the answers Django's own handler gives are the oracle
        "found": (f"/api/jobs/{job}", token),
        "unknown id": (f"/api/jobs/{job + 1000}", token),
        "no token": (f"/api/jobs/{job}", None),
        "wrong token": (f"/api/jobs/{job}", "cvy_nothing"),
        "another scope": (f"/api/jobs/{job}", emitter),
    }
    expected = {"found": 200, "unknown id": 404, "no token": 401, "wrong token": 401, "another scope": 403}
    for name, (path_, bearer) in cases.items():
        auth = [(b"authorization", f"Bearer {bearer}".encode())] if bearer else []
        djangos = _request(ASGIHandler(), path_, headers=auth)
        ours = _request(servers_handler(), path_, headers=auth)
        assert ours[0] == djangos[0] == expected[name], (name, djangos, ours)
        assert ours[2] == djangos[2], (name, djangos, ours)
        if name == "found":
            # the token's check with the row's read, the response's close (the middleware on the
            # loop): a hop more fails this (docs/performance.md, "HTTP under load")
            assert ours[3] == 2, (djangos[3], ours[3])
            assert djangos[3] >= 14, djangos[3]  # (request_started quiet for both here)
    # with ?wait the row is read after the wait, in a hop of its own (the answer the same)
    waited = _request(servers_handler(), f"/api/jobs/{job}", "wait=0.01", [(b"authorization", f"Bearer {token}".encode())])
    assert waited[0] == 200 and waited[2] == _request(servers_handler(), f"/api/jobs/{job}", headers=[
        (b"authorization", f"Bearer {token}".encode())])[2]


def test_a_static_file_is_still_served_and_other_paths_take_no_whitenoise_hop(servers_handler: Any) -> None:
    from project.static import WhiteNoise

    whitenoise = WhiteNoise(lambda request: None)
    assert whitenoise.autorefresh  # (as in the bench's servers: not production)
    assert not whitenoise.may_be_file("/api/jobs/1") and not whitenoise.may_be_file("/admin/")
    assert whitenoise.may_be_file("/static/admin/css/base.css")
    status, headers, body, _ = _request(servers_handler(), "/static/admin/css/base.css")
    assert status == 200 and b"{" in body and headers["content-type"].startswith("text/css")


def test_a_token_auth_that_loads_refuses_a_sync_route() -> None:
    from django.test import RequestFactory

    from api.auth import TokenAuth

    auth = TokenAuth("jobs:read", load=lambda request: None)
    assert auth.is_async
    with pytest.raises(TypeError, match="async routes only"):
        auth(RequestFactory().get("/api/jobs/1", HTTP_AUTHORIZATION="Bearer x"))


def _djangos_run() -> list[str]:
    """The servers' run of plain middleware (project/settings.py MIDDLEWARE: Session .. XFrameOptions)."""
    from django.conf import settings

    first = settings.MIDDLEWARE.index("django.contrib.sessions.middleware.SessionMiddleware")
    last = settings.MIDDLEWARE.index("django.middleware.clickjacking.XFrameOptionsMiddleware")
    return settings.MIDDLEWARE[first:last + 1]


DJANGOS_RUN = _djangos_run()
#: view, settings: the thread hops beside those of a request whose middleware all stay on the loop
WRITES = [
    ("/probe", {}, 0),
    ("/csrf", {}, 0),  # CSRF's cookie: a header
    ("/session", {}, 1),  # the session saved: Session's process_response in a thread
    ("/message", {}, 1),  # the message stored: Messages' (and Session's after it) in a thread
    ("/probe", {"CSRF_USE_SESSIONS": True}, 2),  # CSRF reads the session: from it on, each way in a thread
    ("/probe", {"SESSION_ENGINE": "tests.integration.test_onehop"}, 1),  # an engine not known: its making in a thread
]
SessionStore = __import__("django.contrib.sessions.backends.db", fromlist=["SessionStore"]).SessionStore


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(("path_", "more", "extra_hops"), WRITES)
def test_djangos_middleware_run_on_the_loop_until_one_must_read_or_write_and_answer_as_djangos(
    path_: str, more: dict, extra_hops: int
) -> None:
    from django.contrib.sessions.models import Session

    seen = {}
    for name, handler_class, settings_ in (
        ("django", ASGIHandler, more), ("grouped", Grouped, more), ("grouped, plain", Grouped, {}),
    ):
        with override_settings(MIDDLEWARE=DJANGOS_RUN, ROOT_URLCONF=__name__, DEBUG=False, **settings_):
            status, headers, body, hops = _request(handler_class(), path_ if name != "grouped, plain" else "/exempt")
        cookies = sorted(value.split("=")[0] for key, value in headers.items() if key == "set-cookie")
        seen[name] = (status, cookies, body, hops, Session.objects.count())
    django_answer, ours, plain = seen["django"], seen["grouped"], seen["grouped, plain"]
    assert ours[:3] == django_answer[:3], seen
    if path_ == "/session":
        assert ours[4] == django_answer[4] + 1, seen  # saved by both
    # Django: a hop per method of each; grouped: none but those a member needs
    assert ours[3] == plain[3] + extra_hops, seen
    assert plain[3] == 3  # request_started's (not quiet here), the view's (a sync view) and the close's
