"""Celery's known failure modes, each as a regression test named after its upstream report.

Real `manage.py start` workers (and the beat command `start` runs for its beat child) on the
session's PostgreSQL and Redis, no eager mode and no mocks; tests.support.FAST: a lease lapses
in 3 s, a lost message is sent again after 3 s. docs/architecture.md ("Celery's known failure
modes") lists the reports and what keeps each; django-celery-beat#194 (DST) is a unit test, in
tests/unit/test_tick_time.py.

A test that waits for a broker timeout does not wait an hour: where Redis's visibility timeout
(at least 60 s, CONVEYOR_VISIBILITY_TIMEOUT) matters, the test moves kombu's own record of when a
message was taken (the `unacked_index` sorted set) back past it and calls kombu's own
`restore_visible`, exactly what a worker's kombu does once the timeout has passed.
"""
from __future__ import annotations

import datetime as dt
import json
import math
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest
from django.conf import settings

from examples.models import Effect
from jobs import Step, enqueue, enqueue_many
from jobs.engine import publish
from jobs.models import Job, Status
from tests.support import (
    ROOT,
    Proc,
    all_messages_consumed,
    crash_embedded_redis,
    embedded_redis,
    http_get,
    is_dead,
    kill_tree,
    queue_length,
    redis_client,
    start_embedded_redis,
    start_workers,
    unacked_count,
    wait_for,
    wait_job,
)

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True, databases="__all__")]

GRACE = ("--grace", "3")


@pytest.fixture(autouse=True)
def stop_at_once(live):
    """Stop every process a test started as soon as it ends, without a drain: each test has
    already checked what it is about, and a pool process can take many seconds to drain after
    a few thousand jobs (billiard's Worker._ensure_messages_consumed). Killed by pid, tree first."""
    yield
    live.discard()


# --- helpers ----------------------------------------------------------------------------------


def effects(ids: list[int]) -> Counter:
    """Recorded runs of examples.count, per job id."""
    return Counter(Effect.objects.filter(job_id__in=ids).values_list("job_id", flat=True))


def statuses(ids: list[int]) -> Counter:
    return Counter(Job.objects.filter(pk__in=ids).values_list("status", flat=True))


def all_succeeded(ids: list[int]) -> bool:
    return statuses(ids) == Counter({Status.SUCCEEDED: len(ids)})


def visibility_timeout_lapses() -> int:
    """Make Redis's visibility timeout pass for every message a worker holds unacked, then let
    kombu do what it does once it has passed: put them back in their queues for any worker
    (kombu's `QoS.restore_visible`, on a channel of this process; tried again for up to 3 s while
    a worker's own periodic restore holds kombu's mutex). Returns how many it restored."""
    from project import celery_app

    client = redis_client()
    timeout = settings.CELERY_BROKER_TRANSPORT_OPTIONS["visibility_timeout"]
    aged = {tag: score - timeout - 60 for tag, score in client.zrange("unacked_index", 0, -1, withscores=True)}
    if aged:
        client.zadd("unacked_index", aged)
    deadline = time.monotonic() + 3
    with celery_app.connection_for_write() as connection:
        while True:
            connection.default_channel.qos.restore_visible(num=1000, interval=1)
            # A restored message taken again is indexed again, under its tag, with a new score.
            left = [tag for tag, score in aged.items() if client.zscore("unacked_index", tag) == score]
            if not left or time.monotonic() > deadline:
                return len(aged) - len(left)
            time.sleep(0.1)


def tree_rss(pid: int) -> int:
    """Resident memory of a process and every process under it, in bytes."""
    root = psutil.Process(pid)
    total = 0
    for process in [root, *root.children(recursive=True)]:
        try:
            total += process.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


# --- 1. kombu#337: delayed work and the visibility timeout --------------------------------------


