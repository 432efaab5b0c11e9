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

    fragment = admin_client.get("/admin/operations/fragment/")
    assert fragment.status_code == 200 and b"<html" not in fragment.content and b"ops-queues" in fragment.content

    index = admin_client.get("/admin/").content.decode()
    assert 'href="/admin/operations/"' in index


def test_operations_queries_are_bounded(admin_client):
    for _ in range(30):
        make_job(status=Status.DEAD, finished_at=timezone.now())
    with CaptureQueriesContext(connection) as queries:
        assert admin_client.get("/admin/operations/fragment/").status_code == 200
    job_queries = [q["sql"] for q in queries if "jobs_job" in q["sql"]]
    for sql in job_queries:
        # every job query is a LIMITed list, a count over an unfinished/dead status, a chain's
        # jobs or the finished window
        assert "LIMIT" in sql or "WHERE" in sql, sql
    assert response_rows(admin_client) == 20


def response_rows(admin_client: Client) -> int:
    return len(admin_client.get("/admin/operations/fragment/").context["dead"])


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
