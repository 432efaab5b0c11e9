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
    assert "Finished (UTC)" in listing and 'title="2026-03-04 05:06:08 UTC">03-04 05:06:08<' in listing

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


# --- Issue 26: pages that tell the truth ----------------------------------------------------------


def test_jobs_list_heads_each_column_by_what_it_shows_and_gives_a_dead_jobs_last_error(admin_client):
    # given a dead job with a traceback, a job of a chain, and a succeeded one
    now = timezone.now()
    chain = Chain.objects.create(steps=[{"type": "examples.echo", "input": {}}])
    make_job(status=Status.DEAD, attempt=2, max_attempts=2, worker="shared-1@host/529/9ed5b1717673c8f4", finished_at=now,
             error="Traceback (most recent call last):\n  File \"x\"\nRuntimeError: examples.fail: failing attempt 2")
    make_job(status=Status.SUCCEEDED, chain=chain, chain_index=0, finished_at=now, error="")
    # when the list is read
    page = admin_client.get("/admin/jobs/job/").content.decode()
    # then each column says what it is, a dead job's error is its exception line, a worker its node
    for header in ("column-attempts", "column-status_progress", "column-error_short", "column-worker_short", "column-chain_link"):
        assert header in page, header
    assert ">Status</a>" in page and ">Last error<" in page and ">Duration" not in page
    assert "RuntimeError: examples.fail: failing attempt 2" in page and "Traceback" not in page
    assert 'title="shared-1@host/529/9ed5b1717673c8f4">shared-1@host<' in page and ">2/2<" in page
    assert f'href="/admin/jobs/chain/{chain.pk}/change/">#{chain.pk} step 0<' in page
    assert 'id="nav-sidebar"' not in page  # the list takes the page's width

    # and the list reads no row's error, input or output one by one: the same queries for twice the rows
    for _ in range(2):
        make_job(status=Status.DEAD, error="", chain=chain, chain_index=0, member=None)
    with CaptureQueriesContext(connection) as before:
        admin_client.get("/admin/jobs/job/")
    for _ in range(4):
        make_job(status=Status.DEAD, error="", chain=chain, chain_index=0, member=None)
    with CaptureQueriesContext(connection) as after:
        admin_client.get("/admin/jobs/job/")
    assert len(after) == len(before), [q["sql"] for q in after]


def test_a_dead_jobs_page_shows_every_attempt_and_no_run_due_after_its_end(admin_client):
    # given a job dead after two attempts, its row holding the backoff of a retry that never comes
    t0 = dt.datetime(2026, 3, 4, 5, 6, 0, tzinfo=dt.timezone.utc)
    errors = [
        {"attempt": 1, "error": "Traceback\nRuntimeError: first", "worker": "w1@h/11/a", "started_at": t0.isoformat(),
         "at": (t0 + dt.timedelta(seconds=1)).isoformat()},
        {"attempt": 2, "error": "Traceback\nRuntimeError: second", "worker": "w2@h/22/b",
         "started_at": (t0 + dt.timedelta(seconds=3)).isoformat(), "at": (t0 + dt.timedelta(seconds=4.5)).isoformat()},
    ]
    job = make_job(status=Status.DEAD, attempt=2, max_attempts=2, errors=errors, error="Traceback\nRuntimeError: second",
                   started_at=t0 + dt.timedelta(seconds=3), finished_at=t0 + dt.timedelta(seconds=4.5),
                   run_after=t0 + dt.timedelta(seconds=60), published_at=None, worker="w2@h/22/b")
    # when its page is read
    page = admin_client.get(f"/admin/jobs/job/{job.pk}/change/").content.decode()
    # then both attempts are rows: worker, start, end, run time, outcome and error
    assert page.count('class="cv-attempt"') == 2
    assert 'data-attempt="1" data-outcome="failed"' in page and 'data-attempt="2" data-outcome="dead"' in page
    assert "RuntimeError: first" in page and "w1@h/11" in page and "2026-03-04 05:06:01 UTC" in page and "1.500 s" in page
    # and the timing says what is true: no run is due after its end, no message waits
    assert "2026-03-04 05:07:00 UTC" not in page
    assert "- (dead: no run is due)" in page and "- (dead: no message waits for it)" in page
    assert "Ran for:" in page and "Duration text" not in page


def test_unreached_steps_of_a_cancelled_chain_read_not_reached_not_waiting(admin_client):
    # given a cancelled chain whose first step was cancelled, a group and a step never reached
    chain = Chain.objects.create(
        steps=[{"type": "examples.sleep", "input": {}}, {"group": [{"type": "examples.member", "input": {}}] * 3},
               {"type": "examples.echo", "input": {}}],
        status="cancelled", finished_at=timezone.now(),
    )
    make_job(chain=chain, chain_index=0, status=Status.CANCELLED, finished_at=timezone.now())
    # when its page and the operations page are read
    page = admin_client.get(f"/admin/jobs/chain/{chain.pk}/change/").content.decode()
    ops = admin_client.get("/admin/operations/fragment/").content.decode()
    # then nothing of it reads "waiting"
    assert 'data-status="waiting"><td>' not in page and page.count('data-status="not reached"><td>') == 5  # group, 3 members, step 2
    assert "3 not reached" in page
    box = ops[ops.index(f'data-chain="{chain.pk}"'):]
    assert 'data-status="waiting"' not in box and 'data-status="not reached"' in box


