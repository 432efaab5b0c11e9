"""Clients of the shared services, for code that needs more than Django's cache API."""
from __future__ import annotations

from typing import Any


def redis_client() -> Any:
    """The redis-py client of Django's Redis cache: REDIS_URL, the broker's server."""
    from django.core.cache import cache

    return cache._cache.get_client(write=True)  # noqa: SLF001 - Django's RedisCache keeps it there
