"""Every error under /api/ is JSON, whoever answered it (Django's 404 for a path that matches no
route, ninja's 405, a 500): a client of the API never has to parse an HTML page.

Sync and async (Django picks per server): under ASGI a sync-only middleware would run every
request inside it, a `?wait=` included, in a thread of its own for its whole duration."""
from __future__ import annotations

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
