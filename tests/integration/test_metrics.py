"""/metrics: unfinished jobs by queue, type and status, in Prometheus' text format; guarded by
METRICS_TOKEN; one query that reads the partial indexes of unfinished rows, not the whole table.
(A production server without the token: tests/acceptance/test_production.py.)"""
from __future__ import annotations

import pytest
from django.db import connection
from django.test import Client, override_settings
from django.test.utils import CaptureQueriesContext
from prometheus_client.parser import text_string_to_metric_families

from jobs.models import Job

pytestmark = pytest.mark.django_db

TOKEN = "metrics-token-" + "x" * 30


def job(status: str, type_name: str = "examples.echo", queue: str = "default") -> Job:
    return Job.objects.create(type=type_name, queue=queue, status=status)


def samples(text: str) -> dict[tuple[str, str, str], float]:
    """{(queue, type, status): value} of conveyor_jobs, read with prometheus_client's own parser."""
    families = {family.name: family for family in text_string_to_metric_families(text)}
    assert families["conveyor_jobs"].type == "gauge"
    return {(s.labels["queue"], s.labels["type"], s.labels["status"]): s.value for s in families["conveyor_jobs"].samples}


def test_scrape_counts_unfinished_jobs_by_queue_type_and_status():
    # given jobs in every status, on two queues
    for status in ("pending", "pending", "running", "failed", "succeeded", "dead", "cancelled"):
        job(status)
    job("pending", "images.resize", "images")
    # when Prometheus scrapes (development, no METRICS_TOKEN: open)
    response = Client().get("/metrics")
    # then the answer parses as Prometheus text and counts the unfinished rows only
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    assert samples(response.content.decode()) == {
        ("default", "examples.echo", "pending"): 2.0,
        ("default", "examples.echo", "running"): 1.0,
        ("default", "examples.echo", "failed"): 1.0,
        ("images", "images.resize", "pending"): 1.0,
    }


@override_settings(METRICS_TOKEN=TOKEN)
@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Bearer ", f"Basic {TOKEN}", "Bearer wrong", f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}"],
)
def test_with_a_token_set_a_scrape_without_it_is_401_json(authorization):
    headers = {} if authorization is None else {"HTTP_AUTHORIZATION": authorization}
    response = Client(**headers).get("/metrics")
    assert response.status_code == 401
    assert response["Content-Type"] == "application/json"
    assert "Authorization: Bearer <METRICS_TOKEN>" in response.json()["detail"]
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert TOKEN not in response.content.decode()


@override_settings(METRICS_TOKEN=TOKEN)
@pytest.mark.parametrize("scheme", ["Bearer", "bearer"])
def test_with_a_token_set_the_right_bearer_scrapes(scheme):
    job("pending")
    response = Client(HTTP_AUTHORIZATION=f"{scheme} {TOKEN}").get("/metrics")
    assert response.status_code == 200
    assert samples(response.content.decode()) == {("default", "examples.echo", "pending"): 1.0}


@override_settings(PRODUCTION=True, METRICS_TOKEN="")
def test_production_without_a_token_refuses_every_scrape_saying_why():
    for headers in ({}, {"HTTP_AUTHORIZATION": "Bearer "}, {"HTTP_AUTHORIZATION": "Bearer anything"}):
        response = Client(**headers).get("/metrics")
        assert response.status_code == 401
        assert "METRICS_TOKEN is not set" in response.json()["detail"]


FINISHED_ROWS = 20_000


def test_a_scrape_reads_the_unfinished_rows_through_indexes_not_the_whole_table():
    # given a table of many finished jobs and a few unfinished ones, with fresh statistics
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO jobs_job (type, queue, input, status, attempt, max_attempts, priority, run_after,
                                  worker, progress, progress_message, cancel_requested, error,
                                  created_at, updated_at, finished_at)
            SELECT 'examples.echo', 'default', '{}'::jsonb, (ARRAY['succeeded', 'dead', 'cancelled'])[1 + i %% 3],
                   1, 4, 5, now(), '', 100, '', false, '', now(), now(), now()
            FROM generate_series(1, %s) AS i
            """,
            [FINISHED_ROWS],
        )
    for status in ("pending", "running", "failed"):
        job(status)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE jobs_job")

    # when Prometheus scrapes
    with CaptureQueriesContext(connection) as queries:
        response = Client().get("/metrics")
    assert response.status_code == 200
    assert sum(samples(response.content.decode()).values()) == 3

    # then it ran one query on jobs_job, and PostgreSQL's plan for it scans no table sequentially:
    # it reads the partial indexes of runnable and running rows, whatever the finished rows' number
    scrape = [q["sql"] for q in queries.captured_queries if "jobs_job" in q["sql"]]
    assert len(scrape) == 1, scrape
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN " + scrape[0])
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "Seq Scan" not in plan, plan
    assert "job_runnable_idx" in plan and "job_lease_idx" in plan, plan
