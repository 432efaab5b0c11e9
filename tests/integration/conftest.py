"""Fixtures the integration modules that run the runner in this process share (by name, through
`pytest.mark.usefixtures`): an empty Redis around each test, and the heartbeat's connection ended
after the module."""
from __future__ import annotations

import pytest
from django.db import connection

from tests.support import redis_client


@pytest.fixture
def empty_redis():
    redis_client().flushall()
    yield
    redis_client().flushall()


@pytest.fixture(scope="module")
def release_the_heartbeats_connection(django_db_blocker):
    """The runner's heartbeat thread (one per process, never stopped) keeps its `claims`
    connection open once it has beaten; end that backend so the test database can be dropped.
    The thread closes its connection on its next failed beat, as after any database loss."""
    yield
    with django_db_blocker.unblock(), connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid() AND state = 'idle'"
            " AND query LIKE %s",
            ["%UPDATE jobs_job j SET lease_expires_at%"],
        )


#: What these modules mark themselves with.
RUNNER_IN_PROCESS = [
    pytest.mark.django_db(transaction=True, databases="__all__"),
    pytest.mark.usefixtures("release_the_heartbeats_connection", "empty_redis"),
]
