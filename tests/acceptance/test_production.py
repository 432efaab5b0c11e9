"""Production processes (CONVEYOR_ENV=production) on the test's PostgreSQL and Redis: /metrics
refuses an anonymous scrape, and the demo slice is installed only with CONVEYOR_DEMO=true.

The servers are gunicorn on project.asgi with uvicorn's worker class, the command `manage.py start` runs for a server, bound
to 127.0.0.1 here (`start` binds 0.0.0.0 in production)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings
from prometheus_client.parser import text_string_to_metric_families

from tests import support
from tests.support import MANAGE, ROOT, Proc, free_port, http_get, http_ok, start_servers, wait_for

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True, databases="__all__")]

# Two different random values of 64 characters (production wants 50+, not equal, not a default).
COOKIE = "Qm9vN3kY2x7Zt0aB1cD4eF5gH6iJ7kL8mN9oP0qR1sT2uV3wX4yZ5aB6cD7eF8gH"
JWT = "LjYZmSlVSwLiTOrVB7gbj3ZkoTLd2DEM8usLN8XDhYuWW4Slx6EUk9RXSHOXZvyk"
METRICS_TOKEN = "scrape-" + "t" * 40


def production_env(database_url: str | None = None, **extra: str) -> dict[str, str]:
    """What production needs, on this session's servers; `extra` adds or (with "") removes."""
    start_servers()
    env = {k: v for k, v in os.environ.items() if k not in ("CONVEYOR_DEMO", "METRICS_TOKEN", "CONVEYOR_DATA")}
    env.update(
        CONVEYOR_ENV="production",
        JWT_SECRET=JWT,
        COOKIE_SECRET=COOKIE,
        ALLOWED_HOSTS="127.0.0.1",
        # These servers are reached over plain HTTP, with no proxy ending TLS in front: no redirect
        # to https (test_production_redirects_plain_http_except_health_and_metrics turns it back on).
        SECURE_SSL_REDIRECT="false",
        DATABASE_URL=database_url or support.test_database_url(),
        REDIS_URL=settings.REDIS_URL,
        DJANGO_SETTINGS_MODULE="project.settings",
    )
    env.update(extra)
    return {k: v for k, v in env.items() if v != ""}


