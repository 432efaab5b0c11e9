"""`manage.py start --cluster`: the split of roles, restarts, and draining on SIGTERM."""
from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.db.models import Count

from examples.models import Effect
from jobs import Step, enqueue_many
from jobs.models import Job, Status
from tests.support import MANAGE, ROOT, http_get, wait_for

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True, databases="__all__")]

LIGHT = ("--web-concurrency", "1", "--concurrency", "1", "--no-beat")


def start_cluster(live, *args: str, workers: int, http: bool, env: dict[str, str] | None = None):
    proc = live.start(*args, wait=False, env=env)
    proc.log_markers = workers
    if not http:
        proc.port = None
    return proc.wait_ready(timeout=120)


def status(live) -> list[dict]:
    out = subprocess.run([sys.executable, MANAGE, "status", "--json"], cwd=ROOT, env=live.env(), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["instances"]


def roles_of(instances: list[dict], supervisor: int) -> dict[str, int]:
    """Instances by role: a shared instance has a web and a worker child, counted once."""
    names = {c["name"].split("/")[0]: c["role"] for c in instances if c["supervisor"] == supervisor and c["role"] != "beat"}
    counts: dict[str, int] = {}
    for role in names.values():
        counts[role] = counts.get(role, 0) + 1
    return counts


@pytest.mark.parametrize(
    ("split", "expected"),
    [
        (("--servers", "25%", "--workers", "75%"), {"server": 1, "worker": 3}),
        (("--servers", "1", "--workers", "3"), {"server": 1, "worker": 3}),
        (("--servers", "1", "--workers", "1"), {"server": 1, "worker": 1, "shared": 2}),
    ],
)
def test_each_split_starts_the_right_roles(live, split, expected):
    # given a cluster of 4 with a split
    proc = start_cluster(live, "--cluster", "4", *split, *LIGHT, workers=expected.get("worker", 0) + expected.get("shared", 0), http=True)
    # then status lists that many instances of each role, each worker with its own node name
    instances = status(live)
    assert roles_of(instances, proc.process.pid) == expected
    nodes = [c["node"] for c in instances if c.get("node")]
    assert len(nodes) == len(set(nodes)) == expected.get("worker", 0) + expected.get("shared", 0)
    assert all(c["alive"] for c in instances)
    # and every HTTP instance serves the one port
    assert http_get(proc.url("/health/ready"))[0] == 200


def test_refused_splits_exit_2_before_starting(live):
    for split in (
        ["--cluster", "4", "--servers", "3", "--workers", "2"],
        ["--cluster", "0"],
        ["--cluster", "2", "--servers", "150%"],
        ["--servers", "1"],
    ):
        out = subprocess.run(
            [sys.executable, MANAGE, "start", *split],
            cwd=ROOT,
            env=live.env(),
            capture_output=True,
            text=True,
            timeout=60,
            start_new_session=True,
        )
        assert out.returncode == 2, (split, out.stderr)
        assert "Traceback" not in out.stderr and out.stderr.strip()


def test_a_killed_worker_is_restarted_and_its_jobs_complete(live):
    # given a cluster of two workers running slow jobs
    proc = start_cluster(
        live, "--cluster", "2", "--workers", "2", "--pool", "threads", "--concurrency", "4", "--no-beat", workers=2, http=False
    )
    jobs = enqueue_many([Step("examples.count", {"sleep": 3}) for _ in range(6)])
    wait_for(lambda: Job.objects.filter(status=Status.RUNNING).count() >= 4, 30, what="jobs to be running")
    # (on a busy machine one worker may consume before the other: wait until the victim holds jobs)
    victim = wait_for(
        lambda: next((c for c in status(live) if c["name"] == "worker-1/worker" and c["jobs"]), None), 30,
        what="worker-1 to be running jobs",
    )
    assert victim["jobs"], "the worker to kill should be running jobs"
    # when the worker child is killed with SIGKILL
    os.kill(victim["pid"], signal.SIGKILL)
    # then the supervisor restarts it (a new pid) ...
    def restarted():
        child = next((c for c in status(live) if c["name"] == "worker-1/worker"), None)
        return child and child["pid"] != victim["pid"] and child["alive"] and child["restarts"] == 1
    wait_for(restarted, 30, what="the worker to be restarted")
    assert "restarting in" in proc.log()
    # ... and every job completes, each with exactly one recorded run
    ids = [job.pk for job in jobs]
    wait_for(lambda: Job.objects.filter(pk__in=ids, status=Status.SUCCEEDED).count() == 6, 60, what="all jobs to succeed")
    runs = dict(Effect.objects.filter(job_id__in=ids).values_list("job_id").annotate(n=Count("id")))
    assert runs == {i: 1 for i in ids}


def test_sigterm_drains_within_grace_and_a_new_start_completes_every_job_once(live):
    JOBS = 40  # twice the slots: running ones handed back, waiting ones never started (100 took 3 more waves of 2 s)
    # given 40 jobs of 2 s on a cluster of two threaded workers (20 at once: as many wait behind them)
    args = ("--cluster", "2", "--workers", "2", "--pool", "threads", "--concurrency", "10", "--no-beat", "--grace", "1")
    proc = start_cluster(live, *args, workers=2, http=False)
    ids = [job.pk for job in enqueue_many([Step("examples.count", {"sleep": 2}) for _ in range(JOBS)])]
    wait_for(lambda: Job.objects.filter(status=Status.RUNNING).count() >= 10, 30, what="jobs to be running")
    # when it gets SIGTERM, with a grace period shorter than the jobs
    started = time.monotonic()
    proc.process.send_signal(signal.SIGTERM)
    code = proc.process.wait(30)
    # then it exits 0 within the grace period (plus the time to kill and hand back)
    assert code == 0, proc.log()[-3000:]
    assert time.monotonic() - started < 1 + 5
    # and nothing is left running: unfinished jobs were handed back to pending
    assert Job.objects.filter(pk__in=ids, status=Status.RUNNING).count() == 0
    handed_back = Job.objects.filter(pk__in=ids, status=Status.PENDING, error__startswith="handed back").count()
    assert handed_back > 0
    # when a new cluster starts, every job completes exactly once
    live.procs.remove(proc)
    start_cluster(live, *args[:-2], workers=2, http=False)
    wait_for(lambda: Job.objects.filter(pk__in=ids, status=Status.SUCCEEDED).count() == JOBS, 90, what=f"all {JOBS} jobs to succeed")
    runs = dict(Effect.objects.filter(job_id__in=ids).values_list("job_id").annotate(n=Count("id")))
    assert runs == {i: 1 for i in ids}
    # and a handed-back attempt was not counted against the budget (examples.count: 4 attempts,
    # one used), though its number is not reused: it got one attempt more instead
    budgets = Job.objects.filter(pk__in=ids).values_list("attempt", "max_attempts")
    assert {max_attempts - attempt for attempt, max_attempts in budgets} == {3}
    assert Job.objects.filter(pk__in=ids, attempt=2, max_attempts=5).count() == handed_back


def _stamp(log: str, marker: str, last: bool = False) -> float:
    """The time (s since the epoch) of the first (last) log line containing `marker`."""
    lines = [line for line in log.splitlines() if marker in line and line[:4].isdigit()]
    assert lines, f"no log line says {marker!r}"
    return dt.datetime.strptime((lines[-1] if last else lines[0])[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()


def test_autoscale_grows_workers_for_a_burst_and_shrinks_back_running_every_job_once(live):
    # given a cluster whose worker instances autoscale between 1 and 3 (one job at once each),
    # reading the queues every 0.5 s and shrinking after 2 s of less work
    args = ("--cluster", "1", "--workers", "1", "--autoscale", "1,3", "--autoscale-interval", "0.5", "--shrink-after", "2",
            "--pool", "threads", "--concurrency", "1", "--no-beat", "--grace", "10")
    proc = start_cluster(live, *args, workers=1, http=False)
    state = Path(live.env()["CONVEYOR_DATA"]) / "run" / f"supervisor-{proc.process.pid}.json"

    def workers() -> list[str]:
        """The pool as the supervisor's plan has it (retiring ones apart)."""
        try:
            children = json.loads(state.read_text())["children"]
        except (FileNotFoundError, json.JSONDecodeError):  # (between its write and its rename)
            return []
        return sorted(c["name"] for c in children if c["role"] == "worker" and not c.get("retiring"))

    assert workers() == ["worker-1/worker"]
    # when a burst of 12 one-second jobs arrives
    burst = time.time()
    ids = [job.pk for job in enqueue_many([Step("examples.count", {"sleep": 1}) for _ in range(12)])]
    # then the supervisor grows to MAX at once (3 workers), and the added ones take jobs
    wait_for(lambda: len(workers()) == 3, 30, what="the workers to grow to 3")
    wait_for(lambda: Job.objects.filter(pk__in=ids, status=Status.SUCCEEDED).count() == 12, 60, what="the burst to succeed")
    log = proc.log()
    assert "autoscale: grow: 12 wanted: 1 -> 3 worker(s)" in log
    assert log.count(" ready.") >= 3  # the added workers consumed
    # (they took jobs, unless the burst was over before the first of them was ready: a very loaded machine)
    added_ready = dt.datetime.fromtimestamp(
        min(_stamp(log, f"worker-{n}@{proc.name}@test ready.") for n in (2, 3)), tz=dt.timezone.utc)
    if Job.objects.filter(pk__in=ids, started_at__gt=added_ready + dt.timedelta(seconds=0.5)).count() >= 2:
        assert len(set(Job.objects.filter(pk__in=ids).values_list("worker", flat=True))) >= 2  # not the first worker alone
    # and once the queue stayed empty for --shrink-after, it shrinks back to MIN, draining the newest first
    wait_for(lambda: workers() == ["worker-1/worker"] and "retired worker-2/worker" in proc.log(), 30,
             what="the workers to shrink to 1, drained")
    log = proc.log()
    assert "autoscale: shrink" in log and "-> 1 worker(s)" in log
    assert _stamp(log, "retiring worker-3/worker") <= _stamp(log, "retiring worker-2/worker")
    assert "handed back" not in log  # drained: nothing was running, nothing to hand back
    # and every job ran exactly once
    runs = dict(Effect.objects.filter(job_id__in=ids).values_list("job_id").annotate(n=Count("id")))
    assert runs == {i: 1 for i in ids}
    # (the figures, from the log: decision, workers consuming, back to MIN)
    decided, ready = _stamp(log, "autoscale: grow") - burst, _stamp(log, " ready.", last=True) - burst
    shrunk = _stamp(log, "retired worker-2/worker") - _stamp(log, "examples.count", last=True)
    print(f"\nautoscale: grow decided {decided:.1f}s after the burst, 3 workers consuming after {ready:.1f}s; "
          f"back to 1 worker {shrunk:.1f}s after the last job (--shrink-after 2)")
