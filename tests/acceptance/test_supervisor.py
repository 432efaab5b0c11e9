"""Issue 10 C-F: the `start` supervisor with real processes and real signals.

C  SIGHUP drains like SIGTERM.
D  a child that keeps crashing is restarted with capped backoff; the instance does not give up.
E  a second `start` on a port already served is refused (exit 2) before starting anything.
F  two supervisors with one WORKER_ID hand back only their own start's jobs.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from jobs import enqueue
from jobs.models import Job, Status
from tests.support import MANAGE, ROOT, http_get, kill_tree, wait_for

pytestmark = [pytest.mark.live]
LIVE_DB = pytest.mark.django_db(transaction=True, databases="__all__")


def wait_job(job_id: int, status: str, timeout: float) -> Job:
    wait_for(
        lambda: Job.objects.filter(pk=job_id, status=status).exists(),
        timeout,
        what=f"job {job_id} to be {status} (now {Job.objects.get(pk=job_id).status})",
    )
    return Job.objects.get(pk=job_id)


def celery_children(supervisor_pid: int) -> list[psutil.Process]:
    """The Celery worker main processes a supervisor started (its direct children)."""
    found = []
    for child in psutil.Process(supervisor_pid).children():
        try:
            argv = child.cmdline()
        except psutil.NoSuchProcess:
            continue
        if "celery" in argv and "worker" in argv:
            found.append(child)
    return found


def tree(pid: int) -> set[int]:
    try:
        return {pid, *(p.pid for p in psutil.Process(pid).children(recursive=True))}
    except psutil.NoSuchProcess:
        return set()


# --- C. SIGHUP ------------------------------------------------------------------------------------


@LIVE_DB
def test_supervisor_drains_on_sighup(live):
    # given a worker-mode start running a 2 s job
    proc = live.start("--concurrency", "1", mode="worker", name="hup")
    job = enqueue("examples.count", {"sleep": 2})
    wait_job(job.pk, Status.RUNNING, 30)
    # when the supervisor gets SIGHUP (its terminal went away)
    proc.process.send_signal(signal.SIGHUP)
    # then it drains like on SIGTERM: the job finishes and records, and it exits 0
    try:
        code = proc.process.wait(30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the supervisor did not exit within 30 s of SIGHUP:\n{proc.log()[-3000:]}")
    assert code == 0, f"exit code {code}:\n{proc.log()[-3000:]}"
    assert "received SIGHUP: draining" in proc.log()
    job = Job.objects.get(pk=job.pk)
    assert (job.status, job.attempt) == (Status.SUCCEEDED, 1)


@LIVE_DB
def test_a_worker_whose_supervisor_is_killed_ends_its_drain_within_the_grace(live):
    # given a worker-mode start (grace 2 s) running a long job
    proc = live.start("--concurrency", "1", "--grace", "2", mode="worker", name="orphaned")
    job = enqueue("examples.sleep", {"seconds": 60})
    wait_job(job.pk, Status.RUNNING, 30)
    [celery] = celery_children(proc.process.pid)
    pool = celery.children(recursive=True)
    # when its supervisor is killed outright (honcho sends SIGKILL 5 s after its SIGTERM: the
    # README's `honcho start` stopped with Ctrl-C; or kill -9): the worker gets SIGTERM
    # (parent-death signal) and drains, with nobody left to end the drain at the grace
    proc.process.send_signal(signal.SIGKILL)
    # then it ends itself and its pool once the grace has passed, not when the 60 s job ends ...
    _, alive = psutil.wait_procs([celery, *pool], timeout=20)
    assert not alive, f"still running 20 s after the supervisor's end: {alive}\n{proc.log()[-2000:]}"
    assert "its supervisor (pid" in proc.log() and "killed, its jobs handed back" in proc.log()
    # ... and hands its job back as the supervisor would have: pending, the attempt given back
    row = wait_job(job.pk, Status.PENDING, 10)
    assert (row.crashes, row.max_attempts) == (0, job.max_attempts + 1), (row.crashes, row.max_attempts)


# --- D. a child that keeps crashing -------------------------------------------------------------

CRASHING = textwrap.dedent(
    """
    import logging, sys
    from pathlib import Path
    from project import supervisor

    supervisor.BACKOFF_START, supervisor.BACKOFF_MAX = 0.05, 0.2  # quick crashes, quickly
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(levelname)s %(message)s")
    crasher = supervisor.Child("crasher", [sys.executable, "-c", "raise SystemExit(3)"])
    steady = supervisor.Child("steady", [sys.executable, "-c", "import time; time.sleep(120)"])
    sys.exit(supervisor.Supervisor([crasher, steady], grace=5, state_dir=Path(sys.argv[1])).run())
    """
)


def test_five_quick_crashes_of_one_child_do_not_stop_the_instance(tmp_path):
    # given a supervisor with a child that exits at once and a long-lived one
    log_path = tmp_path / "supervisor.log"
    with open(log_path, "wb") as out:
        sup = subprocess.Popen(
            [sys.executable, "-c", CRASHING, str(tmp_path)], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    state_file = tmp_path / f"supervisor-{sup.pid}.json"
    steady_pid = None

    def state() -> dict[str, dict]:
        try:
            return {c["name"]: c for c in json.loads(state_file.read_text())["children"]}
        except (OSError, ValueError, KeyError):
            return {}

    try:
        # when the crashing child has crashed (and been restarted) more than 5 times in a row
        def crashed_often() -> bool:
            assert sup.poll() is None, f"the supervisor exited with {sup.returncode}:\n{log_path.read_text()[-3000:]}"
            children = state()
            return children.get("crasher", {}).get("restarts", 0) >= 7

        wait_for(crashed_often, 30, interval=0.05, what="the crashing child to be restarted 7 times")
        # then the supervisor and its other child still run, and each restart was logged
        time.sleep(0.5)
        assert sup.poll() is None, log_path.read_text()[-3000:]
        steady = state()["steady"]
        steady_pid = steady["pid"]
        assert steady["restarts"] == 0 and psutil.pid_exists(steady["pid"])
        assert psutil.Process(steady["pid"]).status() != psutil.STATUS_ZOMBIE
        log = log_path.read_text()
        assert log.count("restarted crasher") >= 7, log[-3000:]
        assert "giving up" not in log
        # and SIGTERM still stops it all, exit 0
        sup.send_signal(signal.SIGTERM)
        assert sup.wait(15) == 0, log_path.read_text()[-3000:]
        wait_for(lambda: not psutil.pid_exists(steady["pid"]), 10, what="the steady child to stop")
    finally:  # whatever this test started and is still there, by pid
        if sup.poll() is None:
            kill_tree(sup.pid)
            sup.wait(10)
        if steady_pid and psutil.pid_exists(steady_pid) and "time.sleep(120)" in " ".join(psutil.Process(steady_pid).cmdline()):
            os.kill(steady_pid, signal.SIGKILL)


# --- E. a second start on a busy port ----------------------------------------------------------


@LIVE_DB
def test_second_start_on_a_busy_port_is_refused(live):
    # given a server serving a port
    first = live.start("--web-concurrency", "1", mode="server", name="first")
    # when a second start is asked for the same port
    argv = [sys.executable, MANAGE, "start", "--port", str(first.port), "--web-concurrency", "1", "--no-beat"]
    second = subprocess.Popen(
        argv,
        cwd=ROOT,
        env=live.env(WORKER_MODE="server"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = second.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        kill_tree(second.pid)
        out, err = second.communicate(timeout=10)
        pytest.fail(f"the second start was still running after 30 s (sharing port {first.port}):\n{out[-2000:]}{err[-2000:]}")
    finally:
        kill_tree(second.pid)
    # then it exits 2 with one line naming the port, having started nothing
    assert second.returncode == 2, (second.returncode, out, err)
    lines = [line for line in err.splitlines() if line.strip() and "embedded" not in line]
    assert len(lines) == 1 and str(first.port) in lines[0], err
    assert "Traceback" not in err
    assert "pid" not in out  # no child was started (the plan lists each child's pid)
    # and the first server still serves it
    assert http_get(first.url("/health/ready"))[0] == 200


# --- F. two supervisors with one WORKER_ID ---------------------------------------------------------


@LIVE_DB
def test_two_supervisors_with_the_same_worker_id_hand_back_only_their_own_jobs(live):
    # given two worker-mode starts with the same WORKER_ID, one pool process each
    twin = {"WORKER_ID": "twin@test"}
    procs = [live.start("--concurrency", "1", "--grace", "3", mode="worker", name=f"twin-{n}", env=twin, wait=False) for n in "ab"]
    for proc in procs:
        proc.wait_ready()
    # and each running a long job (prefetch 1: a busy worker takes no second message)
    first = enqueue("examples.sleep", {"seconds": 30})
    first = wait_job(first.pk, Status.RUNNING, 30)
    pool_pid = int(first.worker.split("/")[1])
    victim = next(p for p in procs if pool_pid in tree(p.process.pid))
    survivor = next(p for p in procs if p is not victim)
    second = enqueue("examples.sleep", {"seconds": 6})
    second = wait_job(second.pk, Status.RUNNING, 30)
    assert int(second.worker.split("/")[1]) in tree(survivor.process.pid), "both jobs went to one start"
    assert first.worker.split("/")[0] == second.worker.split("/")[0] == "twin@test"

    # when the victim's Celery worker is killed (SIGKILL): its supervisor hands back its jobs
    # (a crash: the interrupted attempt counts)
    [celery] = celery_children(victim.process.pid)
    celery.send_signal(signal.SIGKILL)
    wait_for(
        lambda: Job.objects.get(pk=first.pk).crashes == 1,
        20,
        what="the killed worker's job to be handed back",
    )
    assert Job.objects.get(pk=first.pk).max_attempts == first.max_attempts

    # then the other start's job was left alone: still running, same attempt, no hand-back ...
    row = Job.objects.get(pk=second.pk)
    assert (row.status, row.attempt, row.max_attempts, row.error) == (Status.RUNNING, 1, second.max_attempts, ""), row.error
    assert row.worker == second.worker
    # ... and it finishes, recorded by its first and only attempt
    done = wait_job(second.pk, Status.SUCCEEDED, 20)
    assert done.attempt == 1 and done.output == {"slept": 6}
    assert victim.alive() and survivor.alive()