def test_delayed_job_past_the_visibility_timeout_runs_once_kombu_337(live):
    """kombu#337 (Redis transport causes multiple Celery job runs if an ETA exceeds the
    visibility timeout): a delayed job is a row with `run_after`, never a Celery ETA held unacked
    by a worker, so no visibility timeout can hand it to a second worker; once due, its message
    restored by the timeout mid-run is skipped by the other worker. One run."""
    # given two workers on the same queue
    start_workers(live, ("left", (*GRACE, "--concurrency", "1")), ("right", (*GRACE, "--concurrency", "1")))
    # when a job is enqueued to run in 4 seconds
    run_after = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=4)
    job = enqueue("examples.count", {"sleep": 1.5}, run_after=run_after)

    # then while it waits no message of it exists anywhere in Redis: not queued, not held unacked
    # by a worker (a Celery ETA would sit in `unacked` for the whole delay) ...
    restored = []
    while dt.datetime.now(dt.timezone.utc) < run_after - dt.timedelta(seconds=0.5):
        assert queue_length("default") == 0 and unacked_count() == 0, "a message of the delayed job exists before it is due"
        assert Job.objects.get(pk=job.pk).status == Status.PENDING
        restored.append(visibility_timeout_lapses())  # ... so the timeout passing gives nothing back
        time.sleep(0.2)
    assert len(restored) >= 3 and not any(restored)

    # when it runs, and the visibility timeout passes for its message in the middle of the run
    wait_for(lambda: Job.objects.get(pk=job.pk).status == Status.RUNNING, 15, interval=0.05, what="the job to start")
    assert visibility_timeout_lapses() == 1  # the message is back in the queue, for the other worker
    wait_for(lambda: all_messages_consumed("default") and Job.objects.get(pk=job.pk).status == Status.SUCCEEDED, 15,
             what="the job to succeed and its copy to be consumed")

    # then it ran once, on its first attempt, not before its time
    row = Job.objects.get(pk=job.pk)
    assert (row.status, row.attempt) == (Status.SUCCEEDED, 1)
    assert row.started_at >= run_after
    time.sleep(0.5)  # no late second run either
    assert effects([job.pk]) == Counter({job.pk: 1})


# --- 2. celery#3541: SIGKILL of the whole worker ---------------------------------------------------


def test_prefetched_and_running_jobs_survive_sigkill_of_the_worker_celery_3541(live, monkeypatch):
    """celery#3541 (running and prefetched tasks of a worker killed with SIGKILL are lost): the
    whole worker (supervisor, Celery, pool) is killed with SIGKILL while it runs one job and holds
    a message of eight more, three of them not started: nobody hands anything back, and every
    job still completes, each exactly once."""
    # given a worker of two pool processes: one runs a 2.5 s job, the other a message of eight
    # half-second jobs, one after the other (SPREAD 1: one message for the eight; a hold of a
    # minute: the worker keeps them all, not giving back those it has not started, jobs.tasks)
    doomed = live.start(*GRACE, "--concurrency", "2", mode="worker", name="doomed", env={"CONVEYOR_BATCH_HOLD_SECONDS": "60"})
    long = enqueue("examples.count", {"sleep": 2.5})
    wait_job(long.pk, Status.RUNNING, 30)
    monkeypatch.setattr(publish, "SPREAD", 1)
    batch = [job.pk for job in enqueue_many([Step("examples.count", {"sleep": 0.5}) for _ in range(8)])]
    ids = [long.pk, *batch]
    wait_for(lambda: sum(effects(batch).values()) >= 3, 30, interval=0.05, what="three jobs of the batch to run")

    # (and another worker starting meanwhile, with nothing left in the queue for it to take)
    held = unacked_count()
    assert queue_length("default") == 0
    rescuer = live.start(*GRACE, "--concurrency", "2", mode="worker", name="rescuer", wait=False)

    # when every process of the first worker is killed with SIGKILL at once
    pids = [doomed.process.pid, *(p.pid for p in psutil.Process(doomed.process.pid).children(recursive=True))]
    kill_tree(doomed.process.pid)
    wait_for(lambda: all(map(is_dead, pids)), 10, what="the worker's processes to die")
    assert held == 2, "the worker did not hold both messages when killed"
    running = set(Job.objects.filter(pk__in=ids, status=Status.RUNNING).values_list("id", flat=True))
    waiting = set(Job.objects.filter(pk__in=batch, status=Status.PENDING).values_list("id", flat=True))
    assert long.pk in running and len(waiting) >= 1, statuses(ids)  # running, and taken but not started
    rescuer.wait_ready()

    # then every job succeeds: the running ones once their lease lapses, the prefetched ones once
    # their message is stale; each recorded one run
    wait_for(lambda: all_succeeded(ids), 45, interval=0.2, what=f"every job to succeed (now {statuses(ids)})")
    assert effects(ids) == Counter({i: 1 for i in ids})
    attempts = dict(Job.objects.filter(pk__in=ids).values_list("id", "attempt"))
    assert {i for i, n in attempts.items() if n == 2} == running, attempts  # the killed runs ran again
    assert all(attempts[i] == 1 for i in waiting), attempts  # the prefetched ones ran once, as planned

    # and when the dead worker's messages come back after the visibility timeout, nothing runs again
    assert visibility_timeout_lapses() == 2
    wait_for(lambda: all_messages_consumed("default"), 15, what="the restored messages to be consumed")
    assert effects(ids) == Counter({i: 1 for i in ids})
    assert all_succeeded(ids)


