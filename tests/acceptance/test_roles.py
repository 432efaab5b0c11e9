"""`manage.py start` in each WORKER_MODE, as real processes on the embedded servers."""
from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request

import psutil
import pytest

from jobs.models import Job, Status
from tests.factories import api_token
from tests.support import MANAGE, ROOT, http_get, queue_length, wait_for

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True, databases="__all__")]


def post_job(proc, token: str, body: dict) -> dict:
    request = urllib.request.Request(
        proc.url("/api/jobs"), data=json.dumps(body).encode(), method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 201
        return json.loads(response.read())


def listening_ports(pid: int) -> set[int]:
    """TCP ports in LISTEN state held by a process or any of its descendants."""
    root = psutil.Process(pid)
    ports = set()
    for proc in [root, *root.children(recursive=True)]:
        try:
            ports |= {c.laddr.port for c in proc.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN}
        except psutil.NoSuchProcess:
            pass
    return ports


def test_server_serves_http_and_leaves_its_message_unconsumed(live):
    # given a server-mode instance
    server = live.start(mode="server")
    token = api_token()
    # when a job is enqueued through its API
    job = post_job(server, token, {"type": "examples.echo", "input": {"n": 1}})
    # then the message waits in Redis and the row stays pending: a server consumes nothing
    time.sleep(2)
    assert queue_length("default") == 1
    assert Job.objects.get(pk=job["id"]).status == Status.PENDING
    assert http_get(server.url("/health/ready"))[0] == 200


def test_worker_consumes_and_opens_no_http_port(live):
    # given a message waiting in the queue, published by a server
    server = live.start(mode="server")
    job = post_job(server, api_token(), {"type": "examples.echo", "input": {"n": 2}})
    # when a worker-mode instance starts
    worker = live.start(mode="worker")
    # then it runs the job, and neither it nor its children listen on any TCP port
    wait_for(lambda: Job.objects.get(pk=job["id"]).status == Status.SUCCEEDED, 30, what="the job to succeed")
    assert listening_ports(worker.process.pid) == set()
    assert listening_ports(server.process.pid) == {server.port}


def test_shared_mode_serves_and_consumes(live):
    shared = live.start(mode="shared")
    job = post_job(shared, api_token(), {"type": "examples.echo", "input": {"n": 3}})
    done = wait_for(lambda: Job.objects.filter(pk=job["id"], status=Status.SUCCEEDED).first(), 30, what="the job")
    assert done.output == {"n": 3}
    assert http_get(shared.url("/health/live"))[0] == 200


def test_admin_login_renders_in_shared_mode(live):
    shared = live.start(mode="server")
    status, body = http_get(shared.url("/admin/login/"))
    assert status == 200
    assert b"Conveyor" in body or b"Django administration" in body


def test_admin_disabled_is_404(live):
    server = live.start(mode="server", env={"ADMIN_DISABLED": "true"})
    assert http_get(server.url("/admin/login/"))[0] == 404
    assert http_get(server.url("/health/live"))[0] == 200


def test_worker_mode_mounts_no_admin():
    # Worker mode serves no HTTP at all; its URLconf has no admin either.
    code = "from django.urls import resolve, Resolver404\ntry:\n resolve('/admin/')\n print('mounted')\nexcept Resolver404:\n print('absent')"
    env = {**live_env_for_subprocess(), "WORKER_MODE": "worker"}
    out = subprocess.run([sys.executable, MANAGE, "shell", "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip().splitlines()[-1] == "absent", out.stderr


def live_env_for_subprocess() -> dict[str, str]:
    import os

    from django.conf import settings

    return {**os.environ, "DATABASE_URL": settings.DATABASE_URL, "REDIS_URL": settings.REDIS_URL}


def test_honcho_brings_up_the_procfile_roles(live):
    # given the Procfile's long-running lines under honcho, on a free port
    import os
    import signal

    from tests.support import free_port

    port = free_port()
    env = live.env(PATH=f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}")
    env.pop("WORKER_MODE", None)
    honcho = subprocess.Popen(
        [sys.executable, "-m", "honcho", "start", "-p", str(port), "web", "worker", "beat"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        # then web answers on its port, and a job enqueued through it is run by the worker line
        wait_for(lambda: _ready(port), 60, interval=0.3, what="honcho's web to be ready")
        token = api_token()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/jobs", data=json.dumps({"type": "examples.echo", "input": {"via": "honcho"}}).encode(),
            method="POST", headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            job_id = json.loads(response.read())["id"]
        wait_for(lambda: Job.objects.filter(pk=job_id, status=Status.SUCCEEDED).exists(), 60, what="the job to run")
    finally:
        os.killpg(honcho.pid, signal.SIGINT)
        try:
            honcho.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(honcho.pid, signal.SIGKILL)
            honcho.wait(5)


def _ready(port: int) -> bool:
    try:
        return http_get(f"http://127.0.0.1:{port}/health/ready", timeout=2)[0] == 200
    except OSError:
        return False


def test_ready_is_503_naming_the_part_that_does_not_answer(live):
    # given a server whose Redis is unreachable (nothing listens on port 1)
    server = live.start(mode="server", wait=False, env={"REDIS_URL": "redis://127.0.0.1:1/0"})
    wait_for(lambda: _answers(server.url("/health/live")), 60, interval=0.3, what="the server to answer")
    # then it is live but not ready, and says which part fails
    status, body = http_get(server.url("/health/ready"))
    assert status == 503
    report = json.loads(body)
    assert set(report["failing"]) == {"redis"}


def _answers(url: str) -> bool:
    try:
        return http_get(url, timeout=2)[0] == 200
    except OSError:
        return False
