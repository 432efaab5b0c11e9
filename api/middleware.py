"""Every error under /api/ is JSON, whoever answered it (Django's 404 for a path that matches no
route, ninja's 405, a 500): a client of the API never has to parse an HTML page."""
from __future__ import annotations

from http import HTTPStatus
from typing import Callable

from django.http import HttpRequest, HttpResponse, JsonResponse


def json_errors(get_response: Callable[[HttpRequest], HttpResponse]) -> Callable[[HttpRequest], HttpResponse]:
    def middleware(request: HttpRequest) -> HttpResponse:
        response = get_response(request)
        if (
            request.path.startswith(("/api/", "/auth/"))
            and response.status_code >= 400
            and not response.get("Content-Type", "").startswith("application/json")
        ):
            try:
                reason = HTTPStatus(response.status_code).phrase
            except ValueError:
                reason = response.reason_phrase
            replaced = JsonResponse({"detail": reason.lower()}, status=response.status_code)
            for header in ("Allow", "WWW-Authenticate"):
                if header in response:
                    replaced[header] = response[header]
            return replaced
        return response

    return middleware
