"""The admin's operations page and job/chain pages in process (Django's test client, real
PostgreSQL and Redis): what they show, staff only, retry/cancel by POST with CSRF, bounded queries."""
from __future__ import annotations

import datetime as dt

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from jobs.models import Chain, Job, Status

pytestmark = pytest.mark.django_db


def make_job(**fields: object) -> Job:
    defaults = {"type": "examples.echo", "queue": "default", "status": Status.PENDING}
    return Job.objects.create(**{**defaults, **fields})


def test_operations_page_is_staff_only(client):
    response = client.get("/admin/operations/")
    assert response.status_code == 302 and "/admin/login/" in response["Location"]
    assert client.get("/admin/operations/fragment/").status_code == 302
    assert client.post("/admin/operations/jobs/1/retry/").status_code in (302, 403)


def test_operations_page_shows_queues_throughput_workers_dead_chains(admin_client):
    now = timezone.now()
    make_job(status=Status.PENDING)
    make_job(status=Status.FAILED, error="boom")
    make_job(status=Status.RUNNING, worker="w1@test", progress=40, progress_message="halfway", started_at=now)
    dead = make_job(status=Status.DEAD, attempt=1, max_attempts=1, error="RuntimeError: nope", finished_at=now, started_at=now)
    for seconds in (1.0, 2.0, 3.0):
        make_job(status=Status.SUCCEEDED, type="examples.sleep", started_at=now - dt.timedelta(seconds=seconds), finished_at=now)
    chain = Chain.objects.create(steps=[{"type": "examples.sleep", "input": {}}, {"type": "examples.echo", "input": {}}])
    first = make_job(chain=chain, chain_index=0, status=Status.SUCCEEDED, worker="w1@test",
                     started_at=now - dt.timedelta(seconds=3), finished_at=now - dt.timedelta(seconds=1))
    assert first.pk

    response = admin_client.get("/admin/operations/")
    assert response.status_code == 200
    page = response.content.decode()
    assert 'data-fragment-url="/admin/operations/fragment/"' in page
    assert "/static/jobs/operations.js" in page and "cdn" not in page.lower()
    row = response.context["queues"]
    default = next(q for q in row if q["queue"] == "default")
    assert (default["waiting"], default["running"], default["retrying"], default["dead"]) == (1, 1, 1, 1)
    assert default["redis"] is not None
    sleep = next(t for t in response.context["throughput"] if t["type"] == "examples.sleep")
    assert sleep["finished"] == 3 and sleep["p50"] == pytest.approx(2.0, abs=0.01)
    assert "w1@test" in page and 'value="40"' in page and "halfway" in page
    assert f'action="/admin/operations/jobs/{dead.pk}/retry/"' in page and "csrfmiddlewaretoken" in page
    assert f'data-chain="{chain.pk}"' in page and 'data-status="waiting"' in page  # step 1: no job yet

    from subscribers.models import Delivery, Event

    event = Event.objects.create(name="orders.placed", key="order-7")
    Delivery.objects.create(event=event, subscriber="mail.receipt", job=first, released_at=now)
    Delivery.objects.create(event=event, subscriber="stock.reserve")
    page = admin_client.get("/admin/operations/fragment/").content.decode()
    assert f'data-event="{event.pk}"' in page and "order-7" in page
    assert "mail.receipt: succeeded" in page and f'href="/admin/jobs/job/{first.pk}/change/"' in page
    assert "stock.reserve: waiting" in page

    fragment = admin_client.get("/admin/operations/fragment/")
    assert fragment.status_code == 200 and b"<html" not in fragment.content and b"ops-queues" in fragment.content

    index = admin_client.get("/admin/").content.decode()
    assert 'href="/admin/operations/"' in index


def _history(n: int) -> None:
    """n more of everything the page lists: dead jobs, running jobs, chains with a job, events
    with two deliveries."""
    now = timezone.now()
    Job.objects.bulk_create(
        [Job(type="examples.echo", queue="default", status=Status.DEAD, finished_at=now, error="E: boom") for _ in range(n)]
        + [Job(type="examples.echo", queue="default", status=Status.RUNNING, worker=f"w{i % 3}@test", started_at=now)
           for i in range(n)]
    )
    from subscribers.models import Delivery, Event

    for _ in range(n):
        chain = Chain.objects.create(steps=[{"type": "examples.echo", "input": {}}, {"type": "examples.echo", "input": {}}])
        make_job(chain=chain, chain_index=0, status=Status.SUCCEEDED, started_at=now, finished_at=now)
        event = Event.objects.create(name="orders.placed")
        Delivery.objects.bulk_create([Delivery(event=event, subscriber=f"sub.{k}") for k in range(2)])


