"""Retention of finished jobs and chains (`conveyor.cleanup`, jobs/interfaces/housekeeping.py), in process on
the session's real PostgreSQL and Redis: the runner runs the cleanup job and the chains' jobs;
rows are aged with raw SQL (setup: no public call makes a row 30 days old).
"""
from __future__ import annotations

import datetime as dt

import pytest
from django.db import connection
from django.utils import timezone

from jobs import Group, Step, enqueue, enqueue_many, start_chain
from jobs.engine import runner, store
from jobs.interfaces import housekeeping
from jobs.models import Chain, ChainStatus, Job, Status
from subscribers.models import Delivery, Event
from tests.integration.conftest import RUNNER_IN_PROCESS

pytestmark = RUNNER_IN_PROCESS

WORKER = "node@test/1"


@pytest.fixture(autouse=True)
def retention(settings):
    settings.CONVEYOR = {**settings.CONVEYOR, "RETENTION_DAYS": 7}


def age(table: str, ids: list[int], days: int = 30) -> None:
    """Setup: the rows ended `days` ago."""
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE {table} SET finished_at = now() - make_interval(days => %s) WHERE id = ANY(%s)", [days, ids])


def cleanup() -> dict:
    job = enqueue("conveyor.cleanup")
    assert runner.execute(job.pk, worker=WORKER) == "succeeded"
    return Job.objects.get(pk=job.pk).output


def members(chain: Chain, index: int) -> list[Job]:
    return list(Job.objects.filter(chain=chain, chain_index=index).order_by("member"))


def test_retention_keeps_the_members_of_a_chain_that_still_runs_so_its_next_step_gets_every_result():
    # given a chain whose group has two members that ended long ago and one still pending
    chain = start_chain([Group([Step("examples.member", {"n": n}) for n in range(3)]), Step("examples.gather")])
    group = members(chain, 0)
    for job in group[:2]:
        assert runner.execute(job.pk, worker=WORKER) == "succeeded"
    age("jobs_job", [job.pk for job in group[:2]])

    # when retention runs
    cleanup()

    # then the running chain's members are all kept ...
    assert Job.objects.filter(pk__in=[job.pk for job in group]).count() == 3
    # ... and when its last member ends, the next step gets every member's output, in order
    assert runner.execute(group[2].pk, worker=WORKER) == "succeeded"
    [gather] = Job.objects.filter(chain=chain, chain_index=1)
    assert store.step_results(chain.pk, 1) == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert runner.execute(gather.pk, worker=WORKER) == "succeeded"
    assert Chain.objects.get(pk=chain.pk).status == ChainStatus.SUCCEEDED


def test_retention_deletes_an_ended_chain_with_its_jobs_once_every_job_ended_before_the_cutoff():
    # given a chain that ended long ago, one whose member still runs after it failed, a recent
    # one, and lone jobs, old and recent
    old = start_chain([Step("examples.echo"), Step("examples.echo")])
    for index in range(2):
        assert runner.execute(Job.objects.get(chain=old, chain_index=index).pk, worker=WORKER) == "succeeded"
    age("jobs_job", list(Job.objects.filter(chain=old).values_list("id", flat=True)))
    age("jobs_chain", [old.pk])

    failed = start_chain([Group([Step("examples.member", {"n": 0, "fail": True}), Step("examples.member", {"n": 1})])])
    dead, left_to_finish = members(failed, 0)
    Job.objects.filter(pk=dead.pk).update(max_attempts=1)
    assert runner.execute(dead.pk, worker=WORKER) == "dead"
    assert Chain.objects.get(pk=failed.pk).status == ChainStatus.FAILED
    age("jobs_job", [dead.pk])
    age("jobs_chain", [failed.pk])

    recent = start_chain([Step("examples.echo")])
    assert runner.execute(Job.objects.get(chain=recent).pk, worker=WORKER) == "succeeded"

    lone_old, lone_recent = enqueue("examples.echo"), enqueue("examples.echo")
    for job in (lone_old, lone_recent):
        assert runner.execute(job.pk, worker=WORKER) == "succeeded"
    age("jobs_job", [lone_old.pk])

    # when retention runs
    output = cleanup()

    # then the old chain went, with its jobs; the lone old job too
    assert (output["deleted_chains"], output["deleted_jobs"]) == (1, 3)
    assert not Chain.objects.filter(pk=old.pk).exists() and not Job.objects.filter(chain_id=old.pk).exists()
    assert not Job.objects.filter(pk=lone_old.pk).exists()
    # and the failed chain whose member may still run, the recent chain and job are all kept
    assert Job.objects.filter(chain=failed).count() == 2
    assert Job.objects.get(pk=left_to_finish.pk).status == Status.PENDING
    assert Job.objects.filter(chain=recent).count() == 1
    assert Job.objects.filter(pk=lone_recent.pk).exists()


def finished_lone_jobs(n: int, days: int = 30) -> list[int]:
    """Setup: n lone jobs that succeeded `days` ago (one statement each way: no runner needed)."""
    ids = [job.pk for job in enqueue_many([Step("examples.echo", {"i": i}) for i in range(n)])]
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE jobs_job SET status = 'succeeded', finished_at = now() - make_interval(days => %s)"
            " - id * interval '1 ms' WHERE id = ANY(%s)",
            [days, ids],
        )
    return ids


def test_one_cleanup_run_goes_on_past_a_hundred_batches_until_nothing_old_is_left(monkeypatch):
    # given more old finished jobs than a hundred batches hold (a batch of one row here: a
    # hundred batches a run capped retention at ~1,600 rows/s, below the work's rate)
    monkeypatch.setattr(housekeeping, "BATCH", 1)
    old = finished_lone_jobs(105)

    # when one cleanup run runs
    output = cleanup()

    # then every old job went in that one run
    assert output["deleted_jobs"] == 105
    assert not Job.objects.filter(pk__in=old).exists()


def test_retention_clears_what_refers_to_a_deleted_job_and_keeps_the_rows_that_refer():
    # given an old finished job, a recent job it started, and an event delivery that ran as it
    [parent] = finished_lone_jobs(1)
    child = enqueue("examples.echo")
    Job.objects.filter(pk=child.pk).update(parent_id=parent)
    event = Event.objects.create(name="retention.test")
    delivery = Delivery.objects.create(event=event, subscriber="retention.sub", job_id=parent)

    # when retention runs
    cleanup()

    # then the old job went; the child and the delivery stay, pointing at nothing
    assert not Job.objects.filter(pk=parent).exists()
    assert Job.objects.get(pk=child.pk).parent_id is None
    assert Delivery.objects.get(pk=delivery.pk).job_id is None


def test_a_retention_batch_takes_the_oldest_rows_and_the_next_starts_where_it_stopped():
    # given three old finished jobs, ended in this order
    ids = finished_lone_jobs(3)
    ended = dict(Job.objects.filter(pk__in=ids).values_list("id", "finished_at"))
    oldest = sorted(ids, key=ended.get)
    cutoff = timezone.now() - dt.timedelta(days=7)

    # when batches of two are deleted, each from where the last stopped
    first = store.delete_finished_from(cutoff, store.EPOCH, 2)
    second = store.delete_finished_from(cutoff, first[1], 2)
    third = store.delete_finished_from(cutoff, second[1], 2)

    # then the two oldest went first, the third next, and then there was nothing
    assert first == (2, ended[oldest[1]])
    assert second == (1, ended[oldest[2]])
    assert third == (0, None)
    assert not Job.objects.filter(pk__in=ids).exists()

