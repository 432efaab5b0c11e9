"""Test harness: real PostgreSQL and Redis (the embedded servers, or DATABASE_URL/REDIS_URL),
real `manage.py start` processes for every path that crosses a queue.

Importing the settings starts no server: the embedded servers are started (in a fresh short folder
for the session, made by tests/bootstrap.py) only when a test needs a database (pytest-django's
`django_db_setup`, overridden below) or Redis (the helpers of tests/support.py), and they are
stopped before the folder is removed. Unit tests start none.
"""
from __future__ import annotations

import json
import os
import shutil

import pytest

from tests.support import LiveEnv, api_client, start_servers


#: The longest files, longest first (their time in a whole loaded run, 25 s or more: the run of
#: 2026-12-06, 840 s, summed per file, its transactional teardowns as tests/conftest.py's own flush
#: now takes them): with `make test`'s `--dist loadfile --no-loadscope-reorder`, pytest-xdist hands
#: files out in this order, so the long ones start first and the many short files fill in around
#: them, and the two processes end together (a replay of that run's durations through xdist's
#: hand-out: 771 s for the longer process with this list, 780 s with the 14 files of 40 s or more
#: before it, 768 s with every file sorted). (Its default reorder puts the files with the most tests
#: first; in collection order, unit files last, a two-minute unit file ran alone at the end.)
SLOWEST_FIRST = (
    "tests/acceptance/test_hosts.py",
    "tests/acceptance/test_bench_smoke.py",
    "tests/acceptance/test_api_fuzz.py",
    "tests/acceptance/test_batch_messages_live.py",
    "tests/acceptance/test_upstream_failure_modes.py",
    "tests/acceptance/test_events_live.py",
    "tests/acceptance/test_cluster.py",
    "tests/acceptance/test_configuration.py",
    "tests/acceptance/test_roles.py",
    "tests/acceptance/test_api_docs.py",
    "tests/acceptance/test_from_celery_live.py",
    "tests/acceptance/test_flower.py",
    "tests/acceptance/test_core_defects_live.py",
    "tests/acceptance/test_jobs_live.py",
    "tests/acceptance/test_sentinel.py",
    "tests/acceptance/test_supervisor.py",
    "tests/acceptance/test_operations_browser.py",
    "tests/acceptance/test_wait_live.py",
    "tests/acceptance/test_django_tasks_live.py",
    "tests/acceptance/test_real_servers.py",
)


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """SLOWEST_FIRST's files first, then the rest in their order (acceptance, integration, unit)."""
    rank = {path: index for index, path in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))  # stable


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    from jobs.engine import cpu_policy
    from project import embedded

    # The last remover of the idle cgroup (WORKER_CPU_POLICY=idle) in this run: its workers have all
    # ended; only threads still leaving are waited for (another run's running worker keeps it).
    cpu_policy.remove_idle_cgroup(patience=0)
    embedded.stop()
    data = os.environ.get("CONVEYOR_DATA", "")
    if os.path.basename(data).startswith("cvt-"):  # made by tests/bootstrap.py
        shutil.rmtree(data, ignore_errors=True)


#: What Django's post_migrate handlers (contenttypes', auth's: the only ones here) write: rows that
#: depend only on the models, made by `migrate` when the test database is created.
KEPT_BY_THE_FLUSH = ("django_content_type", "auth_permission")

#: Tables exactly as a TRUNCATE leaves them: an empty main fork (any row written since, even one
#: rolled back, took a page) and no statistics (PostgreSQL 14+ sets reltuples to -1 on TRUNCATE;
#: ANALYZE or VACUUM set it again). Before 14 none qualifies, and every table is emptied.
UNTOUCHED_SQL = """
    SELECT relname FROM pg_class
    WHERE relname = ANY(%s) AND relkind = 'r' AND pg_table_is_visible(oid)
      AND pg_relation_size(oid) = 0 AND reltuples < 0
"""


def _flush_what_the_test_wrote(self) -> None:
    """A transactional test's teardown (TransactionTestCase._fixture_teardown): the test database
    left as Django's `flush` leaves it, every table empty but the content types and permissions,
    in fewer statements. Django's TRUNCATEs every table (30 and more, a new file for each table
    and index), then its post_migrate handlers write the content types and permissions again, the
    same rows (a hundred statements): most of an integration test's time. Here only the tables a
    test wrote to, or analyzed, are emptied (CASCADE: with those that reference them), and the
    content types and permissions stay the rows `migrate` wrote once (no test adds or removes one;
    one that did would leak it). Another backend, or available_apps / serialized_rollback: Django's."""
    from django.core.management.color import no_style
    from django.db import connections

    aliases = self._databases_names(include_mirrors=False)
    if self.available_apps is not None or self.serialized_rollback or any(connections[a].vendor != "postgresql" for a in aliases):
        return _django_fixture_teardown(self)
    for alias in aliases:
        connection = connections[alias]
        tables = connection.introspection.django_table_names(only_existing=True, include_views=False)
        tables = [table for table in tables if table not in KEPT_BY_THE_FLUSH]
        with connection.cursor() as cursor:
            cursor.execute(UNTOUCHED_SQL, [tables])
            untouched = {name for (name,) in cursor.fetchall()}
        written = [table for table in tables if table not in untouched]
        if written:
            connection.ops.execute_sql_flush(connection.ops.sql_flush(no_style(), written, reset_sequences=False, allow_cascade=True))


def pytest_configure(config: pytest.Config) -> None:
    global _django_fixture_teardown
    from django.test import TransactionTestCase

    _django_fixture_teardown = TransactionTestCase._fixture_teardown
    TransactionTestCase._fixture_teardown = _flush_what_the_test_wrote


@pytest.fixture(scope="session")
def servers() -> dict[str, str]:
    """The session's embedded PostgreSQL and Redis, started (or joined) now."""
    return start_servers()


@pytest.fixture(scope="session")
def django_db_setup(servers: dict[str, str], django_db_setup: None) -> None:
    """pytest-django's `django_db_setup` (the argument of that name: the fixture this one overrides),
    on servers started first: pytest sets a fixture's arguments up in the order they are listed."""


@pytest.fixture
def live(transactional_db: None):  # committed rows: other processes must see them
    """Start real Conveyor processes on the test database; everything is killed afterwards, at
    once (LiveEnv.discard: no drain, which proves nothing once the test is over)."""
    env = LiveEnv()
    env.flush_redis()
    yield env
    env.discard()
    env.flush_redis()


@pytest.fixture
def api():
    """call(method, path, body) -> (status, JSON body) on /api, authenticated with a real API token."""
    client = api_client()

    def call(method: str, path: str, body: object = None, raw: bytes | None = None, **extra: object):
        data = raw if raw is not None else (json.dumps(body) if body is not None else None)
        response = getattr(client, method)(f"/api{path}", data=data, content_type="application/json", **extra)
        return response.status_code, (response.json() if response.content else None)

    return call
