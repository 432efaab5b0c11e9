"""Waiting for a job's or a chain's end (jobs.wait, GET /api/jobs/{id}?wait=): LISTEN/NOTIFY on the
real PostgreSQL, the ends written by the store's own statements (no worker: the outcomes are
recorded here, in other threads or transactions, as a worker would record them)."""
from __future__ import annotations

import threading
import time
from typing import Callable

import psycopg
import pytest
from django.db import connections, transaction

import jobs
from jobs import enqueue, start_chain
from jobs.engine import control, store
from jobs.interfaces.http import WAIT_MAX
from jobs.models import Chain, Job, Status
from jobs.engine.ending import How, ended

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")


def _claim(job: Job) -> store.Claimed:
    claimed = store.claim(job.pk, "test/1", 30)
    assert claimed is not None
    return claimed


def _later(seconds: float, action) -> threading.Thread:
    """Run `action` in another thread (its own database connections) after `seconds`."""

    def run() -> None:
        time.sleep(seconds)
        try:
            action()
        finally:
            connections.close_all()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


class Listener:
    """A connection listening on both channels, as a waiter does: `hold` takes waiters' shared
    locks, `notes` drains what it heard."""

    def __init__(self, pg: psycopg.Connection) -> None:
        self.pg = pg

    def hold(self, keys: list[int]) -> None:
        for key in keys:
            self.pg.execute("SELECT pg_advisory_lock_shared(%s)", [key])

    def notes(self) -> list[tuple[str, str]]:
        return [(n.channel, n.payload) for n in self.pg.notifies(timeout=0.3)]


@pytest.fixture
def listener():
    params = connections["default"].get_connection_params()
    for name in ("context", "cursor_factory", "prepare_threshold"):
        params.pop(name, None)
    with psycopg.connect(**params, autocommit=True) as pg:
        pg.execute(f"LISTEN {store.JOB_ENDED}")
        pg.execute(f"LISTEN {store.CHAIN_ENDED}")
        yield Listener(pg)


# --- jobs.wait ------------------------------------------------------------------------------------


def test_wait_returns_an_ended_job_at_once():
    # given a job that already succeeded
    job = enqueue("examples.echo", {"a": 1})
    store.succeed(job.pk, _claim(job).attempt, '{"a": 1}')

    # when waited on
    started = time.monotonic()
    done = jobs.wait(job, 5)

    # then it comes back at once, read again
    assert time.monotonic() - started < 1.0
    assert (done.pk, done.status, done.output) == (job.pk, Status.SUCCEEDED, {"a": 1})


def test_wait_on_a_pending_job_raises_wait_timeout_at_the_timeout_with_the_job_as_it_is():
    job = enqueue("examples.sleep", {"seconds": 1})

    started = time.monotonic()
    with pytest.raises(jobs.WaitTimeout) as raised:
        jobs.wait(job.pk, 0.4)
    elapsed = time.monotonic() - started

    assert 0.4 <= elapsed < 1.5
    assert isinstance(raised.value, TimeoutError)
    assert raised.value.row.pk == job.pk and raised.value.row.status == Status.PENDING
    assert f"job {job.pk} is still pending" in str(raised.value)


def test_wait_returns_as_soon_as_another_connection_commits_the_end():
    # given a running job whose success another connection commits 0.3 s from now
    job = enqueue("examples.echo", {})
    attempt = _claim(job).attempt
    _later(0.3, lambda: store.succeed(job.pk, attempt, "{}"))

    # when waited on for up to 10 s
    started = time.monotonic()
    done = jobs.wait(job, 10)

    # then the wait ends with the commit, not at its timeout
    elapsed = time.monotonic() - started
    assert done.status == Status.SUCCEEDED
    assert 0.25 <= elapsed < 2.0, elapsed


def test_wait_goes_on_through_a_failed_attempt_that_will_be_retried():
    job = enqueue("examples.fail", {"times": 5}, retries=1)
    _later(0.2, lambda: store.fail(job.pk, _claim(job).attempt, "first", 0))  # failed: retried later

    def die() -> None:
        with transaction.atomic():
            ended([store.fail(job.pk, _claim(job).attempt, "second", 0)], How.RAN)

    _later(0.6, die)
    started = time.monotonic()
    done = jobs.wait(job, 10)
    assert done.status == Status.DEAD and done.error == "second"
    assert 0.55 <= time.monotonic() - started < 2.0


