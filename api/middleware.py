"""Every error under /api/ is JSON, whoever answered it (Django's 404 for a path that matches no
route, ninja's 405, a 500): a client of the API never has to parse an HTML page.

Sync and async (Django picks per server): under ASGI a sync-only middleware would run every
request inside it, a `?wait=` included, in a thread of its own for its whole duration."""
from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any, Callable

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils.decorators import sync_and_async_middleware

from api.messages import no_route_detail


def _as_json(request: HttpRequest, response: HttpResponse) -> HttpResponse:
    if (
        request.path.startswith(("/api/", "/auth/"))
        and response.status_code >= 400
        and not response.get("Content-Type", "").startswith("application/json")
    ):
        try:
            reason = HTTPStatus(response.status_code).phrase
        except ValueError:
            reason = response.reason_phrase
        detail = reason.lower()
        if response.status_code == 404:  # a path that matches no route (a route's own 404 is JSON already)
            detail = no_route_detail(request.path, "/auth/docs" if request.path.startswith("/auth/") else "/api/docs")
        replaced = JsonResponse({"detail": detail}, status=response.status_code)
        for header in ("Allow", "WWW-Authenticate"):
            if header in response:
                replaced[header] = response[header]
        return replaced
    return response


@sync_and_async_middleware
def json_errors(get_response: Callable[[HttpRequest], Any]) -> Callable[[HttpRequest], Any]:
    if iscoroutinefunction(get_response):

        async def async_middleware(request: HttpRequest) -> HttpResponse:
            return _as_json(request, await get_response(request))

        return markcoroutinefunction(async_middleware)

    def middleware(request: HttpRequest) -> HttpResponse:
        return _as_json(request, get_response(request))

    return middleware


# --- Pretty JSON, when asked ---------------------------------------------------------------------
#
# Answers are one line of JSON (compact for programs). A person asks for them indented with
# `?pretty` (any value but 0/false/no) on any /api/ or /auth/ URL, or by preferring text/html
# (a browser's Accept): `curl -s "$API/types?pretty"`. The parameter is taken off the query before
# the route sees it (a route's strict query schema would refuse it). Streams are left alone.

PRETTY = "pretty"


def wants_pretty(query_value: str | None, preferred: str | None) -> bool:
    """Whether to indent: `?pretty` given (not 0/false/no), or the client prefers text/html."""
    if query_value is not None:
        return query_value.strip().lower() not in ("0", "false", "no", "off")
    return preferred == "text/html"


def _take_pretty(request: HttpRequest) -> bool:
    if not request.path.startswith(("/api/", "/auth/")):
        return False
    value = request.GET.get(PRETTY)
    if PRETTY in request.GET:
        query = request.GET.copy()
        query.pop(PRETTY)
        request.GET = query
        value = value or "1"
    return wants_pretty(value, request.get_preferred_type(["application/json", "text/html"]))


def _indented(response: HttpResponse) -> HttpResponse:
    if getattr(response, "streaming", False) or not response.get("Content-Type", "").startswith("application/json"):
        return response
    try:
        data = json.loads(response.content)
    except ValueError:
        return response
    response.content = json.dumps(data, indent=2, ensure_ascii=False).encode() + b"\n"
    if response.has_header("Content-Length"):
        response["Content-Length"] = str(len(response.content))
    return response


@sync_and_async_middleware
def pretty_json(get_response: Callable[[HttpRequest], Any]) -> Callable[[HttpRequest], Any]:
    if iscoroutinefunction(get_response):

        async def async_middleware(request: HttpRequest) -> HttpResponse:
            pretty = _take_pretty(request)
            response = await get_response(request)
            return _indented(response) if pretty else response

        return markcoroutinefunction(async_middleware)

    def middleware(request: HttpRequest) -> HttpResponse:
        pretty = _take_pretty(request)
        response = get_response(request)
        return _indented(response) if pretty else response

    return middleware