# --- 3 and 4. beat: a schedule edited while beat runs; the leader beat killed -------------------

TICK_LINE = re.compile(r"beat: schedule (\S+) tick (\S+) -> job (\d+)")


def start_beat(live, name: str, lock_seconds: int) -> Proc:
    """The beat `manage.py start` runs as its beat child (`celery -A project beat`, with
    jobs.interfaces.beat.LeaderScheduler), on its own: ticks write job rows, no worker is needed to see them."""
    log_path = Path(live.env()["CONVEYOR_DATA"]) / f"{name}.log"
    with open(log_path, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "project", "beat", "--loglevel", "INFO"],
            cwd=ROOT, env=live.env(CONVEYOR_BEAT_LOCK_SECONDS=str(lock_seconds)), stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    proc = Proc(name, process, log_path)
    live.procs.append(proc)  # stopped with the test's other processes
    return proc


def fired(beat: Proc, schedule: str) -> list[dt.datetime]:
    """The ticks of `schedule` this beat fired (wrote or found the job of), from its log, in order."""
    return [dt.datetime.fromisoformat(m.group(2)) for m in TICK_LINE.finditer(beat.log()) if m.group(1) == schedule]


def is_leader(beat: Proc) -> bool:
    return "now the leader" in beat.log()


def tick_jobs(schedule: str) -> list[tuple[dt.datetime, dict]]:
    """(tick time, input) of every job the ticks of `schedule` made, by tick time."""
    prefix = f"conveyor:schedule:{schedule}:"
    rows = Job.objects.filter(idempotency_key__startswith=prefix).values_list("idempotency_key", "input")
    return sorted(
        (dt.datetime.strptime(key[len(prefix):], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc), data) for key, data in rows
    )


def interval_schedule(name: str, every: int, data: dict):
    from django_celery_beat.models import IntervalSchedule, PeriodicTask

    from jobs.engine import schedules

    interval, _ = IntervalSchedule.objects.get_or_create(every=every, period=IntervalSchedule.SECONDS)
    return PeriodicTask.objects.create(
        name=f"conveyor:{name}", task=schedules.TASK, interval=interval,
        kwargs=json.dumps({"schedule": name, "type": "examples.echo", "input": data}),
    )