def test_an_end_heard_after_a_retry_reopened_the_job_does_not_end_the_wait():
    job = enqueue("examples.echo", {})

    def cancel_and_retry() -> None:  # the NOTIFY is delivered, the row is pending again
        with transaction.atomic():
            store.cancel(job.pk)
            store.retry(job.pk, 0)

    _later(0.2, cancel_and_retry)
    _later(0.7, lambda: store.cancel(job.pk))
    started = time.monotonic()
    done = jobs.wait(job, 10)
    assert done.status == Status.CANCELLED
    assert 0.65 <= time.monotonic() - started < 2.5


def test_a_waiter_arriving_while_an_unwaited_end_commits_finds_it_ended():
    # given an end written while nobody waited (no NOTIFY will be sent), its commit 0.6 s later
    job = enqueue("examples.echo", {})
    attempt = _claim(job).attempt
    written = threading.Event()

    def slow_commit() -> None:
        with transaction.atomic():
            store.succeed(job.pk, attempt, "{}")
            written.set()
            time.sleep(0.6)

    _later(0, slow_commit)
    assert written.wait(5)

    # when a waiter comes before the commit: it waits for the end's lock, then reads the row
    started = time.monotonic()
    done = jobs.wait(job, 5)
    assert done.status == Status.SUCCEEDED
    assert 0.3 <= time.monotonic() - started < 2.0


def test_a_wait_inside_the_transaction_that_ended_the_job_is_bounded_by_its_timeout():
    # The end's lock is held by the caller's own open transaction: the waiter's connection cannot
    # take it; the wait gives up at its timeout and answers what the caller's transaction sees.
    job = enqueue("examples.echo", {})
    with transaction.atomic():
        control.cancel(job)
        started = time.monotonic()
        done = jobs.wait(job, 0.5)
        assert 0.45 <= time.monotonic() - started < 2.0
        assert done.status == Status.CANCELLED


def test_a_rolled_back_end_wakes_no_waiter():
    job = enqueue("examples.echo", {})

    def cancel_then_roll_back() -> None:
        with pytest.raises(RuntimeError), transaction.atomic():
            store.cancel(job.pk)
            raise RuntimeError("rolled back")

    _later(0.1, cancel_then_roll_back)
    with pytest.raises(jobs.WaitTimeout):
        jobs.wait(job, 0.6)
    assert Job.objects.get(pk=job.pk).status == Status.PENDING


def test_wait_on_a_missing_or_uncommitted_job_raises_does_not_exist():
    with pytest.raises(Job.DoesNotExist):
        jobs.wait(987654321, 1)
    # a job enqueued in a transaction not committed yet: no other connection can see it
    with transaction.atomic():
        job = enqueue("examples.echo", {})
        with pytest.raises(Job.DoesNotExist, match="not committed yet"):
            jobs.wait(job, 0.2)


@pytest.mark.parametrize("timeout", [-1, float("nan"), float("inf"), "3"])
def test_wait_refuses_a_timeout_that_is_not_a_finite_number_of_seconds(timeout):
    job = enqueue("examples.echo", {})
    with pytest.raises(ValueError, match="timeout"):
        jobs.wait(job, timeout)


def test_wait_chain_returns_the_chain_failed_when_its_step_dies():
    chain = start_chain([jobs.Step("examples.fail", {"times": 9}, retries=0), jobs.Step("examples.ping", {})])
    first = Job.objects.get(chain=chain, chain_index=0)

    def die() -> None:
        with transaction.atomic():
            ended([store.fail(first.pk, _claim(first).attempt, "boom", 0)], How.RAN)

    _later(0.3, die)
    started = time.monotonic()
    done = jobs.wait_chain(chain.pk, 10)
    assert done.status == "failed" and done.finished_at is not None
    assert 0.25 <= time.monotonic() - started < 2.0
    with pytest.raises(jobs.WaitTimeout) as raised:
        jobs.wait_chain(start_chain([jobs.Step("examples.ping", {})]), 0.2)
    assert isinstance(raised.value.row, Chain) and raised.value.row.status == "running"


# --- Every statement that ends a job notifies, at commit -----------------------------------------


