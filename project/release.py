"""The release step's rules: one replica migrates at a time, and nothing else migrates.

`manage.py release` migrates, then syncs schedules, holding a session-level PostgreSQL advisory
lock (`RELEASE_LOCK`) on a connection of its own (the direct one, as the migrations:
DATABASE_DIRECT_URL): replicas that run it together take turns, the first migrates, the next ones
find nothing left to apply. A server or worker never migrates: `manage.py start` refuses to start
while migrations are pending (`pending`).
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Callable, Iterator

from django.db import DEFAULT_DB_ALIAS, connections
from django.db.migrations.executor import MigrationExecutor

from project import pooler

# A fixed key for pg_advisory_lock: the bytes "convrel" (fits PostgreSQL's signed bigint).
RELEASE_LOCK = int.from_bytes(b"convrel\0", "big")
#: How long a release waiting for another's lock sleeps between two tries.
LOCK_RETRY_SECONDS = 0.2


@contextmanager
def lock(on_wait: Callable[[], None]) -> Iterator[float]:
    """Hold the release lock; yields how many seconds it took to get it.

    The lock lives on a connection of its own (not the one migrate uses, which it may close) and
    is released when the block ends, or by PostgreSQL when this process dies (its session ends).
    `on_wait` is called once if another session holds it and this one has to wait.
    """
    # The direct connection (DATABASE_DIRECT_URL): a transaction-mode pooler would keep the
    # session's lock on a server connection this process no longer has (project/pooler.py).
    conn = connections[pooler.DIRECT].copy()
    started = time.monotonic()
    try:
        waited = False
        # Tried again and again, never waited for in a statement: a session blocked in
        # pg_advisory_lock is a transaction in progress, and the migrating replica's CREATE INDEX
        # CONCURRENTLY (0013) waits for every such one to end, while this one waits for its lock:
        # both releases hung (test_release). Idle between tries, this session holds up nothing.
        while True:
            with conn.cursor() as cursor:
                cursor.execute("SELECT pg_try_advisory_lock(%s)", [RELEASE_LOCK])
                if cursor.fetchone()[0]:
                    break
            if not waited:
                on_wait()
                waited = True
            time.sleep(LOCK_RETRY_SECONDS)
        yield time.monotonic() - started
        with conn.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s)", [RELEASE_LOCK])
    finally:
        conn.close()


class Unreachable(Exception):
    """The database did not answer: whether migrations are pending is unknown."""


def pending(connect_timeout: int = 10) -> list[str]:
    """The migrations not applied to the default database, in the order migrate would apply them."""
    from django.db import DatabaseError

    conn = connections.create_connection(DEFAULT_DB_ALIAS)
    options = {**conn.settings_dict.get("OPTIONS", {}), "connect_timeout": connect_timeout}
    conn.settings_dict = {**conn.settings_dict, "OPTIONS": options}
    try:
        try:
            conn.ensure_connection()
        except DatabaseError as exc:
            raise Unreachable(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__) from exc
        executor = MigrationExecutor(conn)
        plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
        return [f"{migration.app_label}.{migration.name}" for migration, backwards in plan]
    finally:
        conn.close()
