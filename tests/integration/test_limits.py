"""Limits per job type (jobs.engine.limits), in process on the session's real PostgreSQL and Redis: claims
through `runner.execute` from threads with their own connections, the relay, the reaper and the
sweep called directly. What is checked is in the rows: a held row waits with no message and is
not relayed, an end releases the next one, and rate slots are one interval apart by PostgreSQL's
clock.
"""
from __future__ import annotations

import datetime as dt
import random
import threading
import time
import traceback
from collections import Counter, defaultdict
from typing import Any

import pytest
from django.db import connection, connections, transaction

from jobs import enqueue
from jobs.engine import limits, recovery, registry, runner, store
from jobs.models import Held, Job, RateSlot, Status
from jobs.engine.registry import JobType
from tests.integration.conftest import RUNNER_IN_PROCESS

pytestmark = RUNNER_IN_PROCESS

WORKER = "node@test/1"




class Tracker:
    """Runs in flight per scope, counted by the handler itself (after its claim committed, before
    its outcome is recorded): the most ever seen at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now: Counter[str] = Counter()
        self.most: Counter[str] = Counter()

    def enter(self, *scopes: str) -> None:
        with self.lock:
            for scope in scopes:
                self.now[scope] += 1
                self.most[scope] = max(self.most[scope], self.now[scope])

    def leave(self, *scopes: str) -> None:
        with self.lock:
            for scope in scopes:
                self.now[scope] -= 1


tracker = Tracker()


def tracked(ctx: Any, data: dict) -> dict:
    key = data.get("key", "")
    tracker.enter("type", f"key:{key}")
    try:
        time.sleep(data.get("sleep", 0.0))
    finally:
        tracker.leave("type", f"key:{key}")
    return {}


@pytest.fixture
def declare():
    """declare(name, **limits): an in-process job type with those limits, removed afterwards."""
    names = []

    def add(name: str, **options: Any) -> JobType:
        registry.add(JobType(name, tracked, **options))
        names.append(name)
        return registry.get(name)

    global tracker
    tracker = Tracker()
    yield add
    for name in names:
        registry.remove(name)


def db_now() -> dt.datetime:
    with connection.cursor() as cursor:
        cursor.execute("SELECT clock_timestamp()")
        return cursor.fetchone()[0]


def row(job_id: int) -> Job:
    return Job.objects.get(pk=job_id)


def most_overlapping(intervals: list[tuple[dt.datetime, dt.datetime]]) -> int:
    """The most intervals [start, end) in progress at one instant (an end before a start at a tie)."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals], key=lambda e: (e[0], e[1]))
    most = now = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


def claimers(count: int, seconds: float) -> tuple[list[str], Counter[str]]:
    """`count` threads, each as a worker taking messages: a row with a message (published, not
    held) is run through runner.execute, until every row has ended or `seconds` have passed.
    Returns the errors and the outcomes."""
    stop, errors, outcomes, lock = threading.Event(), [], Counter(), threading.Lock()

    def work(i: int) -> None:
        rng = random.Random(i)
        try:
            while not stop.is_set():
                ids = list(
                    Job.objects.filter(status=Status.PENDING, published_at__isnull=False, held="").values_list("id", flat=True)
                )
                if not ids:
                    time.sleep(0.01)
                    continue
                outcome = runner.execute(rng.choice(ids), f"node{i}@test/{i}")
                with lock:
                    outcomes[str(outcome) if outcome != "held" else f"held:{outcome.error}"] += 1
        except Exception:
            errors.append(traceback.format_exc())
            stop.set()
        finally:
            connections.close_all()

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(count)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not stop.is_set():
        if not Job.objects.exclude(status=Status.SUCCEEDED).exists():
            break
        time.sleep(0.05)
    stop.set()
    for t in threads:
        t.join(10)
        assert not t.is_alive(), "a claimer thread did not stop"
    return errors, outcomes


# --- Concurrency, with concurrent claimers ----------------------------------------------------------


