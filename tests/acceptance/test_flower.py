"""Flower shows jobs as jobs: a real platform worker and a real Flower process (`celery -A project
flower`, as the Procfile runs it), read through Flower's own HTTP API (`/api/tasks`,
`/api/task/info/<id>`) with basic auth. Each task is named by its job type (Celery's `shadow`),
shows the job id and its chain in its arguments, and ends SUCCESS (with the attempt in its
result), FAILURE (a dead job: the exception names the job, the attempt and the outcome) or
REVOKED (a job cancelled while it ran), while PostgreSQL keeps the record.
"""
from __future__ import annotations

import base64
import datetime as dt
import secrets
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from django.db import transaction

from jobs import Step, enqueue, start_chain
from jobs.engine.control import cancel
from jobs.models import Job, Status
from jobs.engine.publish import Message, publish
from tests.support import ROOT, all_messages_consumed, free_port, http_get, http_ok, kill_tree, redis_client, wait_for, wait_job

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True, databases="__all__")]

AUTH = "flower-test:a-long-flower-password"
HEADERS = {"Authorization": "Basic " + base64.b64encode(AUTH.encode()).decode()}


@pytest.fixture
def flower(live):  # the base URL of a running Flower
    """The Procfile's `flower` line (`python manage.py flower`, which becomes `celery -A project
    flower ...` on 127.0.0.1) on a free port, in its own session; stopped by its pid afterwards."""
    port = free_port()
    log_path = Path(os.environ["CONVEYOR_DATA"]) / f"flower-{port}.log"
    argv = procfile_command("flower")
    assert argv == [sys.executable, "manage.py", "flower"], argv
    with open(log_path, "wb") as out:
        process = subprocess.Popen(argv, cwd=ROOT, env=live.env(FLOWER_BASIC_AUTH=AUTH, FLOWER_PORT=str(port)), stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        def up() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"flower exited with {process.returncode}:\n{log_path.read_text(errors='replace')[-4000:]}")
            return http_ok(f"{url}/healthcheck")
        wait_for(up, 60, interval=0.2, what="flower to answer /healthcheck")
        yield url
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                kill_tree(process.pid)
                process.wait(10)


def procfile_command(process: str, **variables: str) -> list[str]:
    """A Procfile line as argv: `${NAME:-default}` expanded from `variables`, `python` this one."""
    for line in (ROOT / "Procfile").read_text().splitlines():
        name, _, command = line.partition(":")
        if name.strip() == process:
            command = re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: variables.get(m[1], m[2]), command)
            argv = shlex.split(command)
            return [sys.executable if argv[0] == "python" else argv[0], *argv[1:]]
    raise AssertionError(f"no {process!r} line in the Procfile")


def http_post_json(url: str, document: object) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=json.dumps(document).encode(), method="POST",
                                     headers={**HEADERS, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def flower_json(url: str) -> object:
    status, body = http_get(url, headers=HEADERS)
    assert status == 200, (status, body[:500])
    return json.loads(body)


def tasks_of(base: str, job_id: int) -> list[dict]:
    """Flower's tasks whose arguments are this job's id (args "(12,)")."""
    tasks = flower_json(f"{base}/api/tasks")
    return [task for task in tasks.values() if task.get("args") == f"({job_id},)"]


def final(base: str, job_id: int, state: str) -> dict:
    """The task of `job_id` that ran (not a skipped duplicate) once Flower shows it in `state`,
    read from /api/task/info."""
    def seen() -> dict | None:
        found = [t for t in tasks_of(base, job_id) if t["state"] == state]
        return found[0] if found else None
    task = wait_for(seen, 30, interval=0.2, what=f"flower to show job {job_id}'s task as {state}")
    return flower_json(f"{base}/api/task/info/{task['uuid']}")


def events_counted(base: str, task: str, event: str) -> float:
    """Flower's count of `event`s of `task` (its Prometheus counter: what its "Succeeded" sums)."""
    text = http_get(f"{base}/metrics")[1].decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("flower_events_total{") and f'task="{task}"' in line and f'type="{event}"' in line)


def shown_ping(base: str, attempts: int = 10) -> int:
    """Enqueue pings until Flower shows one as SUCCESS (the worker's task events are on); its id."""
    for _ in range(attempts):
        ping = enqueue("examples.ping", {})
        wait_job(ping.pk, Status.SUCCEEDED, 30)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            if any(t["state"] == "SUCCESS" for t in tasks_of(base, ping.pk)):
                return ping.pk
            time.sleep(0.2)
    raise AssertionError(f"flower showed none of {attempts} pings: the worker's task events stayed off")


