"""Test harness: real PostgreSQL and Redis (the embedded servers, or DATABASE_URL/REDIS_URL),
real `manage.py start` processes for every path that crosses a queue.

The embedded servers live in a fresh short folder for the session (made by tests/bootstrap.py,
loaded before pytest-django reads the settings) and are stopped before the folder is removed.
"""
from __future__ import annotations

import os
import shutil

import pytest

from tests.support import LiveEnv


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    from project import embedded

    embedded.stop()
    data = os.environ.get("CONVEYOR_DATA", "")
    if os.path.basename(data).startswith("cvt-"):  # made by tests/bootstrap.py
        shutil.rmtree(data, ignore_errors=True)


@pytest.fixture
def live(transactional_db: None):  # noqa: ANN201 - committed rows: other processes must see them
    """Start real Conveyor processes on the test database; everything is stopped afterwards."""
    env = LiveEnv()
    env.flush_redis()
    yield env
    env.stop_all()
    env.flush_redis()