def _end_one_of_each(waited: Callable[[list[Job], Chain], None]) -> tuple[list[Job], Job, Chain]:
    """Rows ended by each statement that ends a job (and one chain), after `waited(jobs, chain)`
    was given them: the jobs that end, and one that fails an attempt and will be retried."""
    succeeded = enqueue("examples.echo", {})
    dead = enqueue("examples.fail", {"times": 9}, retries=0)
    retried = enqueue("examples.fail", {"times": 9}, retries=1)
    cancelled = enqueue("examples.echo", {})
    asked = enqueue("examples.echo", {})  # cancel asked while running: ends cancelled on success
    handed = enqueue("examples.echo", {})
    reaped = enqueue("examples.echo", {}, retries=0)
    chain = start_chain([jobs.Step("examples.echo", {})])
    step = Job.objects.get(chain=chain)
    ended = [succeeded, dead, cancelled, asked, handed, reaped, step]
    waited([*ended, retried], chain)

    store.succeed(succeeded.pk, _claim(succeeded).attempt, "{}")
    store.fail(dead.pk, _claim(dead).attempt, "boom", 0)
    store.fail(retried.pk, _claim(retried).attempt, "again later", 0)  # failed, not ended: silent
    store.cancel(cancelled.pk)
    attempt = _claim(asked).attempt
    store.cancel(asked.pk)
    store.succeed(asked.pk, attempt, "{}")
    store.claim(handed.pk, "gone-node/1", 30)
    store.cancel(handed.pk)
    store.hand_back("gone-node")
    store.claim(reaped.pk, "lost/1", 0)
    assert store.reap(reaped.pk).status == Status.DEAD
    with transaction.atomic():
        store.succeed(step.pk, _claim(step).attempt, "{}", chain.pk)
        store.finish_chain(chain.pk, "succeeded")
    return ended, retried, chain


def test_every_statement_that_ends_a_waited_job_or_chain_notifies_its_id(listener):
    # given a waiter's shared lock on every job and the chain
    def wait_on(rows: list[Job], chain: Chain) -> None:
        listener.hold([store.waiter_key("job", job.pk) for job in rows] + [store.waiter_key("chain", chain.pk)])

    # when each ending statement ends one of them
    ended, retried, chain = _end_one_of_each(wait_on)

    # then each end is heard, the retried attempt's is not
    heard = listener.notes()
    assert sorted(heard) == sorted([(store.JOB_ENDED, str(job.pk)) for job in ended] + [(store.CHAIN_ENDED, str(chain.pk))])
    assert (store.JOB_ENDED, str(retried.pk)) not in heard


def test_ends_nobody_waits_for_send_no_notify(listener):
    # A NOTIFY serializes the commits of every transaction sending one: none without a waiter.
    ended, _, _ = _end_one_of_each(lambda rows, chain: None)
    assert all(job.status in ("pending", "running") for job in ended)  # the objects as enqueued
    assert listener.notes() == []


# --- GET /api/jobs/{id}?wait= and GET /api/chains/{id}?wait= --------------------------------------


def test_get_with_wait_answers_at_once_for_an_ended_job(api):
    job = enqueue("examples.echo", {})
    control.cancel(job)
    started = time.monotonic()
    status, body = api("get", f"/jobs/{job.pk}?wait=5")
    assert (status, body["status"]) == (200, "cancelled")
    assert time.monotonic() - started < 1.0


def test_get_with_wait_answers_when_the_job_ends(api):
    job = enqueue("examples.echo", {})
    attempt = _claim(job).attempt
    _later(0.3, lambda: store.succeed(job.pk, attempt, '{"ok": true}'))
    started = time.monotonic()
    status, body = api("get", f"/jobs/{job.pk}?wait=8")
    assert (status, body["status"], body["output"]) == (200, "succeeded", {"ok": True})
    assert 0.25 <= time.monotonic() - started < 2.0


def test_get_with_wait_answers_200_with_the_pending_job_at_the_timeout(api):
    job = enqueue("examples.echo", {})
    started = time.monotonic()
    status, body = api("get", f"/jobs/{job.pk}?wait=0.4")
    assert (status, body["id"], body["status"]) == (200, job.pk, "pending")
    assert 0.4 <= time.monotonic() - started < 1.5


@pytest.mark.parametrize("wait", ["-1", "abc", "nan", "inf", str(WAIT_MAX + 1), "1e400"])
def test_bad_wait_is_400_naming_wait(api, wait):
    job = enqueue("examples.echo", {})
    for path in (f"/jobs/{job.pk}?wait={wait}", f"/chains/{start_chain([jobs.Step('examples.ping', {})]).pk}?wait={wait}"):
        status, body = api("get", path)
        assert status == 400, (path, body)
        assert list(body["fields"]) == ["wait"], body


def test_get_with_wait_on_a_missing_job_or_chain_is_404(api):
    assert api("get", "/jobs/987654321?wait=1")[0] == 404
    assert api("get", "/chains/987654321?wait=1")[0] == 404