@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_flower_names_each_job_by_type_and_shows_success_failure_and_revoked(live, flower, pool):
    # given a platform worker, and a Flower that already receives its events (its Prometheus
    # metrics count the worker online once a heartbeat event arrived)
    live.start("--pool", pool, "--concurrency", "2", mode="worker", name="flower-worker")
    wait_for(lambda: b"flower_worker_online{worker=\"flower-worker@test\"} 1.0" in http_get(f"{flower}/metrics")[1],
             30, interval=0.5, what="flower to receive the worker's heartbeat events")
    # and the worker, started without task events (TASK_EVENTS is off), sends them once Flower
    # asked for them (every 2 s): a ping run after that shows in Flower
    assert "task events: OFF" in live.procs[0].log()
    shown_ping(flower)

    # when a job succeeds, in a chain of two steps
    chain = start_chain([Step("examples.echo", {"hello": "flower"}), Step("examples.ping", {})])
    echo = Job.objects.get(chain=chain, chain_index=0)
    wait_job(echo.pk, Status.SUCCEEDED, 30)
    # and a job fails its only attempt (dead)
    doomed = enqueue("examples.fail", {"times": 100}, retries=0)
    wait_job(doomed.pk, Status.DEAD, 30)
    # and a job fails its first attempt and succeeds on its second
    flaky = enqueue("examples.fail", {"times": 1}, retries=1)
    wait_job(flaky.pk, Status.SUCCEEDED, 30)
    # and a duplicate message of the succeeded job arrives (it claims nothing)
    assert publish([Message.of(Job.objects.get(pk=echo.pk))]) == 1
    # and a job is cancelled before it ran: its message arrives after the cancel (on commit)
    with transaction.atomic():
        never = enqueue("examples.ping", {})
        assert cancel(Job.objects.get(pk=never.pk)) is True
    # and a job is cancelled while it runs
    sleeper = enqueue("examples.sleep", {"seconds": 30})
    wait_for(lambda: Job.objects.filter(pk=sleeper.pk, status=Status.RUNNING).exists(), 30, what="examples.sleep to run")
    # (by Flower's Abort, which is Conveyor's cancel: it answered "Aborted" and nothing happened)
    status, body = http_post_json(f"{flower}/api/task/abort/{sleeper.pk}", {})
    assert (status, json.loads(body)) == (200, {"message": f"Aborted '{sleeper.pk}'"}), (status, body)
    wait_job(sleeper.pk, Status.CANCELLED, 30)

    # then Flower names each task by its job type, shows the job id and its chain in the
    # arguments, and its attempt in the result or the exception
    ok = final(flower, echo.pk, "SUCCESS")
    print("SUCCESS", json.dumps(ok, indent=1, sort_keys=True))
    assert ok["name"] == "examples.echo"
    assert (ok["args"], ok["kwargs"]) == (f"({echo.pk},)", f"{{'chain': {chain.pk}, 'step': 0}}")
    assert ok["result"] == f"'job {echo.pk} attempt 1/{echo.max_attempts} succeeded'"
    assert ok["worker"] == "flower-worker@test"
    # known by the job's id: /api/task/info/<job id> answers (it was 404: a message had a fresh uuid)
    assert ok["uuid"] == str(echo.pk)
    # and /api/task/result/<job id> reads the row (it answered 503: no result backend)
    expected = {"task-id": str(echo.pk), "state": "SUCCESS", "result": {"hello": "flower"}}
    assert flower_json(f"{flower}/api/task/result/{echo.pk}") == expected

    dead = final(flower, doomed.pk, "FAILURE")
    print("FAILURE", json.dumps(dead, indent=1, sort_keys=True))
    assert dead["name"] == "examples.fail"
    assert (dead["args"], dead["kwargs"]) == (f"({doomed.pk},)", "{}")
    assert dead["exception"].startswith(f"JobFailed('job {doomed.pk} attempt 1/1 dead: RuntimeError: examples.fail: failing attempt 1")
    failure = flower_json(f"{flower}/api/task/result/{doomed.pk}")
    assert (failure["task-id"], failure["state"]) == (str(doomed.pk), "FAILURE"), failure
    assert "examples.fail: failing attempt 1" in failure["result"] and "RuntimeError" in failure["traceback"], failure

    # and a job's runs are one task, known by the job's id, as Celery shows a task's retries: the
    # flaky job's failed attempt was RETRY (task-retried), its second run's SUCCESS came after it
    wait_for(lambda: final(flower, flaky.pk, "SUCCESS"), 30, what="flower to show the flaky job's second run")
    [again] = tasks_of(flower, flaky.pk)
    assert (again["uuid"], again["name"], again["state"]) == (str(flaky.pk), "examples.fail", "SUCCESS"), again
    assert again["result"] == f"'job {flaky.pk} attempt 2/2 succeeded'"
    assert events_counted(flower, "examples.fail", "task-retried") == 1  # the flaky job's first attempt
    assert events_counted(flower, "examples.fail", "task-failed") == 1  # the dead job's only attempt

    # and a FAILURE shows its run time, as a SUCCESS does (issue 26: FAILURE rows had none)
    assert isinstance(dead["runtime"], float) and 0 < dead["runtime"] < 30, dead["runtime"]

    # and neither the duplicate message nor the cancelled job's reads as a success (issue 26): SKIPPED,
    # counted in no column of Flower's (its "Succeeded" counts task-succeeded events); the
    # duplicate's skip leaves the job's task as its run ended it (state and result)
    wait_for(lambda: events_counted(flower, "examples.echo", "task-skipped") == 1, 30,
             what="flower to count the duplicate message of the echo job as skipped")
    assert events_counted(flower, "examples.echo", "task-succeeded") == 1
    assert [(t["uuid"], t["state"], t["result"]) for t in tasks_of(flower, echo.pk)] == [(str(echo.pk), "SUCCESS", ok["result"])]
    assert final(flower, never.pk, "SKIPPED")["name"] == "examples.ping"

    stopped = final(flower, sleeper.pk, "REVOKED")
    print("REVOKED", json.dumps(stopped, indent=1, sort_keys=True))
    assert stopped["name"] == "examples.sleep"
    assert stopped["result"] == f"job {sleeper.pk} attempt 1/{sleeper.max_attempts} cancelled"

    # and the next step of the chain shows under its own type, with its step
    ping = Job.objects.get(chain=chain, chain_index=1)
    wait_job(ping.pk, Status.SUCCEEDED, 30)
    step = final(flower, ping.pk, "SUCCESS")
    assert (step["name"], step["kwargs"]) == ("examples.ping", f"{{'chain': {chain.pk}, 'step': 1}}")

    # and Flower's send-task with a job type's name makes the durable job (its input the kwargs): the
    # answer's task-id is the job's id, its state the row's (it sent a Celery message no worker knew)
    status, body = http_post_json(f"{flower}/api/task/send-task/examples.echo", {"kwargs": {"sent": "by flower"}})
    assert status == 200, (status, body)
    sent = json.loads(body)
    assert sent["task-id"].isdigit() and sent["state"] in ("PENDING", "STARTED", "SUCCESS"), sent
    made = wait_job(int(sent["task-id"]), Status.SUCCEEDED, 30)
    assert (made.type, made.input, made.output) == ("examples.echo", {"sent": "by flower"}, {"sent": "by flower"})
    assert final(flower, made.pk, "SUCCESS")["uuid"] == sent["task-id"]
    # and a call it cannot make is refused, no job made (Flower answers any such error 500)
    before = Job.objects.count()
    assert http_post_json(f"{flower}/api/task/send-task/examples.echo", {"args": [1, 2]})[0] == 500
    # and so is a name no worker knows (its message was sent, and discarded as unregistered)
    assert http_post_json(f"{flower}/api/task/send-task/examples.nosuch", {"kwargs": {}})[0] == 500
    assert Job.objects.count() == before

    # and Celery's own commands find the job by its id and call a job type by name, in a process
    # that only built the Celery app (`celery result` failed: Django's apps not loaded)
    if pool == "prefork":
        celery = [sys.executable, "-m", "celery", "-A", "project"]
        shown = subprocess.run([*celery, "result", str(made.pk)], cwd=ROOT, env=live.env(), capture_output=True, text=True, timeout=60)
        assert shown.returncode == 0 and "'sent': 'by flower'" in shown.stdout, (shown.stdout, shown.stderr[-2000:])
        called = subprocess.run([*celery, "call", "examples.echo", "--kwargs", '{"called": "by celery"}'], cwd=ROOT, env=live.env(),
                                capture_output=True, text=True, timeout=60)
        assert called.returncode == 0 and called.stdout.strip().isdigit(), (called.stdout, called.stderr[-2000:])
        assert wait_job(int(called.stdout.strip()), Status.SUCCEEDED, 30).input == {"called": "by celery"}

    # and Flower's revoke of a job's task id discards the message it meets, once: the relay's next
    # message of the job runs it (the id is the job's: kept revoked, every message of it was discarded)
    if pool == "prefork":
        later = enqueue("examples.ping", {}, run_after=dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=2))
        assert http_post_json(f"{flower}/api/task/revoke/{later.pk}", {})[0] == 200
        wait_job(later.pk, Status.SUCCEEDED, 30)
        assert f"Discarding revoked task: examples.ping[{later.pk}]" in live.procs[0].log()

    # and Flower's filters and counts go by job type
    failed = flower_json(f"{flower}/api/tasks?taskname=examples.fail&state=FAILURE")
    assert sorted(t["args"] for t in failed.values()) == [f"({doomed.pk},)"]
    types = flower_json(f"{flower}/api/task/types")
    assert {"examples.echo", "examples.ping", "examples.fail", "examples.sleep"} <= set(types["task-types"])
    assert "conveyor.run" not in types["task-types"]

    # and every message was acked once: nothing is waiting or unacked in Redis, nothing redelivered
    # (a late ack follows the task's event that Flower shows: give the last one its moment)
    client = redis_client()
    wait_for(lambda: client.hlen("unacked") == 0, 10, what="the last message's ack")
    assert sum(client.llen(q if p == 0 else f"{q}:{p}") for q in ("default",) for p in range(10)) == 0
    # and the rows stay the record
    assert Job.objects.get(pk=doomed.pk).attempt == 1
    assert Job.objects.get(pk=sleeper.pk).attempt == 1
    # and the worker's log has one ERROR line for the dead job, and no traceback of it
    worker_log = live.procs[0].log()
    errors = [line for line in worker_log.splitlines() if " ERROR " in line]
    assert len(errors) == 2, errors  # the dead job's attempt and the flaky job's first attempt
    assert any(f"job {doomed.pk} attempt 1/1 dead: RuntimeError: examples.fail" in line for line in errors), errors
    assert any(f"job {flaky.pk} attempt 1/2 failed (retried later)" in line for line in errors), errors
    assert "Traceback" not in worker_log, worker_log[-3000:]
    assert "unregistered task" not in worker_log, worker_log[-3000:]