def test_concurrent_claimers_never_run_more_than_the_types_concurrency_and_every_job_runs_once(declare):
    # given a type allowing 2 running jobs, and 24 of its jobs
    declare("t.two-at-once", concurrency=2)
    jobs = [enqueue("t.two-at-once", {"sleep": 0.05}) for _ in range(24)]

    # when 6 claimer threads take their messages (released rows get one again)
    errors, outcomes = claimers(6, 60)

    # then every job succeeded on its first attempt, never more than 2 at once, and 2 at times
    assert not errors, errors[0]
    rows = list(Job.objects.filter(pk__in=[j.pk for j in jobs]))
    assert {(r.status, r.attempt, r.held) for r in rows} == {(Status.SUCCEEDED, 1, "")}
    assert tracker.most["type"] == 2
    assert most_overlapping([(r.started_at, r.finished_at) for r in rows]) == 2
    # and the claims that found the type full held their rows (acked, waiting in the table)
    assert outcomes["held:concurrency"] > 0 and outcomes["succeeded"] == 24


def test_concurrent_claimers_run_one_job_per_key_at_a_time_and_different_keys_together(declare):
    # given a type allowing one running job per key, and 5 jobs of each of 3 keys
    declare("t.one-per-key", concurrency_per_key=1)
    jobs = [enqueue("t.one-per-key", {"sleep": 0.05, "key": f"k{k}"}, limit_key=f"k{k}") for _ in range(5) for k in range(3)]

    # when 6 claimer threads take their messages
    errors, outcomes = claimers(6, 60)

    # then every job succeeded once; no key ever had two running, by the handlers' count and by
    # the rows' intervals; different keys ran together
    assert not errors, errors[0]
    rows = list(Job.objects.filter(pk__in=[j.pk for j in jobs]))
    assert {(r.status, r.attempt) for r in rows} == {(Status.SUCCEEDED, 1)}
    assert {r.limit_key for r in rows} == {"k0", "k1", "k2"}
    assert max(tracker.most[f"key:k{k}"] for k in range(3)) == 1
    by_key = defaultdict(list)
    for r in rows:
        by_key[r.limit_key].append((r.started_at, r.finished_at))
    assert all(most_overlapping(spans) == 1 for spans in by_key.values()), by_key
    assert tracker.most["type"] > 1
    assert outcomes["held:key"] > 0


# --- Held rows: no message, not relayed, released by an end ---------------------------------------


def test_a_held_row_waits_unpublished_the_relay_leaves_it_and_the_running_jobs_end_releases_it(declare):
    declare("t.one-at-once", concurrency=1)
    first, second = enqueue("t.one-at-once"), enqueue("t.one-at-once")
    claimed = limits.claim(first.pk, WORKER, 30)
    assert isinstance(claimed, store.Claimed) and claimed.id == first.pk

    # when the second is claimed while the first runs
    assert limits.claim(second.pk, WORKER, 30) == Held.CONCURRENCY

    # then it waits: pending, held, no message; the relay publishes nothing, pass after pass
    held = row(second.pk)
    assert (held.status, held.held, held.published_at, held.attempt) == (Status.PENDING, Held.CONCURRENCY, None, 0)
    for _ in range(3):
        assert store.mark_due(100) == [] and recovery.relay() == 0
    # and a duplicate message finds the scope still full: held again, nothing run
    assert runner.execute(second.pk, WORKER) == "held"

    # when the first ends (its outcome's transaction releases the next waiting row)
    with transaction.atomic():
        assert store.succeed(first.pk, 1, "{}") is not None
        limits.release(first.pk, "t.one-at-once")

    # then the second is no longer held and was published, and it runs
    released = row(second.pk)
    assert (released.held, released.published_at is not None) == ("", True)
    assert runner.execute(second.pk, WORKER) == "succeeded"