@pytest.fixture
def production_server():
    """start(**env) -> a gunicorn server of project.asgi in production, ready; all stopped after."""
    started: list[Proc] = []

    def start(**extra: str) -> Proc:
        port = free_port()
        log_path = Path(os.environ.get("CONVEYOR_DATA") or "/tmp") / f"production-{port}.log"
        argv = [sys.executable, "-m", "gunicorn", "project.asgi:application",
                "--worker-class", "project.asgi_worker.ConveyorWorker", "--bind", f"127.0.0.1:{port}",
                "--workers", "1", "--no-control-socket", "--access-logfile", "-"]
        with open(log_path, "wb") as out:
            process = subprocess.Popen(
                argv, cwd=ROOT, env=production_env(**extra), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        proc = Proc(f"production-{port}", process, log_path, port)
        started.append(proc)
        return proc

    def ready(proc: Proc) -> Proc:
        def answers() -> bool:
            assert proc.alive(), f"{proc.name} exited with {proc.process.returncode}:\n{proc.log()[-4000:]}"
            return http_ok(proc.url("/health/ready"))

        wait_for(answers, 60, interval=0.2, what=f"{proc.name} to be ready")
        return proc

    yield start, ready
    for proc in started:
        proc.stop(timeout=20)


def test_production_metrics_refuse_anonymous_scrapes(production_server):
    start, ready = production_server
    # given two production servers: one without METRICS_TOKEN, one with it (started together)
    bare, guarded = start(), start(METRICS_TOKEN=METRICS_TOKEN)
    ready(bare), ready(guarded)

    # then without a token configured, /metrics refuses every scrape and says what is missing
    for headers in ({}, {"Authorization": "Bearer "}, {"Authorization": f"Bearer {METRICS_TOKEN}"}):
        status, body = http_get(bare.url("/metrics"), headers=headers)
        assert status == 401, body
        assert "METRICS_TOKEN is not set" in json.loads(body)["detail"]

    # and with one, an anonymous or wrong scrape is 401 and the right bearer gets the metrics
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {METRICS_TOKEN}"}):
        status, body = http_get(guarded.url("/metrics"), headers=headers)
        assert status == 401, body
        assert "Authorization: Bearer <METRICS_TOKEN>" in json.loads(body)["detail"]
    status, body = http_get(guarded.url("/metrics"), headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert status == 200
    names = [family.name for family in text_string_to_metric_families(body.decode())]
    # every family project/metrics.py documents, each once (counters without their _total suffix)
    assert sorted(names) == sorted([
        "conveyor_jobs", "conveyor_jobs_running", "conveyor_jobs_finished", "conveyor_lease_expired", "conveyor_relay_resent",
        "conveyor_job_run_seconds", "conveyor_job_queue_wait_seconds", "conveyor_chain_handoff_seconds", "conveyor_queue_depth",
        "conveyor_queue_consumers", "conveyor_queue_waiting", "conveyor_queue_oldest_waiting_seconds",
        "conveyor_queue_running", "conveyor_queue_desired_workers",
    ]), names

    # and production serves /api/docs' own files too (no CDN, no collectstatic needed)
    assert http_get(bare.url("/static/ninja/swagger-ui-bundle.js"))[0] == 200


def get_unredirected(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str]]:
    """(status, headers) of one GET, without following a redirect."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
    try:
        conn.request("GET", parts.path, headers={"Host": "127.0.0.1", **(headers or {})})
        response = conn.getresponse()
        response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}
    finally:
        conn.close()


def test_production_redirects_plain_http_except_health_and_metrics(production_server):
    start, ready = production_server
    # given a production server with its defaults (redirect to https, HSTS) behind a proxy ending TLS
    server = ready(start(SECURE_SSL_REDIRECT="true", FORWARDED_PROTO_HEADER="X-Forwarded-Proto", METRICS_TOKEN=METRICS_TOKEN))
    # then a load balancer's plain-HTTP probe of the health endpoints is answered, not redirected
    for path in ("/health/live", "/health/ready"):
        status, headers = get_unredirected(server.url(path))
        assert status == 200, (path, status, headers)
    # and so is Prometheus' plain-HTTP scrape with the token (without it: 401, not a redirect)
    status, headers = get_unredirected(server.url("/metrics"), {"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert status == 200 and headers["content-type"].startswith("text/plain"), (status, headers)
    assert get_unredirected(server.url("/metrics"))[0] == 401
    # and any other plain-HTTP request is sent to https
    status, headers = get_unredirected(server.url("/api/types"))
    assert status == 301 and headers["location"] == "https://127.0.0.1/api/types", (status, headers)
    # and a request the proxy says came over https is served, with HSTS (a year, subdomains, preload)
    status, headers = get_unredirected(server.url("/api/types"), {"X-Forwarded-Proto": "https"})
    assert status == 401, (status, headers)  # the API's own answer: no token
    assert headers["strict-transport-security"] == "max-age=31536000; includeSubDomains; preload", headers


# What a process of this configuration knows: its apps, job types and subscribers of order.placed.
KNOWN = (
    "import json; from django.conf import settings; from jobs.engine import registry; "
    "from subscribers.registry import matching; "
    "print('KNOWN', json.dumps({'apps': list(settings.INSTALLED_APPS), "
    "'types': [t.name for t in registry.all_types()], "
    "'order.placed': [s.name for s in matching('order.placed')]}), flush=True)"
)
DEMO_TYPES = {"images.resize", "notifications.send-email", "examples.echo", "examples.nightly-report"}


def run_manage(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, MANAGE, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def known(env: dict[str, str]) -> dict:
    out = run_manage("shell", "-c", KNOWN, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(line for line in out.stdout.splitlines() if line.startswith("KNOWN "))
    return json.loads(line[len("KNOWN "):])


def tables(database_url: str) -> set[str]:
    import psycopg

    with psycopg.connect(database_url) as conn:
        return {row[0] for row in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}


def test_production_installs_the_demo_slice_only_with_conveyor_demo(empty_database):
    # given production processes, without CONVEYOR_DEMO and with CONVEYOR_DEMO=true
    plain, demo = production_env(empty_database), production_env(empty_database, CONVEYOR_DEMO="true")

    # then without it, the demo's app, job types and subscribers are unknown; the platform's are there
    without = known(plain)
    assert "examples" not in without["apps"]
    assert not DEMO_TYPES & set(without["types"]), without["types"]
    assert not [name for name in without["types"] if "examples" in name or "shop." in name], without["types"]
    assert "conveyor.cleanup" in without["types"]
    assert without["order.placed"] == []

    # and the release step works without it: migrate creates the platform's tables, not the demo's
    release = run_manage("migrate", "--no-input", env=plain)
    assert release.returncode == 0, release.stderr[-3000:]
    created = tables(empty_database)
    assert {"jobs_job", "jobs_chain", "subscribers_event", "django_celery_beat_periodictask"} <= created, created
    assert not [table for table in created if table.startswith("examples_")], created
    synced = run_manage("sync_schedules", env=plain)
    assert synced.returncode == 0, synced.stderr[-3000:]
    assert "examples.nightly-report" not in synced.stdout + synced.stderr

    # and with CONVEYOR_DEMO=true the slice is installed: types, subscribers and, after migrate, tables
    with_demo = known(demo)
    assert "examples" in with_demo["apps"]
    assert DEMO_TYPES <= set(with_demo["types"]), with_demo["types"]
    assert with_demo["order.placed"], with_demo
    release = run_manage("migrate", "--no-input", env=demo)
    assert release.returncode == 0, release.stderr[-3000:]
    assert [table for table in tables(empty_database) if table.startswith("examples_")]