def test_schedule_edited_while_beat_runs_makes_one_job_per_tick_django_celery_beat_558(live):
    """django-celery-beat#558 (Celery beat scheduler - multiple task executions: a "Schedule
    changed" re-read gives an entry back an older last run, and beat sends it again): a schedule
    edited ten times while beat runs (as the admin saves it: the row read afresh, one field
    changed, the whole row saved), then given a new interval, makes one job per tick, each edit
    taking effect. Should beat fire a tick twice, the tick's platform key (jobs.interfaces.beat.enqueue_tick)
    gives it the same job: the log line names it."""
    from django_celery_beat.models import IntervalSchedule, PeriodicTask

    # given a running beat and a schedule ticking every second
    task = interval_schedule("edited", 1, {"edit": 0})
    beat = start_beat(live, "beat-edits", lock_seconds=3)
    wait_for(lambda: len(tick_jobs("edited")) >= 3, 30, what="three ticks of the schedule")

    def edit(**changes: object) -> None:
        row = PeriodicTask.objects.get(pk=task.pk)
        for name, value in changes.items():
            setattr(row, name, value)
        row.save()  # a schedule change: beat reads every entry again on its next tick

    # when the schedule's input is changed ten times, 0.4 s apart
    for n in range(1, 11):
        edit(kwargs=json.dumps({"schedule": "edited", "type": "examples.echo", "input": {"edit": n}}))
        time.sleep(0.4)
    # and then its interval, to 2 s
    edit(interval=IntervalSchedule.objects.get_or_create(every=2, period=IntervalSchedule.SECONDS)[0])
    changed = dt.datetime.now(dt.timezone.utc)
    time.sleep(6)
    kill_tree(beat.process.pid)
    beat.process.wait(10)

    # then every tick beat fired has one job, whatever number of times it was fired
    lines = [(m.group(2), int(m.group(3))) for m in TICK_LINE.finditer(beat.log()) if m.group(1) == "edited"]
    jobs_of = {tick: {job for at, job in lines if at == tick} for tick, _ in lines}
    assert all(len(ids) == 1 for ids in jobs_of.values()), {t: ids for t, ids in jobs_of.items() if len(ids) > 1}
    jobs = tick_jobs("edited")
    times = [at for at, _ in jobs]
    assert times == sorted({dt.datetime.fromisoformat(t) for t in jobs_of})
    # one job a second while it ticked every second: none doubled, none lost to the edits
    before = [t for t in times if t <= changed]
    assert {(b - a).total_seconds() for a, b in zip(before, before[1:])} == {1.0}, before
    # and one every 2 s, on even seconds, once the new interval was read
    after = [t for t in times if t > changed + dt.timedelta(seconds=2)]
    assert len(after) >= 2 and all(t.second % 2 == 0 for t in after), after
    assert {(b - a).total_seconds() for a, b in zip(after, after[1:])} == {2.0}, after
    # and each edit reached the jobs, in order, the last one included
    edits = [data["edit"] for _, data in jobs]
    assert edits == sorted(edits) and edits[-1] == 10, edits