def test_throughput_run_time_counts_runs_only_and_cancelled_jobs_have_their_column(admin_client):
    # given, in the window, two runs of 1 s and 2 s, and a job cancelled 600 s after an attempt started
    now = timezone.now()
    for seconds, status in ((1.0, Status.SUCCEEDED), (2.0, Status.DEAD), (600.0, Status.CANCELLED)):
        make_job(type="examples.sleep", status=status, started_at=now - dt.timedelta(seconds=seconds), finished_at=now)
    make_job(type="examples.sleep", status=Status.CANCELLED, finished_at=now)  # cancelled before it ever ran
    # when the operations page is read
    response = admin_client.get("/admin/operations/fragment/")
    sleep = next(t for t in response.context["throughput"] if t["type"] == "examples.sleep")
    # then p95 is of the two runs, and the cancelled ones are counted apart
    assert (sleep["finished"], sleep["succeeded"], sleep["dead"], sleep["cancelled"]) == (4, 1, 1, 2)
    assert sleep["p95"] == pytest.approx(1.95, abs=0.01) and sleep["p50"] == pytest.approx(1.5, abs=0.01)
    assert "<th>cancelled</th>" in response.content.decode()


def test_a_big_group_is_summarised_on_the_operations_page_its_members_behind_details(admin_client):
    # given a running chain with a group of 98 members
    chain = Chain.objects.create(steps=[{"group": [{"type": "examples.member", "input": {}}] * 98}])
    Job.objects.bulk_create([Job(type="examples.member", queue="default", chain=chain, chain_index=0, member=n,
                                 status=Status.SUCCEEDED if n < 40 else Status.PENDING) for n in range(98)])
    # when the operations page is read
    page = admin_client.get("/admin/operations/fragment/").content.decode()
    box = page[page.index(f'data-chain="{chain.pk}"'):]
    # then the group is one summary line; its first members are behind a closed <details>
    details = box[box.index("<details"):box.index("</details>")]
    assert f'data-keep="chain-{chain.pk}-step-0"' in details and " open" not in details.split(">")[0]
    assert "group of 98" in box and "58 pending, 40 succeeded" in box  # the step's own line sums them up
    assert "the first 10 of 98 members, one by one" in details
    assert details.count('class="ops-step ops-member"') == 10


def test_the_admin_is_branded_conveyor_and_lists_no_unused_beat_schedules(client, admin_client):
    # when the login page and the index are read
    login = client.get("/admin/login/").content.decode()
    index = admin_client.get("/admin/").content.decode()
    # then they say Conveyor, API tokens are spelled so, and unused Clocked/Solar schedules are not listed
    assert "Conveyor administration" in login and "Django administration" not in login
    assert "<title>Conveyor: jobs, chains, events and schedules | Conveyor admin</title>" in index
    assert ">API tokens<" in index and "Api tokens" not in index
    assert "/admin/django_celery_beat/clockedschedule/" not in index and "/admin/django_celery_beat/solarschedule/" not in index
    assert "/admin/django_celery_beat/crontabschedule/" in index
    # and a clocked schedule in use (a one-off schedule's) is listed
    from django_celery_beat.models import ClockedSchedule

    ClockedSchedule.objects.create(clocked_time=timezone.now())
    assert "/admin/django_celery_beat/clockedschedule/" in admin_client.get("/admin/").content.decode()


def test_with_a_trace_viewer_set_the_operations_page_and_a_jobs_page_link_to_its_trace(admin_client, settings):
    # given jobs created in a trace (their rows store its context), and one created untraced
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    context = {"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"}
    now = timezone.now()
    chain = Chain.objects.create(steps=[{"type": "examples.echo", "input": {}}])
    make_job(chain=chain, chain_index=0, status=Status.RUNNING, worker="w1@test/12/t", started_at=now, trace_context=context)
    dead = make_job(status=Status.DEAD, attempt=1, max_attempts=1, error="boom", finished_at=now, trace_context=context)
    untraced = make_job(status=Status.DEAD, attempt=1, max_attempts=1, error="boom", finished_at=now)
    link = f'href="https://jaeger.example/trace/{trace_id}"'

    # when no viewer is set: no link, the job's page shows the trace id alone
    settings.TRACE_VIEWER_URL = ""
    assert "ops-trace" not in admin_client.get("/admin/operations/fragment/").content.decode()
    page = admin_client.get(f"/admin/jobs/job/{dead.pk}/change/").content.decode()
    assert trace_id in page and "job-trace" not in page

    # when a viewer is set: the running job, the dead one and the chain link to the trace
    settings.TRACE_VIEWER_URL = "https://jaeger.example/trace/{trace_id}"
    fragment = admin_client.get("/admin/operations/fragment/").content.decode()
    assert fragment.count(link) == 3
    # and the job's page links it twice (its field and the tool); an untraced job's page not at all
    assert admin_client.get(f"/admin/jobs/job/{dead.pk}/change/").content.decode().count(link) == 2
    assert "jaeger.example" not in admin_client.get(f"/admin/jobs/job/{untraced.pk}/change/").content.decode()
