"""/metrics: unfinished jobs by queue, type and status, in Prometheus' text format; guarded by
METRICS_TOKEN; one query that reads the partial indexes of unfinished rows, not the whole table.
The deployment's counters and histograms (kept in Redis by every process) after a known workload
on a live prefork worker; lease expiries, relay re-sends and operator cancels; the running job's
ids on log lines (JSON from a live worker's log file, and a handler's own lines in process).
(A production server without the token: tests/acceptance/test_production.py.)"""
from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any

import pytest
from django.db import connection
from django.test import Client, override_settings
from django.test.utils import CaptureQueriesContext
from prometheus_client.parser import text_string_to_metric_families

from jobs import enqueue
from jobs.engine import control, recovery, registry, runner, store, telemetry
from jobs.models import Job
from project.logs import JobContext, JsonFormatter
from tests.support import redis_client

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


def test_production_serves_metrics_over_plain_http_with_the_token_while_redirecting_the_rest():
    # given production's redirect to https, with the exemptions the settings hold
    with override_settings(PRODUCTION=True, METRICS_TOKEN=TOKEN, SECURE_SSL_REDIRECT=True):
        scraper = Client(HTTP_AUTHORIZATION=f"Bearer {TOKEN}")  # a new client builds the middleware anew
        # then Prometheus' plain-HTTP scrape is answered, not redirected, and still wants the token
        response = scraper.get("/metrics")
        assert response.status_code == 200, (response.status_code, response.get("Location"))
        assert Client().get("/metrics").status_code == 401
        # and the rest is still redirected (the exemption is /metrics, not a prefix of it)
        for path in ("/api/types", "/metrics/", "/metricsx"):
            redirected = scraper.get(path)
            assert redirected.status_code == 301 and redirected["Location"].startswith("https://"), path


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
    assert len(queries.captured_queries) == 1, queries.captured_queries  # and no other query at all
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN " + scrape[0])
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "Seq Scan" not in plan, plan
    assert "job_runnable_idx" in plan and "job_lease_idx" in plan, plan
    # and so does the autoscaling signal's one statement (GET /api/queues/scale, start --autoscale)
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN " + store.QUEUE_LOAD_SQL)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "Seq Scan" not in plan, plan
    assert "job_runnable_idx" in plan and "job_lease_idx" in plan, plan
    assert store.queue_load()["default"][1] == 1  # the running one


# --- Counters and histograms of every process, from Redis --------------------------------------------


def families(text: str) -> dict[str, Any]:
    return {family.name: family for family in text_string_to_metric_families(text)}


def values(family: Any, suffix: str = "", **fixed: str) -> dict[tuple[str, ...], float]:
    """{label values (minus `fixed` ones): value} of the family's samples named name+suffix."""
    found = {}
    for sample in family.samples:
        if sample.name != family.name + suffix or any(sample.labels.get(k) != v for k, v in fixed.items()):
            continue
        found[tuple(v for k, v in sorted(sample.labels.items()) if k not in fixed)] = sample.value
    return found


def scrape() -> dict[str, Any]:
    response = Client().get("/metrics")
    assert response.status_code == 200
    return families(response.content.decode())


def status(job_id: int) -> str:
    return Job.objects.values_list("status", flat=True).get(pk=job_id)


@pytest.mark.django_db(transaction=True, databases="__all__")
def test_lease_expiries_relay_resends_hand_backs_and_operator_cancels_are_counted():
    redis_client().flushall()
    # given a claimed job whose worker is gone (its lease expired), an old unclaimed message,
    # a waiting job an operator cancels, and a running one asked to stop whose worker is killed
    lost = enqueue("examples.echo", {})
    assert store.claim(lost.pk, "gone@test/1", 30) is not None
    stopped = enqueue("examples.ping", {})
    assert store.claim(stopped.pk, "killed@test/7", 30) is not None
    assert control.cancel(Job.objects.get(pk=stopped.pk)) is True  # running: asked to stop
    stale = enqueue("examples.echo", {})
    waiting = enqueue("examples.sleep", {"seconds": 1}, run_after=None)
    with connection.cursor() as cursor:
        cursor.execute("UPDATE jobs_job SET lease_expires_at = now() - interval '1 second' WHERE id = %s", [lost.pk])
        cursor.execute("UPDATE jobs_job SET published_at = now() - interval '1 hour' WHERE id = %s", [stale.pk])

    # when the reaper and the relay pass, and the operator cancels
    assert recovery.reap() == 1
    assert recovery.relay() >= 1
    assert control.cancel(Job.objects.get(pk=waiting.pk)) is True
    # and the supervisor hands the killed worker's jobs back
    assert recovery.hand_back("killed@test") == 1

    # then
    metrics = scrape()
    assert values(metrics["conveyor_lease_expired"], "_total") == {("examples.echo",): 1.0}
    assert values(metrics["conveyor_relay_resent"], "_total")[("default",)] >= 1.0
    assert values(metrics["conveyor_jobs_finished"], "_total") == {
        ("cancelled", "examples.sleep"): 1.0,
        ("cancelled", "examples.ping"): 1.0,
    }
    redis_client().flushall()


EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


@pytest.mark.django_db(transaction=True, databases="__all__")
@pytest.mark.parametrize("how", ["enqueued with it", "stored before inserts clamped it"])
def test_a_run_after_in_1970_adds_seconds_of_queue_wait_not_decades(how):
    redis_client().flushall()
    # given a job due since 1970: enqueued so (it means now), or a row that already says so
    job = enqueue("examples.echo", {}, run_after=EPOCH)
    if how != "enqueued with it":
        Job.objects.filter(pk=job.pk).update(run_after=EPOCH)
    # when the runner runs it (a real claim on PostgreSQL) and its metrics reach Redis
    assert runner.execute(job.pk, "waited@test/1") == "succeeded"
    telemetry.runs.flush()
    # then its queue wait is seconds (from its insert), not the 1.8e9 since 1970, and is never negative
    wait = scrape()["conveyor_job_queue_wait_seconds"]
    assert values(wait, "_count") == {("examples.echo",): 1.0}
    assert 0.0 <= values(wait, "_sum")[("examples.echo",)] < 60.0
    assert values(wait, "_bucket", le="60.0") == {("examples.echo",): 1.0}
    if how == "enqueued with it":  # and the row says when it became due: its insert, not 1970
        row = Job.objects.get(pk=job.pk)
        assert row.run_after == row.created_at, (row.run_after, row.created_at)
    redis_client().flushall()


@pytest.mark.django_db(transaction=True, databases="__all__")
def test_a_handler_s_own_log_lines_carry_the_running_job_s_ids():
    redis_client().flushall()
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    handler.addFilter(JobContext())
    logging.getLogger().addHandler(handler)

    def handler_fn(ctx, data):
        logging.getLogger("tests.handler").warning("about to fail")
        raise RuntimeError("boom")

    registry.add(registry.JobType("tests.logs", handler=handler_fn, retries=0))
    try:
        job = enqueue("tests.logs", {})
        assert runner.execute(job.pk, "logger@test/1") == "dead"
    finally:
        registry.remove("tests.logs")
        logging.getLogger().removeHandler(handler)

    mine = [r for r in records if r.name == "tests.handler"] + [r for r in records if r.name == "conveyor.runner"]
    assert [r.getMessage() for r in mine] == ["about to fail", f"job {job.pk} attempt 1/1 dead"]
    for record in mine:
        assert (record.job, record.chain, record.job_type, record.queue, record.attempt, record.worker) == (
            job.pk, None, "tests.logs", "default", 1, "logger@test/1")
        assert record.job_context == f" [job={job.pk} chain=- type=tests.logs queue=default attempt=1 worker=logger@test/1]"
        line = json.loads(JsonFormatter().format(record))
        assert (line["job"], line["job_type"], line["attempt"], line["worker"]) == (job.pk, "tests.logs", 1, "logger@test/1")
    # after the run, lines carry no job
    other = logging.LogRecord("x", logging.INFO, __file__, 1, "later", None, None)
    JobContext().filter(other)
    assert other.job_context == "" and "job" not in json.loads(JsonFormatter().format(other))
    redis_client().flushall()


def test_a_json_line_carries_the_exception_text():
    try:
        raise ValueError("the cause")
    except ValueError:
        import sys

        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "it broke: %s", ("here",), sys.exc_info())
    line = json.loads(JsonFormatter().format(record))
    assert (line["level"], line["logger"], line["message"]) == ("ERROR", "x", "it broke: here")
    assert "ValueError: the cause" in line["exception"] and "Traceback" in line["exception"]