def test_a_failed_attempt_releases_its_key_and_the_type_slot_once(declare):
    declare("t.key-and-type", concurrency=2, concurrency_per_key=1)
    a, b, c = (enqueue("t.key-and-type", limit_key=k) for k in ("x", "x", "y"))
    d = enqueue("t.key-and-type", limit_key="z")
    assert isinstance(limits.claim(a.pk, WORKER, 30), store.Claimed)
    assert limits.claim(b.pk, WORKER, 30) == Held.KEY  # x is taken
    assert isinstance(limits.claim(c.pk, WORKER, 30), store.Claimed)
    assert limits.claim(d.pk, WORKER, 30) == Held.CONCURRENCY  # z is free, the type is full

    # when a (key x) fails an attempt
    with transaction.atomic():
        ended = store.fail(a.pk, 1, "boom", 60)
        limits.release(ended.id, ended.type)

    # then b (key x) and d (the type) are released; a waits for its backoff, holding nothing
    assert {r.pk: r.held for r in Job.objects.filter(pk__in=[b.pk, d.pk])} == {b.pk: "", d.pk: ""}
    assert row(a.pk).status == Status.FAILED
    # and of the two, one runs and the other finds the type full again (c still runs)
    assert isinstance(limits.claim(b.pk, WORKER, 30), store.Claimed)
    assert limits.claim(d.pk, WORKER, 30) == Held.CONCURRENCY


def test_a_reaped_job_frees_its_slot_and_releases_the_next(declare, settings):
    declare("t.reaped", concurrency=1)
    first, second = enqueue("t.reaped"), enqueue("t.reaped")
    assert isinstance(limits.claim(first.pk, WORKER, 30), store.Claimed)
    assert limits.claim(second.pk, WORKER, 30) == Held.CONCURRENCY

    # when the first's worker dies (its lease expires) and the reaper takes it
    with connection.cursor() as cursor:
        cursor.execute("UPDATE jobs_job SET lease_expires_at = now() - interval '1 second' WHERE id = %s", [first.pk])
    assert recovery.reap() == 1

    # then the slot is free: the second is released, and the first, pending again, waits its turn
    assert row(second.pk).held == "" and row(second.pk).published_at is not None
    assert runner.execute(second.pk, WORKER) == "succeeded"
    assert runner.execute(first.pk, WORKER) == "succeeded"
    assert row(first.pk).attempt == 2


def test_a_handed_back_job_frees_its_key_and_releases_the_next_of_the_key(declare):
    declare("t.handed-back", concurrency_per_key=1)
    first, second = enqueue("t.handed-back", limit_key="k"), enqueue("t.handed-back", limit_key="k")
    assert isinstance(limits.claim(first.pk, store.worker_name("gone@test", 7, "start-1"), 30), store.Claimed)
    assert limits.claim(second.pk, WORKER, 30) == Held.KEY

    # when the supervisor hands back the jobs of the worker it lost
    assert recovery.hand_back("gone@test", "start-1") == 1

    # then the key's next job is released, and the first waits behind it (pending, published)
    assert (row(second.pk).held, row(first.pk).status) == ("", Status.PENDING)
    assert runner.execute(second.pk, WORKER) == "succeeded"
    assert runner.execute(first.pk, WORKER) == "succeeded"


def test_the_sweep_releases_rows_no_end_released_and_none_while_the_scope_is_full(declare):
    declare("t.swept", concurrency=1)
    first, second, third = enqueue("t.swept"), enqueue("t.swept"), enqueue("t.swept")
    assert isinstance(limits.claim(first.pk, WORKER, 30), store.Claimed)
    assert limits.claim(second.pk, WORKER, 30) == Held.CONCURRENCY
    assert limits.claim(third.pk, WORKER, 30) == Held.CONCURRENCY
    assert limits.sweep() == 0  # full: nobody is woken

    # when the running job ends without releasing anyone (a worker of code without limits)
    assert store.succeed(first.pk, 1, "{}") is not None

    # then the sweep releases one row (one slot is free), the oldest
    assert limits.sweep() == 1
    assert [r.held for r in Job.objects.filter(pk__in=[second.pk, third.pk]).order_by("pk")] == ["", "concurrency"]


# --- Rate: slots one interval apart, by PostgreSQL's clock ------------------------------------------