def test_get_chain_with_wait_answers_when_the_chain_ends(api):
    chain = start_chain([jobs.Step("examples.echo", {})])
    step = Job.objects.get(chain=chain)
    attempt = _claim(step).attempt

    def succeed() -> None:
        with transaction.atomic():
            store.succeed(step.pk, attempt, "{}", chain.pk)
            store.finish_chain(chain.pk, "succeeded")

    _later(0.3, succeed)
    started = time.monotonic()
    status, body = api("get", f"/chains/{chain.pk}?wait=8")
    assert (status, body["status"], body["steps"][0]["status"]) == (200, "succeeded", "succeeded")
    assert 0.25 <= time.monotonic() - started < 2.0


def test_openapi_documents_wait_bounded_on_both_routes(api):
    status, schema = api("get", "/openapi.json")
    assert status == 200
    for path in ("/api/jobs/{job_id}", "/api/chains/{chain_id}"):
        (param,) = [p for p in schema["paths"][path]["get"]["parameters"] if p["name"] == "wait"]
        assert param["in"] == "query" and not param.get("required", False)
        types = param["schema"].get("anyOf", [param["schema"]])
        number = next(t for t in types if t.get("type") == "number")
        assert (number["minimum"], number["maximum"]) == (0, WAIT_MAX)


# --- A server process's hub: one connection for every wait (jobs/interfaces/listener.py) -------------------


def _in_a_thread(action: Callable, *args: object) -> object:
    """`action(*args)` from a coroutine, in a thread whose connections are closed after it."""
    from asgiref.sync import sync_to_async

    def run() -> object:
        try:
            return action(*args)
        finally:
            connections.close_all()

    return sync_to_async(run, thread_sensitive=False)()


def _shared_locks() -> int:
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND mode = 'ShareLock' AND granted")
        return cursor.fetchone()[0]


def test_one_hub_holds_one_lock_per_row_for_many_waiters_and_wakes_each_at_its_end():
    import asyncio

    from jobs.interfaces import listener

    first, second = enqueue("examples.echo", {}), enqueue("examples.echo", {})
    attempts = {job.pk: _claim(job).attempt for job in (first, second)}

    async def scenario() -> tuple[list[bool], list[int]]:
        hub = listener.Hub(keep_open=True)
        # three waiters on the first job, one on the second, one on a job that has ended already
        waits = [asyncio.create_task(hub.ended(listener.JOB, first.pk, 10)) for _ in range(3)]
        waits.append(asyncio.create_task(hub.ended(listener.JOB, second.pk, 0.5)))
        locks = []
        while len(hub.holds) < 2 or sum(hub.holds.values()) < 4:
            await asyncio.sleep(0.01)
        locks.append(await _in_a_thread(_shared_locks))  # one per row, not per waiter
        await _in_a_thread(store.succeed, first.pk, attempts[first.pk], "{}")
        answers = await asyncio.gather(*waits)
        await asyncio.sleep(0.1)  # the releases are tasks
        locks.append(await _in_a_thread(_shared_locks))
        ended = await hub.ended(listener.JOB, first.pk, 5)  # seen ended at once: the row is read after the lock
        await hub.aclose()
        return [*answers, ended], locks

    started = time.monotonic()
    answers, locks = asyncio.run(scenario())
    assert answers == [True, True, True, False, True]  # the second job's waiter timed out
    assert locks == [2, 0], locks
    assert time.monotonic() - started < 3.0


def test_a_hub_whose_connection_is_lost_fails_its_open_waits_and_the_next_wait_reconnects():
    import asyncio

    from jobs.interfaces import listener

    job = enqueue("examples.echo", {})

    def terminate(pid: int) -> None:
        with connections["default"].cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(%s)", [pid])

    async def scenario() -> tuple[type[BaseException] | None, bool]:
        hub = listener.Hub(keep_open=True)
        waiting = asyncio.create_task(hub.ended(listener.JOB, job.pk, 10))
        while not hub.holds:
            await asyncio.sleep(0.01)
        await _in_a_thread(terminate, hub.conn.info.backend_pid)
        try:
            await waiting
            failed = None
        except listener.WaitUnavailable as exc:
            failed = type(exc)
        again = await hub.ended(listener.JOB, job.pk, 0.2)  # a new connection: still pending, timed out
        await hub.aclose()
        return failed, again

    started = time.monotonic()
    failed, again = asyncio.run(scenario())
    assert failed is listener.WaitUnavailable and again is False
    assert time.monotonic() - started < 5.0