def test_operations_page_reads_a_bounded_number_of_rows_with_a_bounded_number_of_queries(admin_client):
    from jobs.interfaces.operations import LIMITS

    # given more of every list than the page shows
    _history(30)
    with CaptureQueriesContext(connection) as before:
        response = admin_client.get("/admin/operations/fragment/")
    assert response.status_code == 200
    # when the history doubles, the page runs the same number of queries (none per row)
    _history(30)
    with CaptureQueriesContext(connection) as after:
        response = admin_client.get("/admin/operations/fragment/")
    assert len(after) == len(before), [q["sql"] for q in after]
    # and each list reads at most its LIMIT rows, in the statement itself
    context = response.context
    assert len(context["dead"]) == LIMITS["dead"] == 20
    assert len(context["chains"]) == LIMITS["chains"] and len(list(context["events"])) == LIMITS["events"]
    assert sum(len(w["jobs"]) for w in context["workers"]) == 60 <= LIMITS["workers"]
    statements = [q["sql"] for q in after]
    for table, limit in (("jobs_job", LIMITS["dead"]), ("jobs_job", LIMITS["workers"]), ("jobs_chain", LIMITS["chains"]),
                         ("subscribers_event", LIMITS["events"])):
        assert any(f'FROM "{table}"' in sql and sql.rstrip().endswith(f"LIMIT {limit}") for sql in statements), (table, limit)


def test_retry_and_cancel_need_csrf_and_redirect_back(admin_user):
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)
    dead = make_job(status=Status.DEAD, attempt=1, max_attempts=1, finished_at=timezone.now())
    assert client.post(f"/admin/operations/jobs/{dead.pk}/retry/").status_code == 403  # no token

    page = client.get("/admin/operations/")
    token = page.cookies["csrftoken"].value
    response = client.post(f"/admin/operations/jobs/{dead.pk}/retry/", {"csrfmiddlewaretoken": token, "next": "/admin/operations/"})
    assert response.status_code == 302 and response["Location"] == "/admin/operations/"
    dead.refresh_from_db()
    assert dead.status == Status.PENDING

    response = client.post(f"/admin/operations/jobs/{dead.pk}/cancel/", {"csrfmiddlewaretoken": token, "next": "https://elsewhere.example/"})
    assert response.status_code == 302 and response["Location"] == "/admin/operations/"  # no open redirect
    dead.refresh_from_db()
    assert dead.status == Status.CANCELLED
    assert client.get(f"/admin/operations/jobs/{dead.pk}/retry/").status_code == 405


# --- Admin polish --------------------------------------------------------------------------------


def test_job_page_is_read_only_with_utc_seconds_duration_pre_error_and_buttons(admin_client):
    started = dt.datetime(2026, 3, 4, 5, 6, 7, tzinfo=dt.timezone.utc)
    job = make_job(status=Status.DEAD, attempt=1, max_attempts=1, started_at=started, finished_at=started + dt.timedelta(seconds=1.5),
                   error="Traceback (most recent call last):\n  File \"x\"\nRuntimeError: <boom>")
    page = admin_client.get(f"/admin/jobs/job/{job.pk}/change/").content.decode()
    assert "2026-03-04 05:06:07 UTC" in page and "2026-03-04 05:06:08 UTC" in page
    assert "1.500 s" in page
    assert '<pre class="conveyor-pre">Traceback (most recent call last):\n  File &quot;x&quot;\nRuntimeError: &lt;boom&gt;</pre>' in page
    assert f'action="/admin/operations/jobs/{job.pk}/retry/"' in page and 'id="job-retry"' in page
    assert 'id="job-cancel"' not in page  # a dead job cannot be cancelled
    assert 'name="_save"' not in page and "/delete/" not in page
    listing = admin_client.get("/admin/jobs/job/").content.decode()
    assert "2026-03-04 05:06:08 UTC" in listing

    job.status = Status.PENDING
    job.save()
    page = admin_client.get(f"/admin/jobs/job/{job.pk}/change/").content.decode()
    assert 'id="job-cancel"' in page and 'id="job-retry"' not in page


