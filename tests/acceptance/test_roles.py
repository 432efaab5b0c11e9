"""`manage.py start` in each WORKER_MODE, as real processes on the embedded servers."""
from __future__ import annotations

import http.cookiejar
import json
import re
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import psutil
import pytest
from django.contrib.auth import get_user_model

from jobs.models import Job, Status
from tests.factories import api_token
from tests.support import MANAGE, ROOT, LiveEnv, http_get, http_ok, queue_length, wait_for

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True, databases="__all__")]


def post_job(base: str, token: str, body: dict) -> dict:
    """POST /api/jobs on the server at `base` (http://127.0.0.1:PORT); its 201 answer."""
    request = urllib.request.Request(
        f"{base}/api/jobs", data=json.dumps(body).encode(), method="POST",
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
    job = post_job(server.url(""), token, {"type": "examples.echo", "input": {"n": 1}})
    # then the message waits in Redis and the row stays pending: a server consumes nothing
    time.sleep(2)
    assert queue_length("default") == 1
    assert Job.objects.get(pk=job["id"]).status == Status.PENDING
    assert http_get(server.url("/health/ready"))[0] == 200


def test_worker_consumes_and_opens_no_http_port(live):
    # given a message waiting in the queue, published by a server
    server = live.start(mode="server")
    job = post_job(server.url(""), api_token(), {"type": "examples.echo", "input": {"n": 2}})
    # when a worker-mode instance starts
    worker = live.start(mode="worker")
    # then it runs the job, and neither it nor its children listen on any TCP port
    wait_for(lambda: Job.objects.get(pk=job["id"]).status == Status.SUCCEEDED, 30, what="the job to succeed")
    assert listening_ports(worker.process.pid) == set()
    assert listening_ports(server.process.pid) == {server.port}




def test_admin_disabled_is_404(live):
    server = live.start(mode="server", env={"ADMIN_DISABLED": "true"})
    assert http_get(server.url("/admin/login/"))[0] == 404
    assert http_get(server.url("/health/live"))[0] == 200


def test_worker_mode_mounts_no_admin():
    # Worker mode serves no HTTP at all; its URLconf has no admin either.
    code = (
        "from django.urls import resolve, Resolver404\ntry:\n resolve('/admin/')\n print('mounted')\nexcept Resolver404:\n print('absent')"
    )
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
        wait_for(lambda: http_ok(f"http://127.0.0.1:{port}/health/ready"), 60, interval=0.3, what="honcho's web to be ready")
        token = api_token()
        job_id = post_job(f"http://127.0.0.1:{port}", token, {"type": "examples.echo", "input": {"via": "honcho"}})["id"]
        wait_for(lambda: Job.objects.filter(pk=job_id, status=Status.SUCCEEDED).exists(), 60, what="the job to run")
    finally:
        os.killpg(honcho.pid, signal.SIGINT)
        try:
            honcho.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(honcho.pid, signal.SIGKILL)
            honcho.wait(5)


# Services nothing answers for, named with a user, a password and a host an answer must not show.
UNREACHABLE = {
    "redis": {"REDIS_URL": "redis://redisuser:redispass@127.0.0.1:1/0"},
    "postgres": {"DATABASE_URL": "postgresql://conveyor_dbuser:dbpass@127.0.0.1:1/conveyor_db"},
}


def test_ready_is_503_naming_the_part_that_does_not_answer_without_its_details(live):
    # given two servers: one whose Redis is unreachable, one whose PostgreSQL is (nothing listens on port 1)
    servers = {part: live.start(mode="server", name=f"no-{part}", wait=False, env=env) for part, env in UNREACHABLE.items()}
    for part, server in servers.items():
        wait_for(lambda: http_ok(server.url("/health/live")), 60, interval=0.3, what=f"the server without {part} to answer")
        # then it is live but not ready, and names the failing part and nothing else
        status, body = http_get(server.url("/health/ready"))
        assert status == 503
        assert json.loads(body) == {"status": "unavailable", "failing": {part: "unreachable"}}
        # no URL, host, port, user, password, database or exception text
        text = body.decode().lower()
        for detail in (
            "127.0.0.1",
            ":1",
            "redisuser",
            "redispass",
            "conveyor_dbuser",
            "dbpass",
            "conveyor_db",
            "error",
            "refused",
            "connect",
            "exception",
        ):
            assert detail not in text, (detail, text)
        # and the exception is in the server's log, with the part it concerns
        wait_for(lambda: f"not ready: {part} unreachable (" in server.log(), 10, what=f"the {part} failure in the log")
        line = next(line for line in server.log().splitlines() if f"not ready: {part} unreachable (" in line)
        assert "WARNING" in line and ("refused" in line.lower() or "connect" in line.lower()), line


def spin_processes(count: int, seconds: float) -> list[subprocess.Popen]:
    """`count` normal-priority processes that keep a core busy for `seconds` each."""
    code = f"import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end:\n    pass\n"
    return [subprocess.Popen([sys.executable, "-c", code]) for _ in range(count)]


def thread_policies(pid: int) -> dict[str, int]:
    """The kernel's name of each thread of a process (/proc/<pid>/task/<tid>/comm) -> its scheduling policy
    (the main thread under the name "main")."""
    import os

    policies = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        name = "main" if int(tid) == pid else open(f"/proc/{pid}/task/{tid}/comm").read().strip()
        policies[name] = os.sched_getscheduler(int(tid))
    return policies


def thread_ids(pid: int) -> dict[str, int]:
    """The kernel's name of each thread of a process -> its thread id."""
    import os

    return {open(f"/proc/{pid}/task/{tid}/comm").read().strip(): int(tid) for tid in os.listdir(f"/proc/{pid}/task")}


def cpu_group(pid: int, tid: int) -> str:
    """The cpu controller's cgroup of one thread (/proc/<pid>/task/<tid>/cgroup)."""
    for line in open(f"/proc/{pid}/task/{tid}/cgroup"):
        _, controllers, path = line.strip().split(":", 2)
        if "cpu" in controllers.split(","):
            return path
    return "/"


def test_idle_cpu_policy_runs_jobs_at_sched_idle_and_keeps_their_lease_while_the_cpu_is_saturated(live):
    import os

    from django.conf import settings

    from jobs import enqueue

    lease = int(live.env()["CONVEYOR_LEASE_SECONDS"])
    # given a worker whose job processes run at WORKER_CPU_POLICY=idle (one prefork process)
    worker = live.start("--concurrency", "1", mode="worker", env={"WORKER_CPU_POLICY": "idle"})
    # and a pure-Python CPU-bound job (it holds the GIL) running there
    job = enqueue("examples.burn", {"cpu_seconds": 1.5})
    running = wait_for(lambda: Job.objects.filter(pk=job.pk, status=Status.RUNNING).first(), 30, interval=0.02, what="the job to run")
    pid = int(running.worker.split("/")[1])
    # when normal-priority processes saturate every core for longer than the lease
    saturate = lease + 1.5
    spinners = spin_processes((os.cpu_count() or 1) + 1, saturate)
    try:
        # then the job's process runs it at SCHED_IDLE, its heartbeat thread at the normal policy,
        # and the worker's main process (it takes the messages, reaps) stays normal
        policies = thread_policies(pid)
        assert policies["main"] == os.SCHED_IDLE, policies
        assert policies["cv-heartbeat"] == os.SCHED_OTHER, policies
        main = psutil.Process(pid).ppid()
        assert os.sched_getscheduler(main) == os.SCHED_OTHER
        # and, beside cgroup v1's cpu controller, the job thread (only it) is in the idle cgroup,
        # so the worker yields to the other sessions' autogroups too; else, where autogroup is on,
        # the worker's session yields as a whole
        from jobs.engine import cpu_policy

        if cpu_policy.idle_cgroup() is not None:
            assert cpu_group(pid, pid) == "/" + cpu_policy.IDLE_CGROUP
            assert open(f"{cpu_policy.idle_cgroup()}/cpu.idle").read().strip() == "1"
            assert cpu_group(pid, thread_ids(pid)["cv-heartbeat"]) == "/" and cpu_group(main, main) == "/"
        elif open("/proc/sys/kernel/sched_autogroup_enabled").read().strip() == "1":
            assert open(f"/proc/{main}/autogroup").read().split()[-1] == "19"
        # and the lease never lapses: the job stays running, in its first attempt
        end = time.monotonic() + saturate - 0.5
        while time.monotonic() < end:
            row = Job.objects.get(pk=job.pk)
            assert row.status == Status.RUNNING and row.attempt == 1, (row.status, row.attempt)
            time.sleep(0.2)
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
    # and it ends succeeded in its first attempt, having run under SCHED_IDLE
    done = wait_for(lambda: Job.objects.filter(pk=job.pk).exclude(status=Status.RUNNING).first(), 30, what="the job to end")
    assert (done.status, done.attempt) == (Status.SUCCEEDED, 1), (done.status, done.attempt, done.error)
    assert done.output["idle"] is True and done.output["pid"] == pid, done.output
    assert settings.WORKER_CPU_POLICY == "normal"  # the test process itself was never switched
    assert worker.alive()
    # and once the worker has stopped, the idle cgroup is removed (unless another idle worker of
    # the suite, bench.cluster's smoke, has threads in it)
    from jobs.engine import cpu_policy

    group = cpu_policy.idle_cgroup()
    if group is not None:
        worker.stop()

        # (a thread of this worker's on its way out is not another's: starved at the idle
        # priority, it may take seconds to leave, and the remover waits for it)
        def removed_or_used_by_another() -> bool:
            if not os.path.isdir(group):
                return True
            return any(not cpu_policy._thread_leaving(tid) for tid in open(f"{group}/tasks").read().split())
        wait_for(removed_or_used_by_another, cpu_policy.LEAVING_PATIENCE + 5, what="the idle cgroup to be removed")


# --- on the module's shared-mode instance: last, as it consumes every queue from its first user to
# the module's end (the tests above count messages left waiting, or run their jobs on their own workers)


@pytest.fixture(scope="module")
def shared(django_db_setup, django_db_blocker):
    """A shared-mode instance (it serves HTTP and consumes) for the module's last tests."""
    with django_db_blocker.unblock():
        env = LiveEnv()
        env.flush_redis()
        try:
            yield env.start(mode="shared")
        finally:
            env.discard()
            env.flush_redis()


def test_shared_mode_serves_and_consumes(shared):
    job = post_job(shared.url(""), api_token(), {"type": "examples.echo", "input": {"n": 3}})
    done = wait_for(lambda: Job.objects.filter(pk=job["id"], status=Status.SUCCEEDED).first(), 30, what="the job")
    assert done.output == {"n": 3}
    assert http_get(shared.url("/health/live"))[0] == 200


def test_admin_login_renders_in_shared_mode(shared):
    # given the module's shared-mode instance (it serves HTTP and consumes) and a staff user
    get_user_model().objects.create_superuser("ops", "ops@example.com", "a-long-test-password")
    browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))

    # then /admin/login/ is Django admin's login form
    with browser.open(shared.url("/admin/login/?next=/admin/"), timeout=10) as response:
        assert response.status == 200
        page = response.read().decode()
    assert re.search(r"<title>Log in \| [^<]*</title>", page), page[:500]
    assert 'id="login-form"' in page and 'name="username"' in page and 'name="password"' in page
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
    assert token, "no CSRF token in the login form"

    # and logging in through it as the staff user opens the admin index, with the jobs admin
    form = urllib.parse.urlencode(
        {"csrfmiddlewaretoken": token.group(1), "username": "ops", "password": "a-long-test-password", "next": "/admin/"}
    )
    with browser.open(
        urllib.request.Request(shared.url("/admin/login/?next=/admin/"), data=form.encode(), method="POST"), timeout=10
    ) as response:
        assert response.status == 200
        assert urllib.parse.urlsplit(response.url).path == "/admin/", response.url  # redirected: logged in
        index = response.read().decode()
    assert 'href="/admin/jobs/job/"' in index and 'href="/admin/jobs/chain/"' in index
    with browser.open(shared.url("/admin/jobs/job/"), timeout=10) as response:
        assert response.status == 200 and 'id="changelist"' in response.read().decode()
