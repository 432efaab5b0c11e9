"""CORS per family of routes, through django-cors-headers' own per-request hook.

The middleware asks `check_request_enabled` for every request (and its preflight); the answer
here is whether the request's Origin is listed for the family its path belongs to:

- storefront (`STORE_CORS`): `/api/events`, where shops emit events;
- auth (`AUTH_CORS`): `/auth/`, the token exchange;
- admin (`ADMIN_CORS`): `/admin/` and the operator routes, every other path under `/api/`.
"""
from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest

STORE, ADMIN, AUTH = "store", "admin", "auth"


def family(path: str) -> str | None:
    if path == "/api/events" or path.startswith("/api/events/"):
        return STORE
    if path.startswith("/auth/"):
        return AUTH
    if path.startswith(("/api/", "/admin/")):
        return ADMIN
    return None


def origins(name: str | None) -> list[str]:
    return {STORE: settings.STORE_CORS, ADMIN: settings.ADMIN_CORS, AUTH: settings.AUTH_CORS}.get(name, [])


def allow(sender: object, request: HttpRequest, **kwargs: object) -> bool:
    origin = request.META.get("HTTP_ORIGIN")
    return bool(origin) and origin in origins(family(request.path_info))