def test_the_leader_beat_killed_another_takes_over_no_tick_lost_or_doubled_celery_1495(live):
    """celery#1495 (Failover for celerybeat): two beats, the leader killed with SIGKILL just
    before a tick; the standby takes the Redis lock and fires that very tick (late, under its
    nominal time), then goes on: every tick has one job, none fired by both beats."""
    period, lock = 5, 2  # the take-over (lock TTL + the standby's 1 s poll) fits in one period
    interval_schedule("failover", period, {})
    first, second = start_beat(live, "beat-a", lock), start_beat(live, "beat-b", lock)
    leader = wait_for(lambda: next((b for b in (first, second) if is_leader(b)), None), 30, what="a leader")
    standby = second if leader is first else first
    wait_for(lambda: fired(leader, "failover"), 30, what="a tick fired by the leader")

    # when the leader is killed with SIGKILL 0.3 s before the next tick is due
    now = time.time()
    due = (math.floor(now / period) + 1) * period
    if due - now < 0.6:
        due += period
    time.sleep(due - 0.3 - time.time())
    kill_tree(leader.process.pid)
    leader.process.wait(10)
    due_at = dt.datetime.fromtimestamp(due, dt.timezone.utc)

    # then the standby fires that tick, and the next one
    wait_for(lambda: len([t for t in fired(standby, "failover") if t >= due_at]) >= 2, 3 * period + 10,
             what="two ticks fired by the new leader")
    kill_tree(standby.process.pid)
    standby.process.wait(10)
    assert fired(standby, "failover")[0] == due_at, "the tick due during the take-over was lost"
    assert due_at not in fired(leader, "failover")
    late = Job.objects.get(idempotency_key=f"conveyor:schedule:failover:{due_at:%Y-%m-%dT%H:%M:%SZ}")
    assert late.created_at > due_at  # fired late, by the new leader, under its own time

    # and every tick from the first to the last has exactly one job: none lost, none doubled
    ticks = fired(leader, "failover") + fired(standby, "failover")
    assert len(ticks) == len(set(ticks)), "a tick was fired by both beats"
    times = [at for at, _ in tick_jobs("failover")]
    assert times == sorted(ticks)
    assert [(b - a).total_seconds() for a, b in zip(times, times[1:])] == [float(period)] * (len(times) - 1), times


# --- 6. celery#1933: a long job and the short ones behind it ---------------------------------------


def test_a_long_job_does_not_starve_the_short_ones_behind_it_celery_1933(live):
    """celery#1933 (with prefetching, short tasks wait behind a long one on a busy pool process
    while another process idles): prefetch 1 and late acks, so with two pool processes the 20
    short jobs queued behind a 10 s job all finish while it runs, on the other process."""
    # given a 10 s job, then 20 short ones, queued before any worker runs
    long = enqueue("examples.sleep", {"seconds": 10})
    short = [enqueue("examples.count", {"sleep": 0.1}).pk for _ in range(20)]

    # when one worker with two pool processes starts
    live.start(*GRACE, "--concurrency", "2", mode="worker", name="mixed")

    # then every short job finishes while the long one is still running
    wait_for(lambda: all_succeeded(short), 30, interval=0.1, what=f"the short jobs to succeed (now {statuses(short)})")
    row = Job.objects.get(pk=long.pk)
    assert row.status == Status.RUNNING, f"the long job is {row.status}: the short ones waited for it"
    last = max(Job.objects.filter(pk__in=short).values_list("finished_at", flat=True))
    assert row.started_at < last < row.started_at + dt.timedelta(seconds=10)
    # and they ran on the other pool process, one after the other
    long_pid = int(row.worker.split("/")[1])
    assert long_pid not in set(Effect.objects.filter(job_id__in=short).values_list("worker_pid", flat=True))
    assert effects(short) == Counter({i: 1 for i in short})


# --- 7. celery#8030, celery#10205: Redis restarted three times under load -----------------------