def test_chain_page_lists_every_planned_step_with_handoff(admin_client):
    t0 = dt.datetime(2026, 3, 4, 5, 6, 0, tzinfo=dt.timezone.utc)
    chain = Chain.objects.create(steps=[{"type": "examples.sleep"}, {"type": "examples.echo"}, {"type": "examples.echo"}], created_at=t0)
    make_job(chain=chain, chain_index=0, status=Status.SUCCEEDED, started_at=t0, finished_at=t0 + dt.timedelta(seconds=3))
    make_job(chain=chain, chain_index=1, status=Status.RUNNING, started_at=t0 + dt.timedelta(seconds=3.25))
    page = admin_client.get(f"/admin/jobs/chain/{chain.pk}/change/").content.decode()
    assert page.count('class="chain-step"') == 3
    assert 'data-status="waiting"' in page  # step 2 never got a job
    assert "0.250 s" in page and "3.000 s" in page
    assert "2026-03-04 05:06:00 UTC" in page
    assert 'name="_save"' not in page


def test_deliveries_filter_by_status(admin_client):
    from subscribers.models import Delivery, Event

    event = Event.objects.create(name="demo.happened")
    done = make_job(status=Status.SUCCEEDED)
    Delivery.objects.create(event=event, subscriber="sub.done", job=done, released_at=timezone.now())
    Delivery.objects.create(event=event, subscriber="sub.waiting")
    Delivery.objects.create(event=event, subscriber="sub.expired", released_at=timezone.now())
    for status, shown in (("waiting", "sub.waiting"), ("succeeded", "sub.done"), ("expired", "sub.expired")):
        response = admin_client.get(f"/admin/subscribers/delivery/?status={status}")
        assert response.status_code == 200
        assert [d.subscriber for d in response.context["cl"].result_list] == [shown], status


def test_sync_schedules_removes_celery_backend_cleanup():
    from django.conf import settings
    from django_celery_beat.models import CrontabSchedule, PeriodicTask

    from jobs.engine import schedules
    from project.celery import app

    assert settings.CELERY_RESULT_EXPIRES is None and app.conf.result_expires is None  # beat adds none
    crontab = CrontabSchedule.objects.create(minute="0", hour="4")
    PeriodicTask.objects.create(name="celery.backend_cleanup", task="celery.backend_cleanup", crontab=crontab)
    report = schedules.sync()
    assert report["removed"] == ["celery.backend_cleanup"]
    assert not PeriodicTask.objects.filter(name="celery.backend_cleanup").exists()
    assert schedules.sync()["removed"] == []


def test_the_page_reads_jobs_through_indexes_not_the_whole_table(admin_client):
    # given many finished jobs (a day old, 1% dead) and a few unfinished and recent ones
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO jobs_job (type, queue, input, status, attempt, max_attempts, priority, run_after,
                                  worker, progress, progress_message, cancel_requested, error,
                                  created_at, updated_at, started_at, finished_at)
            SELECT 'examples.echo', 'default', '{}'::jsonb, CASE WHEN i %% 100 = 0 THEN 'dead' ELSE 'succeeded' END,
                   1, 4, 5, now(), 'w@old', 100, '', false, '', now(), now(),
                   now() - interval '1 day' - interval '1 second', now() - interval '1 day'
            FROM generate_series(1, %s) AS i
            """,
            [20_000],
        )
    now = timezone.now()
    for status in (Status.PENDING, Status.FAILED, Status.RUNNING):
        make_job(status=status, worker="w@new")
    make_job(status=Status.SUCCEEDED, started_at=now - dt.timedelta(seconds=1), finished_at=now)
    Chain.objects.create(steps=[{"type": "examples.echo"}])
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE jobs_job")

    # when the page's fragment renders
    with CaptureQueriesContext(connection) as queries:
        response = admin_client.get("/admin/operations/fragment/")
    assert response.status_code == 200
    default = next(q for q in response.context["queues"] if q["queue"] == "default")
    assert (default["waiting"], default["running"], default["retrying"], default["dead"]) == (1, 1, 1, 200)
    assert [t["finished"] for t in response.context["throughput"]] == [1]

    # then no query on jobs_job walks the table
    job_queries = [q["sql"] for q in queries if "jobs_job" in q["sql"]]
    assert len(job_queries) >= 6, job_queries
    plans = []
    for sql in job_queries:
        with connection.cursor() as cursor:
            cursor.execute("EXPLAIN " + sql)
            plan = "\n".join(row[0] for row in cursor.fetchall())
        assert "Seq Scan on jobs_job" not in plan, f"{sql}\n{plan}"
        plans.append(plan)
    # and the counts, the window and the lists use the indexes made for them
    for index in ("job_runnable_idx", "job_lease_idx", "job_status_idx", "job_finished_idx"):
        assert any(index in plan for plan in plans), (index, plans)
