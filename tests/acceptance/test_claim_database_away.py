"""Issue 10 A: PostgreSQL away when a worker claims. The message must not be acked and dropped:
the worker keeps it, tries the claim again with backoff, and gives it back (requeue) if the
database stays away too long. Real worker process, real PostgreSQL made unreachable, real Redis.
"""
from __future__ import annotations

import signal
import time
from contextlib import contextmanager
from typing import Iterator

import pytest
from django.db import connection, connections
from django.db.models import Count

from examples.models import Effect
from jobs import Step, new_job
from jobs.engine import store
from jobs.models import Job, Status
from jobs.engine.publish import Message, publish
from tests.support import declared, wait_for

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True, databases="__all__")]


@contextmanager
def database_unreachable() -> Iterator[int]:
    """For the block: the test database refuses new connections and every other session on it
    (the worker's) is ended; this test's own `default` connection stays. Run from a superuser
    session on the server's `postgres` database (a database cannot lock itself out). Yields
    how many sessions were ended; connections are allowed again on leaving, even on failure."""
    import psycopg

    s = connection.settings_dict
    name = s["NAME"]
    connections["claims"].close()  # this process's other alias: it reconnects afterwards
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        mine = cursor.fetchone()[0]
    admin = psycopg.connect(
        host=s["HOST"] or None, port=s["PORT"] or None, user=s["USER"], password=s["PASSWORD"] or None,
        dbname="postgres", autocommit=True,
    )
    try:
        admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
        try:
            ended = admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> %s AND backend_type = 'client backend'",
                [name, mine],
            ).fetchone()[0]
            yield ended
        finally:
            admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')
    finally:
        admin.close()


def start_claimer(live):
    """A worker whose relay cannot rescue a lost message during a test (stale after 300 s), which
    has run a job: its pool holds open connections, about to break."""
    worker = live.start("--concurrency", "2", "--grace", "5", mode="worker", name="claimer",
                        env={"CONVEYOR_RELAY_STALE_SECONDS": "300", "CONVEYOR_TEST_APPS": "tests.crashing"})
    [warm] = store.insert([new_job(Step("examples.count", {}))])
    publish([Message.of(warm)])
    wait_for(lambda: Job.objects.filter(pk=warm.pk, status=Status.SUCCEEDED).exists(), 30, what="the warm-up job")
    return worker


def deliver_while_database_away(steps: list[Step], away: float) -> list[int]:
    """Insert pending rows, committed and marked published (the relay leaves them alone); make
    PostgreSQL unreachable for the worker; publish the rows' messages; wait `away` seconds; let
    the database answer again. Returns the rows' ids."""
    jobs = store.insert([new_job(step) for step in steps])
    assert all(job.published_at is not None for job in jobs)
    with database_unreachable() as ended:
        assert ended >= 1, "the worker held no connection: nothing was broken"
        assert publish([Message.of(job) for job in jobs]) == len(jobs)
        time.sleep(away)
    return [job.pk for job in jobs]


def statuses(ids: list[int]) -> dict[str, int]:
    return dict(Job.objects.filter(pk__in=ids).values_list("status").annotate(n=Count("id")))


def test_postgresql_away_at_claim_time_drops_no_message(live):
    # given a worker (see start_claimer)
    worker = start_claimer(live)
    try:
        # when PostgreSQL is unreachable for a few seconds while ten jobs' messages arrive
        ids = deliver_while_database_away([Step("examples.count", {}) for _ in range(10)], away=4.0)
        # then every job completes within 30 s of PostgreSQL coming back, each exactly once
        done = Job.objects.filter(pk__in=ids, status=Status.SUCCEEDED)
        wait_for(lambda: done.count() == 10, 30, interval=0.2, what=f"all 10 jobs to succeed (now {statuses(ids)})")
        assert done.filter(attempt=1).count() == 10
        runs = dict(Effect.objects.filter(job_id__in=ids).values_list("job_id").annotate(n=Count("id")))
        assert runs == {i: 1 for i in ids}
        assert "database away at claim time" in worker.log()
    finally:
        worker.signal(signal.SIGTERM)


@pytest.fixture
def short_limit():
    """`crashing.short-limit` declared in this process too (its messages carry its time limit)."""
    from tests.crashing.jobs import SHORT_LIMIT

    with declared(SHORT_LIMIT):
        yield SHORT_LIMIT


def test_postgresql_away_longer_than_the_claim_patience_gives_the_message_back(live, short_limit):
    # given a worker (see start_claimer)
    worker = start_claimer(live)
    try:
        # when PostgreSQL stays away longer than a delivery keeps its claim going (crashing.short-
        # limit: 8 s soft limit, so 2 s; examples.echo's 7.5 s took 10 s away), while four jobs'
        # messages arrive
        ids = deliver_while_database_away([Step(short_limit.name, {"n": i}) for i in range(4)], away=5.0)
        # then every job completes once the database answers, on its first attempt
        done = Job.objects.filter(pk__in=ids, status=Status.SUCCEEDED)
        wait_for(lambda: done.count() == 4, 30, interval=0.2, what=f"all 4 jobs to succeed (now {statuses(ids)})")
        assert done.filter(attempt=1).count() == 4
        # and their messages went back to the queue on the way (not dropped, not held forever)
        assert "giving its message back" in worker.log()
    finally:
        worker.signal(signal.SIGTERM)
