"""The job path's statements are prepared on their connection (jobs.engine.store.prepared), on the session's
real PostgreSQL: planned once per connection, their errors Django's, inside Django's transactions;
and DATABASE_PREPARED=false takes Django's own cursors."""
from __future__ import annotations

import pytest
from django.db import DataError, connections, transaction

from jobs import enqueue
from jobs.engine import runner, store
from jobs.models import Job, Status
from tests.support import redis_client

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")


@pytest.fixture(autouse=True)
def empty_redis():
    redis_client().flushall()
    yield
    redis_client().flushall()


def prepared_statements(alias: str, like: str) -> int:
    """Statements prepared in this process's session on `alias` whose text matches `like`."""
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE %s", [like])
        return cursor.fetchone()[0]


def test_the_claim_and_the_outcome_are_prepared_once_per_connection():
    for _ in range(3):
        job = enqueue("examples.echo", {"n": 1})
        assert runner.execute(job.pk, "node@test/1") == Status.SUCCEEDED
    # one prepared claim on `claims`, one prepared success and one insert on `default`, reused
    assert prepared_statements(store.CLAIMS, "%SET status = 'running', attempt = attempt + 1%") == 1
    assert prepared_statements("default", "%output = $%::jsonb%") == 1
    assert prepared_statements("default", "%INSERT INTO jobs_job%unnest%") == 1


def test_without_prepared_statements_the_same_path_runs_on_django_cursors(settings):
    settings.DATABASE_PREPARED = False
    for alias in ("default", store.CLAIMS):
        connections[alias].close()  # a fresh session: nothing prepared yet
    job = enqueue("examples.echo", {"n": 2})
    assert runner.execute(job.pk, "node@test/1") == Status.SUCCEEDED
    assert Job.objects.get(pk=job.pk).output == {"n": 2}
    assert prepared_statements(store.CLAIMS, "%jobs_job%") == 0
    assert prepared_statements("default", "%jobs_job%") == 0


def test_an_error_in_a_prepared_statement_is_django_s_and_rolls_back_its_transaction():
    job = enqueue("examples.echo", {})
    claimed = store.claim(job.pk, "node@test/1", 30)
    assert claimed is not None
    # when the outcome statement fails inside a transaction (output that is not JSON)
    with pytest.raises(DataError):
        with transaction.atomic():
            store.succeed(job.pk, claimed.attempt, "not json")
    # then nothing was recorded, and the connection goes on working for the right outcome
    assert Job.objects.get(pk=job.pk).status == Status.RUNNING
    assert store.succeed(job.pk, claimed.attempt, '{"ok": true}') is not None
    assert Job.objects.get(pk=job.pk).status == Status.SUCCEEDED


def test_the_first_statement_of_a_transaction_goes_with_its_begin_in_one_round_trip(tmp_path):
    """issue 28: psycopg sends a transaction's BEGIN alone and waits for it (a round trip); the
    store's first statement of a transaction is pipelined with it instead."""
    from psycopg import pq

    job = enqueue("examples.echo", {})
    claimed = store.claim(job.pk, "node@test/1", 30)
    connections["default"].ensure_connection()
    pgconn = connections["default"].connection.pgconn
    trace = tmp_path / "libpq.trace"

    # when an outcome's transaction runs, its messages traced by libpq
    with open(trace, "w") as out:
        pgconn.trace(out.fileno())
        pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS)
        try:
            with transaction.atomic():
                assert store.succeed(job.pk, claimed.attempt, "{}") is not None
        finally:
            pgconn.untrace()

    # then the statement was sent after the BEGIN without waiting for the server's answer to it
    lines = [line.split("\t") for line in trace.read_text().splitlines() if line.strip()]
    begin = next(i for i, line in enumerate(lines) if line[0] == "F" and "BEGIN" in line[-1])
    statement = next(i for i, line in enumerate(lines) if i > begin and line[0] == "F" and line[2] in ("Bind", "Parse"))
    assert [line[0] for line in lines[begin:statement]] == ["F"] * (statement - begin), lines[begin : statement + 1]
    assert Job.objects.get(pk=job.pk).status == Status.SUCCEEDED