def test_a_killed_pool_process_still_gives_its_message_back(live):
    """acks_on_failure (for JobFailed) leaves reject_on_worker_lost alone: a message whose pool
    process died mid-run goes back to its queue, as before."""
    # given a prefork worker running a job
    worker = live.start("--pool", "prefork", "--concurrency", "1", mode="worker", name="lost-worker")
    job = enqueue("examples.sleep", {"seconds": 3})
    wait_for(lambda: Job.objects.filter(pk=job.pk, status=Status.RUNNING).exists(), 30, what="examples.sleep to run")
    received = re.compile(r"Task examples\.sleep\[([0-9a-f-]+)\] received")
    [task_id] = received.findall(worker.log())

    # when its pool process is killed (the row names it: node/pid)
    os.kill(int(Job.objects.get(pk=job.pk).worker.split("/")[1]), signal.SIGKILL)

    # then Celery gives the message back (not acked): the worker receives the same task again
    wait_for(lambda: received.findall(worker.log()).count(task_id) == 2, 30, what="the message to be delivered again")
    # and the job completes once its lease lapsed (reaped, published again): attempt 2
    done = wait_job(job.pk, Status.SUCCEEDED, 40)
    assert done.attempt == 2
    wait_for(all_messages_consumed, 10, what="every message to be acked")


