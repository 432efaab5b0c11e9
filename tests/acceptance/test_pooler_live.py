"""Conveyor behind a real PgBouncer (Debian's) in transaction mode: DATABASE_URL is the pooler,
DATABASE_DIRECT_URL the test's PostgreSQL (tests/pgbouncer.py starts and stops PgBouncer).

Jobs are enqueued over HTTP, claimed and completed by the instance's worker, a chain runs through,
all through the pooler (PgBouncer's own counters grow); a `?wait=` is answered at the outcome's
commit, which only the direct connection's LISTEN can hear (through the pooler the notification
goes to a server connection nobody listens on: the wait would last to its 8 s bound); a stream
follows a chain to its end. Misconfigured, `start` and `release` refuse with exit 2."""
from __future__ import annotations

import json
import subprocess
import sys
import urllib.request

import pytest
from django.db import connection, connections

from bench.sse_client import Stream
from jobs.models import Job
from tests import pgbouncer
from tests.support import MANAGE, ROOT, api_client, http_get
from tests.support import test_database_url as direct_url

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True, databases="__all__"), pytest.mark.usefixtures("stop_together")]

#: How soon after the outcome's commit the `?wait=` must be answered: far under its 8 s bound, far
#: above a notification's latency on a loaded machine (as tests/acceptance/test_wait_live.py).
PROMPT = 1.0


@pytest.fixture
def bouncer(live):
    started = pgbouncer.start(connections["default"].settings_dict)
    yield started
    started.stop()


def _bearer() -> dict[str, str]:
    return {"Authorization": api_client().defaults["HTTP_AUTHORIZATION"]}


def _post(url: str, body: object, headers: dict[str, str]) -> tuple[int, dict]:
    request = urllib.request.Request(url, json.dumps(body).encode(), {**headers, "Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status, json.loads(response.read())


def _manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, MANAGE, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def _manage_together(commands: list[str], env: dict[str, str]) -> dict[str, tuple[int, str]]:
    """Each `manage.py COMMAND` at once (their start-ups overlap): the exit code and stderr of each."""
    started = {
        command: subprocess.Popen([sys.executable, MANAGE, command], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True)
        for command in commands
    }
    return {command: (process.wait(120), process.stderr.read()) for command, process in started.items()}


def _lag(job_id: int) -> float:
    """Seconds from the job's finished_at to now, both on PostgreSQL's clock."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT EXTRACT(EPOCH FROM clock_timestamp() - finished_at)::float8 FROM jobs_job WHERE id = %s", [job_id])
        return cursor.fetchone()[0]


def test_start_and_release_refuse_a_transaction_pooler_without_a_direct_url(live, bouncer):
    # given DATABASE_URL through PgBouncer in transaction mode, and no DATABASE_DIRECT_URL
    env = live.env(DATABASE_URL=bouncer.url())
    env.pop("DATABASE_DIRECT_URL", None)

    # when the release step and an instance are started, then both refuse, naming the setting
    # (the other refusals, e.g. DATABASE_PREPARED: tests/integration/test_pooler.py)
    for command, (code, stderr) in _manage_together(["release", "start"], env).items():
        assert code == 2, (command, stderr)
        assert "conveyor: configuration error: DATABASE_URL goes through a pooler in transaction mode" in stderr, stderr
        assert "set DATABASE_DIRECT_URL" in stderr and "Traceback" not in stderr


def test_jobs_a_chain_a_wait_and_a_stream_run_through_pgbouncer_with_a_direct_url(live, bouncer):
    # (the claims through the pooler's entry that commits them asynchronously: DATABASE_CLAIMS_URL)
    env = {"DATABASE_URL": bouncer.url(), "DATABASE_DIRECT_URL": direct_url(), "DATABASE_CLAIMS_URL": bouncer.claims_url()}
    # given the release step run through the pooler (its lock and the migrations on the direct URL)
    done = _manage("release", env=live.env(**env))
    assert done.returncode == 0, done.stderr
    # and an instance (server and worker) on the pooler
    server = live.start("--no-beat", "--web-concurrency", "1", name="pooled", env=env)
    headers = _bearer()
    before = bouncer.stats()["total_xact_count"]

    # when jobs are enqueued over HTTP and run by the worker
    ids = [_post(server.url("/api/jobs"), {"type": "examples.echo", "input": {"n": n}}, headers)[1]["id"] for n in range(5)]
    # and a job sleeping 0.5 s is waited for with ?wait=
    status, sleeper = _post(server.url("/api/jobs"), {"type": "examples.sleep", "input": {"seconds": 0.5}}, headers)
    assert status == 201
    status, body = http_get(server.url(f"/api/jobs/{sleeper['id']}?wait=8"), timeout=30, headers=headers)
    lag = _lag(sleeper["id"])

    # then the wait was answered at the outcome's commit: heard on the direct connection
    assert status == 200 and json.loads(body)["status"] == "succeeded", body
    assert 0 <= lag < PROMPT, f"?wait= answered {lag * 1000:.1f} ms after the outcome (its notification was not heard)"
    for job_id in ids:
        assert json.loads(http_get(server.url(f"/api/jobs/{job_id}?wait=8"), timeout=30, headers=headers)[1])["status"] == "succeeded"
    assert {job.output["n"] for job in Job.objects.filter(pk__in=ids)} == set(range(5))

    # and a chain started over HTTP, followed over a stream, runs to its end
    status, chain = _post(server.url("/api/chains"), {"steps": [
        {"type": "examples.echo", "input": {"step": 1}}, {"type": "examples.echo", "input": {"step": 2}},
    ]}, headers)
    assert status == 201
    with Stream(server.url(f"/api/chains/{chain['id']}/stream"), headers=headers, timeout=30) as stream:
        assert stream.status == 200
        events = list(stream.events())
    assert events[-1].event == "end" and events[-1].data["status"] == "succeeded", [e.data for e in events]
    assert events[-1].data["output"] == {"step": 2}

    # and the enqueues, claims and outcomes went through PgBouncer
    served = bouncer.stats()["total_xact_count"] - before
    assert served >= 3 * 8, f"PgBouncer served {served} transactions for 8 jobs"
    print(f"PgBouncer served {served} transactions for 8 jobs and a chain; ?wait= answered {lag * 1000:.1f} ms after the outcome")
