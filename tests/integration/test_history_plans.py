"""The recovery loop's periodic statements beside a large history (issue 29), on the session's real
PostgreSQL: what PostgreSQL plans for them once the table holds many finished rows, and how often
the costly ones run.

The figures are bench/history.py's (10M finished rows); here, a history large enough for the
planner's estimates to go wrong the same way, read from EXPLAIN (the statement is not run).
"""
from __future__ import annotations

import datetime as dt

from django.db import connection
from django.utils import timezone

from jobs import Step, enqueue, enqueue_many
from jobs.engine import recovery, store
from jobs.models import Job, Status
from tests.integration.conftest import RUNNER_IN_PROCESS

pytestmark = RUNNER_IN_PROCESS

# Setup: finished rows as the runner leaves them (run_after, published_at in the past).
HISTORY_SQL = """
INSERT INTO jobs_job (type, queue, input, status, attempt, max_attempts, priority, run_after, published_at,
                      worker, progress, progress_message, cancel_requested, held, error, errors, crashes,
                      created_at, started_at, finished_at, updated_at)
SELECT 'examples.echo', 'default', '{}'::jsonb, 'succeeded', 1, 4, 5, t, t, 'w', 100, '', false, '', '', '[]'::jsonb,
       0, t, t, t, t
  FROM generate_series(1, %s) g, LATERAL (SELECT now() - interval '20 days' + g * interval '1 s' AS t) x
"""


def plan(sql: str, params: list) -> str:
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN " + sql, params)
        return "\n".join(row[0] for row in cursor.fetchall())


def test_the_relays_stale_scan_reads_its_own_index_in_publish_order_beside_a_large_history():
    # given a history of finished jobs and a few pending ones, published, with fresh statistics
    with connection.cursor() as cursor:
        cursor.execute(HISTORY_SQL, [50_000])
    enqueue_many([Step("examples.echo", {"i": i}) for i in range(5)])
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE jobs_job")

    # when PostgreSQL plans the relay's stale scan (store.mark_stale's statement)
    stale = plan(store.RELAY_STALE_SQL, [30, [], 300, 500])

    # then it walks job_stale_idx in publish order and stops at its batch: no sort of every due
    # row, no parallel workers started (what it did beside 10M rows: 40-60 ms a pass)
    assert "job_stale_idx" in stale, stale
    assert "Sort" not in stale and "Gather" not in stale, stale


def test_a_recovery_pass_between_slow_ones_publishes_due_rows_and_leaves_leases_and_stale_rows():
    # given a dead worker's row (lease expired), a row published long ago and never claimed, and
    # a delayed job now due
    lost, stale = enqueue("examples.echo", {}), enqueue("examples.echo", {})
    assert store.claim(lost.pk, "gone@test/1", 30) is not None
    due = enqueue("examples.echo", {}, run_after=timezone.now() + dt.timedelta(hours=1))
    with connection.cursor() as cursor:
        cursor.execute("UPDATE jobs_job SET lease_expires_at = now() - interval '1 s' WHERE id = %s", [lost.pk])
        cursor.execute("UPDATE jobs_job SET published_at = now() - interval '1 hour' WHERE id = %s", [stale.pk])
        cursor.execute("UPDATE jobs_job SET run_after = now() - interval '1 s' WHERE id = %s", [due.pk])

    # when a pass between the slow ones runs (decisions.slow_scans_due said no)
    recovery.recover_once(slow=False)

    # then the due row is published, and neither the lease nor the stale row was looked at ...
    assert Job.objects.get(pk=due.pk).published_at is not None
    assert Job.objects.get(pk=lost.pk).status == Status.RUNNING
    assert Job.objects.get(pk=stale.pk).published_at < timezone.now() - dt.timedelta(minutes=30)

    # ... until a slow pass, which reaps the one and re-publishes the other
    recovery.recover_once(slow=True)
    assert Job.objects.get(pk=lost.pk).status == Status.PENDING
    assert Job.objects.get(pk=stale.pk).published_at > timezone.now() - dt.timedelta(minutes=1)


def test_an_outcome_and_a_heartbeat_find_their_row_by_the_primary_key_when_the_lease_index_looks_empty():
    # given a table whose statistics say no row runs (a vacuum just found none): job_lease_idx
    # looks empty, the cheapest thing to read in full
    enqueue_many([Step("examples.echo", {"i": i}) for i in range(5)])
    with connection.cursor() as cursor:
        cursor.execute(HISTORY_SQL, [5_000])
        cursor.execute("VACUUM ANALYZE jobs_job")

    # when PostgreSQL plans a success, a failure and a heartbeat of one running row
    plans = {
        "succeed": plan(store.SUCCEED_SQL, ["{}", 1, 1]),
        "fail": plan(store.FAIL_SQL, [1.0, "boom", False, 1, 1]),
        "heartbeat": plan(store.HEARTBEAT_SQL, [30, [1], [1]]),
    }

    # then each reads the primary key, never the whole of job_lease_idx: under a held transaction
    # that index keeps every dead entry, and each outcome would walk them all
    for name, text in plans.items():
        assert "jobs_job_pkey" in text and "job_lease_idx" not in text, (name, text)


def test_a_claim_finds_its_row_by_the_primary_key_when_the_runnable_index_looks_empty():
    # given a table whose statistics say no row waits (a vacuum found none): job_runnable_idx
    # looks empty
    with connection.cursor() as cursor:
        cursor.execute(HISTORY_SQL, [5_000])
        cursor.execute("VACUUM ANALYZE jobs_job")

    # when PostgreSQL plans a claim of one row
    claim = plan(store.CLAIM_SQL, ["w", 30, 1, []])

    # then it reads the primary key, never the whole of job_runnable_idx (every claimed row's
    # dead entry stays there under a held transaction)
    assert "jobs_job_pkey" in claim and "job_runnable_idx" not in claim, claim