PRODUCTION = {
    "CONVEYOR_ENV": "production",
    "COOKIE_SECRET": secrets.token_urlsafe(48),
    "JWT_SECRET": secrets.token_urlsafe(48),
    "ALLOWED_HOSTS": "127.0.0.1",
}


def test_production_flower_refuses_to_start_without_basic_auth(live):
    # given production without FLOWER_BASIC_AUTH (nor an OAuth provider)
    env = {k: v for k, v in live.env(**PRODUCTION).items() if not k.startswith("FLOWER_")}
    # when the Procfile's flower starts
    done = subprocess.run(procfile_command("flower"), cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    # then it exits 2 with one line naming the variable, and started nothing
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "FLOWER_BASIC_AUTH is not set" in lines[0], done.stderr


def test_production_flower_with_basic_auth_answers_401_without_credentials(live):
    # given production with FLOWER_BASIC_AUTH, on a free port (loopback by default)
    port = free_port()
    env = {**live.env(**PRODUCTION), "FLOWER_BASIC_AUTH": AUTH, "FLOWER_PORT": str(port)}
    log_path = Path(os.environ["CONVEYOR_DATA"]) / f"flower-prod-{port}.log"
    with open(log_path, "wb") as out:
        process = subprocess.Popen(procfile_command("flower"), cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        def answers() -> int:
            if process.poll() is not None:
                raise AssertionError(f"flower exited with {process.returncode}:\n{log_path.read_text(errors='replace')[-3000:]}")
            try:
                return http_get(f"http://127.0.0.1:{port}/api/workers", timeout=2)[0]
            except OSError:
                return 0
        # then it answers 401 without credentials, 200 with them
        assert wait_for(answers, 60, interval=0.2, what="flower to answer") == 401
        assert http_get(f"http://127.0.0.1:{port}/api/workers", headers=HEADERS)[0] == 200
        # and it listens on loopback only (Flower is manage.py flower's child)
        import psutil

        command = psutil.Process(process.pid)
        listening = {c.laddr.ip for p in [command, *command.children(recursive=True)] for c in p.net_connections()
                     if c.status == psutil.CONN_LISTEN}
        assert listening == {"127.0.0.1"}, listening
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                kill_tree(process.pid)
                process.wait(10)


def test_stopping_flower_stops_the_embedded_servers_it_started():
    """`manage.py flower` on a machine with no DATABASE_URL / REDIS_URL starts the embedded
    servers (project/embedded.py). It used to exec Flower, whose exit never ran the handles'
    release: the embedded PostgreSQL outlived it (and every later process of the folder)."""
    import tempfile

    from tests.acceptance.test_configuration import _stop_leftovers, embedded_env
    from tests.unit.server_probe import server_traces

    folder = tempfile.mkdtemp(prefix="cvf-", dir="/tmp")
    port = free_port()
    log_path = Path(folder) / "flower.log"
    process = None
    try:
        # given Flower started by the Procfile's command on an empty data folder
        with open(log_path, "wb") as out:
            process = subprocess.Popen(procfile_command("flower"), cwd=ROOT, env={**embedded_env(folder), "FLOWER_PORT": str(port)},
                                       stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        def up() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"flower exited with {process.returncode}:\n{log_path.read_text(errors='replace')[-4000:]}")
            return http_ok(f"http://127.0.0.1:{port}/healthcheck")
        wait_for(up, 90, interval=0.2, what="flower to answer /healthcheck")
        # and running on the embedded servers it started in that folder
        assert any(f"{folder}/postgres" in cmdline for cmdline in server_traces(folder)["processes"])
        # and, in development with no auth on loopback, its HTTP API answers as its pages do (issue 26:
        # it answered 401 asking for FLOWER_UNAUTHENTICATED_API), and the command said so
        assert http_get(f"http://127.0.0.1:{port}/api/workers", timeout=10)[0] == 200
        assert "FLOWER_UNAUTHENTICATED_API=true" in log_path.read_text(errors="replace")

        # when it is stopped by its pid, as a supervisor stops it
        process.send_signal(signal.SIGTERM)
        code = process.wait(30)

        # then it ended as Flower does on SIGTERM, and the servers stopped with it, as their last holder
        assert code in (0, -signal.SIGTERM), (code, log_path.read_text(errors="replace")[-3000:])
        wait_for(lambda: not server_traces(folder)["processes"], 20, interval=0.2,
                 what=f"the embedded servers of {folder} to stop")
        assert not http_ok(f"http://127.0.0.1:{port}/healthcheck")  # and Flower with them
    finally:
        if process is not None and process.poll() is None:
            kill_tree(process.pid)
            process.wait(10)
        _stop_leftovers(folder)
        shutil.rmtree(folder, ignore_errors=True)