def test_rate_slots_are_booked_one_interval_apart_and_a_booked_row_starts_on_its_slot(declare, settings):
    # given a type allowing 10 starts a second (one every 100 ms), idle until now, and relays
    # every 500 ms (starts may run 500 ms ahead of the rate: the rows a relay pass publishes)
    settings.CONVEYOR = {**settings.CONVEYOR, "RECOVERY_INTERVAL": 0.5}
    declare("t.ten-a-second", rate_limit="10/s")
    jobs = [enqueue("t.ten-a-second") for _ in range(5)]
    before = db_now()

    # when the five are claimed at once
    results = [limits.claim(job.pk, WORKER, 30) for job in jobs]

    # then the first starts now and the four others are booked 100, 200, 300, 400 ms after it
    assert isinstance(results[0], store.Claimed) and results[1:] == [Held.RATE] * 4
    first = row(jobs[0].pk)
    assert first.status == Status.RUNNING and first.started_at >= before
    booked = [row(job.pk) for job in jobs[1:]]
    assert {(r.status, r.held, r.published_at) for r in booked} == {(Status.PENDING, Held.RATE, None)}
    slot0 = booked[0].run_after - dt.timedelta(milliseconds=100)
    assert before <= slot0 <= first.started_at
    assert [r.run_after - slot0 for r in booked] == [dt.timedelta(milliseconds=100 * k) for k in range(1, 5)]
    assert RateSlot.objects.get(type="t.ten-a-second").next_at == slot0 + dt.timedelta(milliseconds=500)

    # and a booked row is not claimed, nor relayed, before its slot
    last = jobs[-1]
    if db_now() < booked[-1].run_after:
        assert limits.claim(last.pk, WORKER, 30) is None
    # when its slot has come the relay publishes it, and its claim starts it on the slot it has
    # (the type's next free start does not move)
    while db_now() < booked[-1].run_after:
        time.sleep(0.02)
    published = {m.job_id for m in store.mark_due(100)}
    assert {job.pk for job in jobs[1:]} <= published
    for job in jobs[1:]:
        assert isinstance(limits.claim(job.pk, WORKER, 30), store.Claimed)
    assert RateSlot.objects.get(type="t.ten-a-second").next_at == slot0 + dt.timedelta(milliseconds=500)
    starts = [row(job.pk).started_at for job in jobs[1:]]
    assert all(start >= r.run_after for start, r in zip(starts, booked))

    # and once idle for longer than the interval, the next start is now again
    time.sleep(0.15)
    late = enqueue("t.ten-a-second")
    assert isinstance(limits.claim(late.pk, WORKER, 30), store.Claimed)


def test_a_rate_limited_type_and_a_full_concurrency_book_no_rate_slot(declare):
    declare("t.rate-and-one", rate_limit="1/h", concurrency=1)
    first, second = enqueue("t.rate-and-one"), enqueue("t.rate-and-one")
    assert isinstance(limits.claim(first.pk, WORKER, 30), store.Claimed)
    next_at = RateSlot.objects.get(type="t.rate-and-one").next_at
    # the type is full: the second waits for the slot, and takes no rate slot meanwhile
    assert limits.claim(second.pk, WORKER, 30) == Held.CONCURRENCY
    assert RateSlot.objects.get(type="t.rate-and-one").next_at == next_at


# --- Enqueue --------------------------------------------------------------------------------------


def test_limit_key_is_refused_for_a_type_without_a_per_key_limit_and_when_empty(declare):
    declare("t.no-keys", concurrency=2)
    declare("t.keys", concurrency_per_key=1)
    with pytest.raises(registry.InvalidJob) as info:
        enqueue("t.no-keys", limit_key="customer-7")
    assert set(info.value.errors) == {"limit_key"}
    for bad in ("", "x" * 256, "a\x00b"):
        with pytest.raises(registry.InvalidJob) as info:
            enqueue("t.keys", limit_key=bad)
        assert set(info.value.errors) == {"limit_key"}
    assert enqueue("t.keys", limit_key="customer-7").limit_key == "customer-7"


def test_types_without_limits_claim_in_one_statement_as_before(declare):
    # a plain type's row is never seen by the limits' statements
    job = enqueue("examples.echo", {"n": 1})
    declare("t.some-limit", concurrency=1)
    assert runner.execute(job.pk, WORKER) == "succeeded"
    assert row(job.pk).limit_key is None  # not indexed among the limited running rows


# --- Visible: the catalog, the API, the operations page ---------------------------------------------


