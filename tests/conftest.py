"""Test harness: real PostgreSQL and Redis (the embedded servers, or DATABASE_URL/REDIS_URL),
real `manage.py start` processes for every path that crosses a queue.

The embedded servers live in a fresh short folder for the session (Unix socket paths are limited
to ~100 characters) and are stopped before the folder is removed.
"""
from __future__ import annotations

import os
import shutil

import pytest  # noqa: E402

from tests.support import LiveEnv  # noqa: E402

pytest_plugins: list[str] = []


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    from project import embedded

    embedded.stop()
    data = os.environ.get("CONVEYOR_DATA", "")
    if os.path.basename(data).startswith("cvt-"):  # made by tests/bootstrap.py
        shutil.rmtree(data, ignore_errors=True)


@pytest.fixture
def live(transactional_db: None, django_db_blocker: object, request: pytest.FixtureRequest):  # noqa: ANN201
    """Start real Conveyor processes on the test database; everything is stopped afterwards."""
    env = LiveEnv()
    env.flush_redis()
    yield env
    env.stop_all()
    env.flush_redis()
