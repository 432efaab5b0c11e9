"""Waiting for a job's result across real processes: a `manage.py start` instance (gunicorn and a
Celery worker) runs the jobs; this process waits with `jobs.wait` and over HTTP with `?wait=`.

Promptness is measured on PostgreSQL's clock alone: the outcome's time is the row's `finished_at`
(the `now()` of the transaction that recorded it), the moment the wait returned is a
`clock_timestamp()` read right after it, on the same server. No two hosts' clocks are compared.

What is proved is the mechanism, not a speed (that is measured by `python -m bench.jobs`: its
"wait" line): a waiter is woken by the end's notification. Nothing else could wake it before its
bound: an end committed without the notification (a bare UPDATE of the row) is not seen until the
wait's time is up (nothing polls). So an answer well under the bound (PROMPT, generous for a loaded
machine; the bounds are 8 s over HTTP, 30 s in Python) is the notification's.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import signal
import threading
import time

import pytest
from django.db import connection

import jobs
from jobs import Step, enqueue, start_chain
from bench.sse_client import Stream
from jobs.engine import control
from jobs.interfaces import sse
from jobs.models import Chain, ChainStatus, Job, Status
from tests.support import api_client, http_get

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True, databases="__all__"), pytest.mark.usefixtures("stop_together")]

#: How soon after the outcome's commit a waiter must have its answer: far below the waits' bounds
#: (8 s, 30 s), far above the notification's latency (a few ms idle; tens under load), so that a
#: loaded machine cannot fail it and only a waiter the notification did not wake can.
PROMPT = 1.0




def _lag(model: type[Job] | type[Chain], row_id: int) -> float:
    """Seconds from the row's finished_at to now, both on PostgreSQL's clock."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT EXTRACT(EPOCH FROM clock_timestamp() - finished_at)::float8 FROM {model._meta.db_table} WHERE id = %s",
            [row_id],
        )
        return cursor.fetchone()[0]


def _db_now():
    with connection.cursor() as cursor:
        cursor.execute("SELECT clock_timestamp()")
        return cursor.fetchone()[0]


def _bearer() -> dict[str, str]:
    return {"Authorization": api_client().defaults["HTTP_AUTHORIZATION"]}


def _serve(live, name: str):
    """A shared instance (gunicorn + a worker) with one gunicorn worker process, warmed: a worker's
    first request imports the API (about 0.5 s here), which is no part of what is measured."""
    server = live.start("--no-beat", "--web-concurrency", "1", name=name)
    assert http_get(server.url("/api/types"), timeout=30, headers=_bearer())[0] == 200
    return server


def test_python_and_http_waits_are_woken_by_the_outcome_s_notification_and_nothing_polls(live):
    # given a server and a worker
    server = _serve(live, "waited")
    headers = _bearer()

    # when a job sleeping 0.5 s is waited on in Python
    job = enqueue("examples.sleep", {"seconds": 0.5})
    asked = _db_now()
    done = jobs.wait(job, 30)
    lag = python_lag = _lag(Job, job.pk)

    # then the wait blocked while it ran and was answered at its commit, not at its bound
    assert done.status == Status.SUCCEEDED and done.output["slept"] == 0.5
    ran_on = (done.finished_at - asked).total_seconds()
    assert ran_on >= 0.3, f"the job ended {ran_on:.3f}s after the wait began: nothing was waited for"
    assert 0 <= lag < PROMPT, f"jobs.wait answered {lag * 1000:.1f} ms after the outcome"

    # and when another one is waited on over HTTP
    job = enqueue("examples.sleep", {"seconds": 0.5})
    asked = _db_now()
    status, body = http_get(server.url(f"/api/jobs/{job.pk}?wait=8"), timeout=30, headers=headers)
    lag = _lag(Job, job.pk)

    # then the answer is the ended job, at its commit
    assert status == 200, body
    answer = json.loads(body)
    assert answer["status"] == "succeeded"
    ran_on = (Job.objects.get(pk=job.pk).finished_at - asked).total_seconds()
    assert ran_on >= 0.3, f"the job ended {ran_on:.3f}s after the request: nothing was waited for"
    assert 0 <= lag < PROMPT, f"?wait= answered {lag * 1000:.1f} ms after the outcome"
    print(f"jobs.wait answered {python_lag * 1000:.1f} ms, ?wait= {lag * 1000:.1f} ms after the outcome")

    # and a job that runs past the wait: the Python wait raises, the HTTP one answers it running
    job = enqueue("examples.sleep", {"seconds": 5})
    with pytest.raises(jobs.WaitTimeout) as raised:
        jobs.wait(job, 1)
    assert raised.value.row.status == Status.RUNNING
    started = time.monotonic()
    status, body = http_get(server.url(f"/api/jobs/{job.pk}?wait=0.5"), timeout=30, headers=headers)
    assert status == 200 and json.loads(body)["status"] == "running"
    assert 0.5 <= time.monotonic() - started < 2.0
    control.cancel(job)  # the sleep stops at its next check (no drain to wait for)

    # and an end committed without its notification (a bare UPDATE, as no statement of the store
    # does) is not seen before the bound, in Python or over HTTP: no waiter polls the row
    for wait_over in ("python", "http"):
        job = enqueue("examples.echo", {}, run_after=dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1))
        ender = threading.Timer(0.2, _end_silently, [job.pk])
        ender.start()
        started = time.monotonic()
        if wait_over == "python":
            assert jobs.wait(job, 0.8).status == Status.SUCCEEDED  # read once more at its bound
        else:
            status, body = http_get(server.url(f"/api/jobs/{job.pk}?wait=0.8"), timeout=30, headers=headers)
            assert status == 200 and json.loads(body)["status"] in ("pending", "succeeded"), body  # as read at its bound
        ender.join()
        assert time.monotonic() - started >= 0.8, f"{wait_over}: the wait saw an end nobody notified: it polls"


