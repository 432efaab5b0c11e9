"""Progress where people wait (issue 12): a bulk retry and a schedule sync say where they are, and a
job's ctx.progress is a bar on its admin page."""
from __future__ import annotations

import io

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

from jobs import Step, enqueue, enqueue_many
from jobs.engine import schedules
from jobs.models import Job, Status
from jobs.engine.schedules import Schedule
from tests.support import redis_client

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")


def test_a_bulk_retry_shows_its_progress_and_retries_each_dead_job():
    # given 25 dead jobs and one that succeeded
    jobs = enqueue_many([Step("examples.echo", {"n": n}) for n in range(25)])
    done = enqueue("examples.echo", {})
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE jobs_job SET status = 'dead', attempt = max_attempts, finished_at = now() WHERE id = ANY(%s)", [[j.pk for j in jobs]]
        )
        cursor.execute("UPDATE jobs_job SET status = 'succeeded', finished_at = now() WHERE id = %s", [done.pk])
    redis_client().flushall()
    out, err = io.StringIO(), io.StringIO()

    # when they are retried in bulk
    call_command("retry", stdout=out, stderr=err)

    # then each dead one is pending again with a fresh budget, and the command said where it was
    assert Job.objects.filter(pk__in=[j.pk for j in jobs], status=Status.PENDING).count() == 25
    assert Job.objects.get(pk=done.pk).status == Status.SUCCEEDED
    assert err.getvalue().splitlines()[-1] == "retry: 25/25 (100%)"
    assert out.getvalue().strip() == "retried 25 of 25 dead job(s)"


def test_a_bulk_retry_refuses_a_status_it_cannot_retry():
    with pytest.raises(CommandError, match="--status must be one of") as refused:
        call_command("retry", status="running")
    assert refused.value.returncode == 2


def test_a_schedule_sync_reports_its_progress():
    declared = [Schedule(every=60, name=f"progress-{n}", job="examples.echo") for n in range(3)]
    seen = []
    schedules.sync(declared, progress=lambda done, total: seen.append((done, total)))
    assert seen == [(1, 3), (2, 3), (3, 3)]
    err = io.StringIO()
    call_command("sync_schedules", stdout=io.StringIO(), stderr=err)
    assert err.getvalue().splitlines()[-1].startswith("sync_schedules: ") and err.getvalue().strip().endswith("(100%)")


def test_a_jobs_progress_is_a_bar_on_its_admin_page(admin_client):
    job = enqueue("examples.echo", {})
    Job.objects.filter(pk=job.pk).update(progress=40)
    page = admin_client.get(f"/admin/jobs/job/{job.pk}/change/").content.decode()
    assert '<progress value="40" max="100">40%</progress>' in page
