"""Health endpoints: /health/live (the process answers) and /health/ready (its services answer).

A readiness answer names the failing part and a kind (`unreachable`, `error`), never the
exception: its text can carry the database's host and user. The exception goes to the log.
"""
from __future__ import annotations

import logging

import redis
from django.conf import settings
from django.db import OperationalError, connection
from django.http import HttpRequest, JsonResponse

from project.services import redis_client

logger = logging.getLogger(__name__)

#: Failures that mean the service did not answer (refused, timed out, closed on us).
UNREACHABLE = (OperationalError, redis.ConnectionError, redis.TimeoutError, OSError)


async def live(request: HttpRequest) -> JsonResponse:
    """On the event loop under ASGI: no thread, no database, whatever else the process serves."""
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
            failing[name] = "unreachable" if isinstance(exc, UNREACHABLE) else "error"
            detail = " ".join(str(exc).split())[:500]  # one line: psycopg's messages span several
            logger.warning("not ready: %s %s (%s: %s)", name, failing[name], type(exc).__name__, detail)
            if name == "postgres":
                connection.close()
    if failing:
        return JsonResponse({"status": "unavailable", "failing": failing}, status=503)
    return JsonResponse({"status": "ok", "postgres": "ok", "redis": "ok"})