def _end_silently(job_id: int) -> None:
    """Mark a pending job succeeded without the store's statement, hence without its NOTIFY."""
    with connection.cursor() as cursor:
        cursor.execute("UPDATE jobs_job SET status = 'succeeded', finished_at = now() WHERE id = %s", [job_id])
    connection.close()  # this thread's connection


def test_chain_whose_middle_step_dies_ends_failed_with_its_error_and_its_waiters_answered_at_once(live):
    """celery#3538, celery#6220: a chain whose step fails loses the error, and a waiter on the
    chain hangs. Here the chain ends `failed` in the transaction that records its step dead, GET
    /api/chains/{id} shows that step and its error, and waiters on the step's job (over HTTP)
    and on the chain (in Python) both have the answer at that commit (woken by its notification)."""
    server = _serve(live, "chained")
    headers = _bearer()

    # given a chain echo -> fail (always; examples.fail has 3 retries, 0.2 s backoff) -> ping
    chain = start_chain([Step("examples.echo", {"n": 1}), Step("examples.fail", {"times": 100}), Step("examples.ping", {})])
    first = Job.objects.get(chain=chain, chain_index=0)
    assert jobs.wait(first, 30).status == Status.SUCCEEDED
    middle = Job.objects.get(chain=chain, chain_index=1)  # inserted with the first step's success

    # when one waiter waits on the middle step's job over HTTP and another on the chain in Python
    answers: dict[str, object] = {}

    def wait_over_http() -> None:
        _db_now()  # this thread's database connection, opened before: no part of the lag
        answers["http"] = http_get(server.url(f"/api/jobs/{middle.pk}?wait=8"), timeout=30, headers=headers)
        answers["http_lag"] = _lag(Job, middle.pk)
        connection.close()

    waiter = threading.Thread(target=wait_over_http, daemon=True)
    waiter.start()
    done = jobs.wait_chain(chain, 30)
    chain_lag = _lag(Chain, chain.pk)
    waiter.join(30)

    # then the chain failed, promptly known to both
    assert done.status == ChainStatus.FAILED
    assert 0 <= chain_lag < PROMPT, f"wait_chain answered {chain_lag * 1000:.1f} ms after the chain ended"
    status, body = answers["http"]
    step = json.loads(body)
    assert status == 200 and step["status"] == "dead" and step["attempt"] == 4
    assert 0 <= answers["http_lag"] < PROMPT, f"?wait= answered {answers['http_lag'] * 1000:.1f} ms after the step died"
    print(f"wait_chain answered {chain_lag * 1000:.1f} ms, the step's ?wait= {answers['http_lag'] * 1000:.1f} ms after the end")

    # and GET /api/chains/{id} shows the failing step, its error, and the step that never ran
    status, body = http_get(server.url(f"/api/chains/{chain.pk}"), timeout=10, headers=headers)
    view = json.loads(body)
    assert status == 200 and view["status"] == "failed" and view["finished_at"]
    assert [s["status"] for s in view["steps"]] == ["succeeded", "dead", "not reached"]
    failed = view["steps"][1]
    assert failed["type"] == "examples.fail" and failed["job"]["id"] == middle.pk
    assert "RuntimeError: examples.fail: failing attempt 4" in failed["job"]["error"]


