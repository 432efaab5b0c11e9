"""Limits per job type across real processes: two `manage.py start` worker instances, prefork with
two pool processes each (two hosts' worth of processes), on the session's PostgreSQL and Redis.
Each limit is checked from the rows: when each job started and finished, by PostgreSQL's clock.

The job types are the demo slice's (examples/jobs.py): examples.rate-limited (10/s),
examples.one-per-key (concurrency_per_key=1) and examples.two-at-once (concurrency=2).
"""
from __future__ import annotations

import datetime as dt
from collections import Counter, defaultdict

import pytest
from django.db import connection

from jobs import Step, enqueue_many
from jobs.models import Job, Status
from tests.support import LiveEnv, start_workers, wait_for

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True, databases="__all__")]

TWO_INSTANCES = (
    ("limits-a", ("--pool", "prefork", "--concurrency", "2")),
    ("limits-b", ("--pool", "prefork", "--concurrency", "2")),
)


@pytest.fixture(scope="module")
def instances(django_db_setup, django_db_blocker):
    """Two worker instances of two prefork processes each, for the module (their start is most of
    a test's time otherwise); killed at the end (LiveEnv.discard), by their pids."""
    with django_db_blocker.unblock():
        env = LiveEnv(grace=5)
        env.flush_redis()
        try:
            start_workers(env, *TWO_INSTANCES)
            yield env
        finally:
            env.discard()
            env.flush_redis()


def db_now() -> dt.datetime:
    with connection.cursor() as cursor:
        cursor.execute("SELECT clock_timestamp()")
        return cursor.fetchone()[0]


def most_overlapping(intervals: list[tuple[dt.datetime, dt.datetime]]) -> int:
    """The most runs [started_at, finished_at) in progress at one instant."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    most = now = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


def all_succeeded(ids: list[int]) -> bool:
    return Job.objects.filter(pk__in=ids, status=Status.SUCCEEDED).count() == len(ids)


def test_concurrency_limits_hold_over_two_instances_per_key_and_per_type(instances):
    # given two worker instances of two prefork processes each
    # when 5 jobs of each of 4 keys (one running per key) and 12 jobs of a type allowing 2
    # running are enqueued at once, each running 0.3 s
    keyed = enqueue_many(
        [Step("examples.one-per-key", {"seconds": 0.3}, limit_key=f"customer-{k}") for _ in range(5) for k in range(4)]
    )
    pair = enqueue_many([Step("examples.two-at-once", {"seconds": 0.3}) for _ in range(12)])
    ids = [job.pk for job in keyed + pair]
    wait_for(lambda: all_succeeded(ids), 45, interval=0.2, what="the 32 jobs to succeed")

    # then each ran once
    rows = list(Job.objects.filter(pk__in=ids))
    assert {r.attempt for r in rows} == {1}
    # and no key ever had two running at once, while different keys ran together
    by_key = defaultdict(list)
    for r in rows:
        if r.type == "examples.one-per-key":
            by_key[r.limit_key].append((r.started_at, r.finished_at))
    assert sorted(by_key) == [f"customer-{k}" for k in range(4)]
    assert {key: most_overlapping(runs) for key, runs in by_key.items()} == {key: 1 for key in by_key}
    assert most_overlapping([run for runs in by_key.values() for run in runs]) >= 2
    # and the type allowing 2 never had 3 running, and had 2 at times
    pairs = [(r.started_at, r.finished_at) for r in rows if r.type == "examples.two-at-once"]
    assert most_overlapping(pairs) == 2
    # and both instances ran some of them
    assert {r.worker.split("@", 1)[0] for r in rows} == {"limits-a", "limits-b"}


def test_a_rate_of_10_per_second_holds_over_two_instances_for_10_seconds(instances):
    """The two instances share the type's clocks (PostgreSQL's rows): one rate for the deployment.
    The arithmetic over a longer run (30 s of late claims) is a unit test:
    tests/unit/test_decisions.py::test_a_rate_of_10_per_second_holds_over_30_seconds_of_claims_by_late_workers."""
    # given two worker instances of two prefork processes each
    # when 130 jobs of a type limited to 10 starts a second are enqueued at once (13 s of starts)
    ids = [job.pk for job in enqueue_many([Step("examples.rate-limited", {"seconds": 0.01}) for _ in range(130)])]

    # then, over the 10 s from the first start, 100 started (within 10%), no second far above 10
    started = Job.objects.filter(pk__in=ids).exclude(started_at=None)
    t0 = wait_for(lambda: started.order_by("started_at").values_list("started_at", flat=True).first(), 15, what="a first start")
    wait_for(lambda: db_now() >= t0 + dt.timedelta(seconds=11), 25, interval=0.5, what="11 s after the first start")
    seconds = [(s - t0).total_seconds() for s in started.values_list("started_at", flat=True)]
    windows = Counter(int(x) for x in seconds if 0 <= x < 10)
    total = sum(windows.values())
    print(f"rate 10/s over two instances: {total} starts in 10 s; per second: {[windows[i] for i in range(10)]}")
    assert 90 <= total <= 110, f"{total} starts in 10 s; per second: {sorted(windows.items())}"
    assert max(windows.values()) <= 15, f"a second far above 10 starts: {sorted(windows.items())}"
    # and both instances started some: the limit is one for the whole deployment
    nodes = Counter(w.split("@", 1)[0] for w in started.values_list("worker", flat=True))
    assert nodes["limits-a"] > 10 and nodes["limits-b"] > 10, nodes
    # and every started job ran once (its first attempt) and the others wait, none lost or dead
    assert set(started.values_list("attempt", flat=True)) == {1}
    assert not Job.objects.filter(pk__in=ids, status__in=(Status.DEAD, Status.FAILED, Status.CANCELLED)).exists()