def test_the_catalog_lists_each_types_limits(api):
    status, types = api("get", "/types")
    assert status == 200
    by_name = {t["name"]: t for t in types}
    assert {k: by_name["examples.rate-limited"][k] for k in ("rate_limit", "concurrency", "concurrency_per_key")} == {
        "rate_limit": "10/s", "concurrency": None, "concurrency_per_key": None
    }
    assert by_name["examples.two-at-once"]["concurrency"] == 2
    assert by_name["examples.one-per-key"]["concurrency_per_key"] == 1
    assert by_name["examples.echo"]["rate_limit"] is None and by_name["examples.echo"]["concurrency"] is None


def test_http_enqueues_a_job_under_its_limit_key_only_for_a_type_limited_per_key(api):
    status, job = api("post", "/jobs", {"type": "examples.one-per-key", "input": {"seconds": 0}, "limit_key": "customer-7"})
    assert status == 201 and (job["limit_key"], job["held"]) == ("customer-7", "")
    assert row(job["id"]).limit_key == "customer-7"
    for body in ({"type": "examples.echo", "limit_key": "customer-7"}, {"type": "examples.one-per-key", "limit_key": ""}):
        status, problem = api("post", "/jobs", body)
        assert status == 400 and "limit_key" in problem["fields"], (body, problem)
    assert Job.objects.count() == 1


def test_the_operations_page_lists_limited_types_with_running_waiting_and_booked_jobs(admin_client, declare):
    declare("t.ops-one", concurrency=1, rate_limit="1/h")
    first, second, third = enqueue("t.ops-one"), enqueue("t.ops-one"), enqueue("t.ops-one")
    assert isinstance(limits.claim(first.pk, WORKER, 30), store.Claimed)
    assert limits.claim(second.pk, WORKER, 30) == Held.CONCURRENCY
    with transaction.atomic():
        store.succeed(first.pk, 1, "{}")
        limits.release(first.pk, "t.ops-one")
    assert limits.claim(second.pk, WORKER, 30) == Held.RATE  # the hour's start is taken
    assert isinstance(limits.claim(third.pk, WORKER, 30), str)

    page = admin_client.get("/admin/operations/fragment/")
    assert page.status_code == 200
    rows = {r["type"]: r for r in page.context["limits"]}
    assert rows["t.ops-one"] == {"type": "t.ops-one", "limits": "1/h, 1 at once", "running": 0, "waiting": 0, "booked": 2}
    assert rows["examples.two-at-once"]["limits"] == "2 at once"
    html = page.content.decode()
    assert 'id="ops-limits"' in html and 'data-type="t.ops-one"' in html


def test_the_limits_statements_run_on_django_cursors_too(declare, settings):
    # given DATABASE_PREPARED=false (a pooler that cannot keep prepared statements)
    settings.DATABASE_PREPARED = False
    settings.CONVEYOR = {**settings.CONVEYOR, "RECOVERY_INTERVAL": 0.5}
    for alias in ("default", store.CLAIMS):
        connections[alias].close()
    declare("t.unprepared-key", concurrency=2, concurrency_per_key=1)
    declare("t.unprepared-rate", rate_limit="1/h")
    first, second = (enqueue("t.unprepared-key", limit_key="k") for _ in range(2))
    hourly, later = enqueue("t.unprepared-rate"), enqueue("t.unprepared-rate")

    # then a claim, a hold for the key, a release, the sweep and a rate booking behave as ever
    assert isinstance(limits.claim(first.pk, WORKER, 30), store.Claimed)
    assert limits.claim(second.pk, WORKER, 30) == Held.KEY
    assert limits.sweep() == 0
    with transaction.atomic():
        store.succeed(first.pk, 1, "{}")
        limits.release(first.pk, "t.unprepared-key")
    assert row(second.pk).held == "" and runner.execute(second.pk, WORKER) == "succeeded"
    assert runner.execute(hourly.pk, WORKER) == "succeeded"
    assert limits.claim(later.pk, WORKER, 30) == Held.RATE  # the hour's start is taken
    assert row(later.pk).run_after - row(hourly.pk).started_at > dt.timedelta(minutes=59)
