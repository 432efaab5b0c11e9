"""A real PgBouncer (Debian's), installed with apt-get where missing: bench/pgbouncer.py starts it."""
from __future__ import annotations

from typing import Any

from bench.pgbouncer import PgBouncer
from tests.support import debian_tool


def start(database: dict[str, Any], mode: str = "transaction", pool: int = 20) -> PgBouncer:
    """PgBouncer in `mode` in front of the test database (Django's settings of it): see bench/pgbouncer.py."""
    from bench import pgbouncer

    return pgbouncer.start(database, mode, pool, binary=debian_tool("pgbouncer", "pgbouncer"))
