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


#: The longest files, longest first (their time in a whole loaded run, issue 28's measure, 40 s or
#: more; unit files too: test_no_server_starts runs the unit tests again, in a process of its own):
#: with `make test`'s `--dist loadfile --no-loadscope-reorder`, pytest-xdist hands files out in
#: this order, so the long ones start first and the many short files fill in around them, and the
#: two processes end together. (Its default reorder puts the files with the most tests first; in
#: collection order, unit files last, a two-minute unit file ran alone at the end.)
SLOWEST_FIRST = (
    "tests/acceptance/test_configuration.py",
    "tests/acceptance/test_bench_smoke.py",
    "tests/acceptance/test_cluster.py",
    "tests/acceptance/test_hosts.py",
    "tests/acceptance/test_upstream_failure_modes.py",
    "tests/acceptance/test_api_fuzz.py",
    "tests/acceptance/test_batch_messages_live.py",
    "tests/acceptance/test_roles.py",
    "tests/acceptance/test_events_live.py",
    "tests/acceptance/test_from_celery_live.py",
    "tests/unit/test_no_server_starts.py",
    "tests/acceptance/test_flower.py",
    "tests/acceptance/test_wait_live.py",
    "tests/acceptance/test_core_defects_live.py",
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
