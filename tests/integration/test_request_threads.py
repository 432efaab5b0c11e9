"""The servers' request threads are used again by later requests (project/request_threads.py), except
a thread a request left holding a database connection, and a thread a stream let go.

Each request goes through the servers' handler (project/asgi_handler.py) as uvicorn sends it, its
sync parts in the request's thread; the views say which thread that was.
"""
from __future__ import annotations

import asyncio
import itertools
import threading
import time
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.core.signals import request_finished
from django.db import connection, connections, transaction
from django.http import HttpRequest, HttpResponse
from django.test import override_settings
from django.urls import path

from jobs.interfaces import streams
from project import request_threads
from project.asgi_handler import Handler
from tests.support import asgi_get


_serials = itertools.count(1)
_local = threading.local()


def _this_thread() -> str:
    """This thread's serial number (an ident may be reused by a later thread once one has ended)."""
    if not hasattr(_local, "serial"):
        _local.serial = next(_serials)
    return str(_local.serial)


def _thread(request: HttpRequest) -> HttpResponse:
    return HttpResponse(_this_thread())


def _leave_a_transaction_open(request: HttpRequest) -> HttpResponse:
    transaction.atomic().__enter__()  # a view's bug: never exited
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return HttpResponse(_this_thread())


async def _stream_like(request: HttpRequest) -> HttpResponse:
    lent = await sync_to_async(threading.get_ident)()
    streams.release_request_thread()  # as a stream does once its response has started
    await asyncio.sleep(0.2)  # (its thread ends meanwhile: its ident is not another's yet)
    return HttpResponse(str(lent))


urlpatterns = [path("thread", _thread), path("open", _leave_a_transaction_open), path("stream", _stream_like)]


@pytest.fixture
def handler(monkeypatch: pytest.MonkeyPatch) -> Any:
    for alias in connections:  # as in a server: the request's connection closed at its end
        monkeypatch.setitem(connections.settings[alias], "CONN_MAX_AGE", 0)
    with override_settings(ROOT_URLCONF=__name__, MIDDLEWARE=[]):
        yield Handler()
    request_finished.disconnect(dispatch_uid="conveyor-release-connections")


def _get(app: Any, path_: str) -> tuple[int, bytes]:
    """GET through `app` as uvicorn sends it (the disconnect after the response)."""
    return asyncio.run(asgi_get(app, path_))


def _request_threads() -> set[int]:
    return {thread.ident for thread in threading.enumerate() if thread.name.startswith("request")}


def test_requests_one_after_another_run_in_the_same_thread_and_make_none(handler: Any) -> None:
    first = _get(handler, "/thread")
    threads_after_first = _request_threads()
    answers = [_get(handler, "/thread") for _ in range(20)]
    assert first[0] == 200 and {answer for answer in answers} == {first}
    assert _request_threads() == threads_after_first


@pytest.mark.django_db(transaction=True)
def test_a_thread_left_holding_a_connection_serves_no_other_request(handler: Any) -> None:
    # given a request that left a transaction open in its thread
    status, left = _get(handler, "/open")
    assert status == 200
    # when the next requests come
    status, next_thread = _get(handler, "/thread")
    # then they run in another thread (the first one ends), which is used again
    assert status == 200 and next_thread != left
    assert _get(handler, "/thread")[1] == next_thread


def test_a_thread_a_stream_let_go_ends_and_leaves_none_behind(handler: Any) -> None:
    _get(handler, "/thread")
    before = {thread.ident for thread in threading.enumerate()}
    idle = request_threads.idle_count()
    status, lent = _get(handler, "/stream")
    time.sleep(0.2)
    assert status == 200
    after = {thread.ident for thread in threading.enumerate()}
    assert int(lent) not in after  # the stream's thread ended...
    assert after <= before  # ...and the one Django's closing of the response made too
    assert request_threads.idle_count() == idle - 1  # (the lent one was not given back)
