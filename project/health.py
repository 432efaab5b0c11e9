"""Health endpoints: /health/live (the process answers) and /health/ready (its services answer)."""
from __future__ import annotations

from django.conf import settings
from django.db import connection
from django.http import HttpRequest, JsonResponse

from project.services import redis_client


def live(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok", "mode": settings.WORKER_MODE})


def _check_postgres() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


def _check_redis() -> None:
    redis_client().ping()


def ready(request: HttpRequest) -> JsonResponse:
    """200 when PostgreSQL and Redis both answer; 503 naming each part that does not."""
    failing = {}
    for name, check in (("postgres", _check_postgres), ("redis", _check_redis)):
        try:
            check()
        except Exception as exc:  # any failure of a dependency is a "not ready" answer
            failing[name] = f"{type(exc).__name__}: {exc}".strip()[:300]
            if name == "postgres":
                connection.close()
    if failing:
        return JsonResponse({"status": "unavailable", "failing": failing}, status=503)
    return JsonResponse({"status": "ok", "postgres": "ok", "redis": "ok"})