def test_workers_keep_consuming_across_three_redis_restarts_and_readiness_says_so_celery_8030_10205(live):
    """celery#8030 (worker stops consuming tasks after a Redis reconnection) and celery#10205 (the
    same after repeated restarts, the worker looking healthy all along): the session's Redis is
    killed (its data lost) and started again three times while jobs run; /health/ready answers
    503 naming Redis while it is down and 200 once it is back, and after each restart the
    worker consumes new jobs; every job runs exactly once."""
    if embedded_redis() is None:
        pytest.skip("needs the session's embedded Redis to restart (REDIS_URL names an outside server)")
    # given one instance serving HTTP and consuming, no beat
    instance = live.start(*GRACE, "--no-beat", "--web-concurrency", "1", "--concurrency", "2", mode="shared", name="steady")
    ready = instance.url("/health/ready")
    ids: list[int] = []

    def enqueue_batch(n: int) -> list[int]:
        created = [job.pk for job in enqueue_many([Step("examples.count", {"sleep": 0.05}) for _ in range(n)])]
        ids.extend(created)
        return created

    for restart in range(1, 4):
        # given jobs under way
        batch = enqueue_batch(40)
        wait_for(lambda: sum(effects(batch).values()) >= 4, 30, interval=0.05, what=f"the batch of round {restart} to run")
        try:
            # when Redis is killed, losing what it held
            crash_embedded_redis(lose_data=True)
            answers = []
            for _ in range(5):
                answers.append(http_get(ready))
                time.sleep(0.2)
            enqueue_batch(10)  # rows written while Redis is away; the relay sends them later
        finally:
            # and started again
            start_embedded_redis()
        # then /health/ready said so while it was down, naming Redis only
        for status, body in answers:
            assert (status, json.loads(body)) == (503, {"status": "unavailable", "failing": {"redis": "unreachable"}}), (restart, body)
        # and says ready again once it is back
        wait_for(lambda: http_get(ready)[0] == 200, 15, interval=0.1, what=f"ready again after restart {restart}")
        # and the worker consumes again: jobs enqueued now complete
        fresh = enqueue_batch(10)
        wait_for(lambda: all_succeeded(fresh), 30, interval=0.1, what=f"jobs enqueued after restart {restart} (now {statuses(fresh)})")

    # and every job of the run succeeded, each exactly once
    wait_for(lambda: all_succeeded(ids), 60, interval=0.2, what=f"every job to succeed (now {statuses(ids)})")
    assert effects(ids) == Counter({i: 1 for i in ids})
    assert len(ids) == 3 * 60 and instance.alive()
    assert instance.log().count("Connection to broker lost") >= 3, "the worker never saw Redis go away"


# --- 8. celery#4843, flower#706: memory and Redis keys over a long run ---------------------------


def test_worker_memory_and_redis_keys_stay_bounded_over_5000_jobs_celery_4843_flower_706(live):
    """celery#4843 (continuous memory leak of the prefork worker) and flower#706 (memory and
    state growing with every task seen): 5,000 jobs through one worker of two pool processes;
    the worker tree's resident memory after 5,000 is within 20% of what it was after 1,000, and
    Redis holds the same handful of keys (no result, no per-task key, no event backlog)."""
    [worker] = start_workers(live, ("long-run", (*GRACE, "--concurrency", "2")))
    client = redis_client()

    def run(n: int) -> None:
        ids = [job.pk for job in enqueue_many([Step("examples.echo", {"n": i}) for i in range(n)])]
        done = Job.objects.filter(pk__in=ids, status=Status.SUCCEEDED)
        wait_for(lambda: done.count() == n, 120, interval=0.5, what=f"{n} jobs to succeed")
        wait_for(lambda: all_messages_consumed("default"), 15, what="every message to be acked")

    def sample() -> tuple[int, int]:
        time.sleep(0.5)  # the last run's metrics are sent 250 ms after it (jobs.engine.telemetry)
        return tree_rss(worker.process.pid), client.dbsize()

    # when 1,000 jobs have run
    run(1000)
    rss_1000, keys_1000 = sample()
    # and 4,000 more
    for _ in range(4):
        run(1000)
    rss_5000, keys_5000 = sample()

    # then the worker's memory stayed within 20% and Redis's key count did not grow
    print(f"worker tree RSS: {rss_1000 / 2**20:.1f} MiB after 1,000 jobs, {rss_5000 / 2**20:.1f} MiB after 5,000; "
          f"Redis keys: {keys_1000} then {keys_5000}")
    assert rss_5000 <= rss_1000 * 1.2, (rss_1000, rss_5000)
    keys = sorted(k.decode() for k in client.keys("*"))
    assert keys_5000 <= keys_1000 + 2 and keys_5000 < 40, keys
    assert not [k for k in keys if k.startswith(("celery-task-meta-", "celery-taskset-meta-"))], keys
    assert Job.objects.filter(status=Status.SUCCEEDED).count() == 5000
