"""Health endpoints: /health/live (the process answers) and /health/ready (its services answer).

A readiness answer names the failing part and a kind (`unreachable`, `error`), never the
exception: its text can carry the database's host and user. The exception goes to the log.
"""
from __future__ import annotations

import logging

import psycopg
import redis
from django.conf import settings
from django.db import OperationalError, connection
from django.http import HttpRequest, JsonResponse

from project.services import redis_client

logger = logging.getLogger(__name__)

#: Failures that mean the service did not answer (refused, timed out, closed on us; a server's
#: pool that found no connection in time).
UNREACHABLE = (OperationalError, psycopg.OperationalError, redis.ConnectionError, redis.TimeoutError, OSError)


async def live(request: HttpRequest) -> JsonResponse:
    """On the event loop under ASGI: no thread, no database, whatever else the process serves."""
    return JsonResponse({"status": "ok", "mode": settings.WORKER_MODE})


#: A server's pool (project/settings.py, ASGI_SERVER) keeps trying a database that does not answer:
#: readiness waits for a connection this long, then says unreachable.
POOL_WAIT_SECONDS = 2.0


def _check_postgres() -> None:
    pool = connection.pool if connection.settings_dict.get("OPTIONS", {}).get("pool") else None
    if pool is not None:
        pool.open()  # as Django does on a first connection (a no-op once open)
        with pool.connection(timeout=POOL_WAIT_SECONDS) as pg:
            pg.execute("SELECT 1")
        return
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