def test_a_chain_stream_follows_it_to_its_end_across_a_worker_child_killed_mid_job(live):
    """GET /api/chains/{id}/stream (Server-Sent Events, jobs/interfaces/streams.py) on a real server:
    the stream reports the step's run, the re-run after its worker process was SIGKILLed, and the
    chain's end; a reconnect with the end's id is answered 204."""
    server = _serve(live, "streamed")
    headers = _bearer()
    # given a chain count(sleep 1.5 s) -> echo, followed over one stream
    chain = start_chain([Step("examples.count", {"sleep": 1.5}), Step("examples.echo", {"after": "count"})])
    url = server.url(f"/api/chains/{chain.pk}/stream")
    seen: list[sse.Event] = []
    killed = None
    with Stream(url, headers=headers, timeout=30) as stream:
        assert stream.status == 200 and stream.content_type.startswith("text/event-stream")
        for event in stream.events():
            seen.append(event)
            step = event.data["jobs"][0]
            # when the pool process running the first step is killed with SIGKILL mid-run
            if killed is None and (step["status"], step["attempt"]) == ("running", 1):
                killed = int(Job.objects.get(pk=step["id"]).worker.split("/")[1])
                os.kill(killed, signal.SIGKILL)
            if event.event == "end":
                break

    # then the stream showed the step run again (attempt 2) and ended with the chain, succeeded
    assert killed is not None, [e.data for e in seen]
    runs = [(e.data["jobs"][0]["status"], e.data["jobs"][0]["attempt"]) for e in seen]
    print(f"the stream said: {runs}")
    assert ("running", 1) in runs and ("succeeded", 2) in runs, runs
    end = seen[-1]
    assert end.event == "end" and end.data["status"] == "succeeded" and end.data["output"] == {"after": "count"}
    assert [(j["index"], j["status"], j["attempt"]) for j in end.data["jobs"]] == [(0, "succeeded", 2), (1, "succeeded", 1)]
    assert len({e.id for e in seen}) == len(seen)  # each event a new state
    # and a client reconnecting with the end's id is told there is nothing more (204)
    with Stream(url, headers=headers, last_event_id=end.id) as again:
        assert again.status == 204

    # and a draining server (SIGTERM) closes a stream still open at once, not at its 300 s bound
    later = enqueue("examples.echo", {"later": True}, run_after=_db_now() + dt.timedelta(hours=1))
    with Stream(server.url(f"/api/jobs/{later.pk}/stream"), headers=headers, timeout=30) as open_one:
        events = open_one.events()
        assert next(events).data["status"] == "pending"
        asked = time.monotonic()
        server.signal(signal.SIGTERM)
        assert list(events) == []  # closed, nothing more said
        assert time.monotonic() - asked < 3  # (the drain itself would wait 5 s: live.grace)


def test_bench_streams_smoke_50_streams_while_jobs_run_hold_no_connection_each(live):
    """`python -m bench.streams` at a tiny size, on this module's kind of instance: 50 streams open
    while a worker runs jobs, ordinary requests measured beside them; every stream opens and hears
    its job, and the server's PostgreSQL connections stay its pool and its one listening connection."""
    from bench import streams as bench_streams

    server = _serve(live, "streams-bench")
    args = bench_streams.parse_args(
        ["--streams", "50", "--requests", "40", "--warmup", "5", "--clients", "2", "--job-seconds", "0.2",
         "--concurrency", "1", "--rounds", "2"]
    )
    pids = bench_streams.gunicorn_workers(server.process.pid)
    assert len(pids) == 1, pids
    token = api_client().defaults["HTTP_AUTHORIZATION"].split()[1]

    phases, opened = bench_streams.run(server.port, token, args, pids)
    print("\n".join(bench_streams.report(phases, opened, args)))

    assert opened.errors == [] and opened.opened == 100, opened.errors[:3]  # 50 in each of the 2 rounds
    assert opened.events >= 100
    assert all(phase.errors == 0 and len(phase.latencies) == 40 for phase in phases)
    # one web process: at most its pool (CONVEYOR_WEB_DB_POOL, 4) and its listening connection
    assert phases[-1].connections <= 5, phases[-1].connections
