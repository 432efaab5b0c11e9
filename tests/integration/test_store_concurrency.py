"""The job store under contention, in process on the session's real PostgreSQL: runner threads
claim, heartbeat and complete the same rows while a reaper takes the leases that lapse and a
hand-back thread takes rows from workers declared gone (still running, so their late outcomes must
be refused). The rows, fenced by attempt, must still say one consistent story: every attempt ran
once, every row ended, and each succeeded row's success was recorded once, by its last attempt.

Every thread uses its own database connections (Django's are per thread) and closes them at its
end; every loop is bounded by a stop event, and every thread is joined with a timeout.
"""
from __future__ import annotations

import json
import random
import threading
import time
import traceback
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Callable

import pytest
from django.db import DatabaseError, connections, transaction
from django.db.models.functions import Now

from jobs import Step, new_job
from jobs.engine import store
from jobs.models import Job, Status
from jobs.engine.ending import How
from jobs.engine.ending import ended as finished

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

SEED = 20_240_909
ROWS = 50
DOOMED = 5  # rows whose every run fails: they must end dead
RUNNERS = 8  # two per node, each its own start (instance token) of the node
LEASE = 1.5  # seconds; stalled and long runs take twice that, only long ones with heartbeats
STALL, LONG, FAIL = 0.12, 0.15, 0.3  # chances of a run stalling past its lease / running long / raising
REAP_EVERY, BEAT_EVERY, HAND_BACK_EVERY = 0.2, LEASE / 3, 0.7
SPARED = 2  # the last node is never handed back: its long runs keep their rows by heartbeats alone
DEADLINE = 60  # seconds for every row to end (about 12 s on an idle machine)


@dataclass
class Ledger:
    """What the threads saw, appended under one lock."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    runs: list[tuple[int, int]] = field(default_factory=list)  # (job id, attempt) per handler run
    succeeded: list[tuple[int, int]] = field(default_factory=list)  # successes the store recorded
    failed: list[tuple[int, int]] = field(default_factory=list)  # failures the store recorded
    refused: list[tuple[int, int]] = field(default_factory=list)  # outcomes the store refused
    in_flight: dict[tuple[int, int], bool] = field(default_factory=dict)  # run -> stalled
    long: list[tuple[int, int]] = field(default_factory=list)  # runs longer than the lease, heartbeats on
    reaped: list[tuple[int, int]] = field(default_factory=list)  # runs the reaper took
    handed_back: list[tuple[int, int]] = field(default_factory=list)  # runs hand-back took
    beats: int = 0
    unheld: list[tuple[int, int]] = field(default_factory=list)  # runs a heartbeat did not extend
    errors: list[str] = field(default_factory=list)

    def add(self, name: str, value: object) -> None:
        with self.lock:
            getattr(self, name).append(value)


def thread(ledger: Ledger, stop: threading.Event, name: str, body: Callable[[], None]) -> threading.Thread:
    """A thread running `body` until it returns; any exception is recorded for the test to fail on."""

    def target() -> None:
        try:
            body()
        except Exception:
            ledger.add("errors", f"{name}: {traceback.format_exc()}")
            stop.set()
        finally:
            connections.close_all()

    return threading.Thread(target=target, name=name, daemon=True)


def runner_loop(i: int, ledger: Ledger, stop: threading.Event) -> None:
    """Claim a due runnable row, run it (record the run), then succeed or fail, after a short run,
    a long one (past its lease, kept by heartbeats) or a stall (past its lease, no heartbeats);
    complete it as the runner does (a failure settles in the outcome's transaction)."""
    rng = random.Random(SEED + i)
    worker = store.worker_name(f"node{i // 2}@test", 1000 + i, f"start{i}")
    while not stop.is_set():
        ids = list(
            Job.objects.filter(status__in=(Status.PENDING, Status.FAILED), cancel_requested=False, run_after__lte=Now()).values_list(
                "id", "input"
            )
        )
        if not ids:
            stop.wait(0.02)
            continue
        job_id, data = rng.choice(ids)
        claimed = store.claim(job_id, worker, LEASE)
        if claimed is None:
            continue  # another runner took it first, or the reaper holds it
        run = (claimed.id, claimed.attempt)
        roll = rng.random()
        stalls, long = roll < STALL, STALL <= roll < STALL + LONG
        fails = data.get("doomed") or rng.random() < FAIL
        with ledger.lock:
            ledger.runs.append(run)
            ledger.in_flight[run] = stalls
            if long:
                ledger.long.append(run)
        stop.wait(LEASE * 2 if stalls or long else rng.uniform(0, 0.1))
        if fails:
            with transaction.atomic(durable=True):
                ended = store.fail(claimed.id, claimed.attempt, f"run {run} failed", rng.uniform(0, 0.2))
                if ended is not None:
                    finished([ended], How.RAN)
            ledger.add("failed" if ended is not None else "refused", run)
        else:
            done = store.succeed(claimed.id, claimed.attempt, json.dumps({"attempt": claimed.attempt, "runner": i}))
            ledger.add("succeeded" if done is not None else "refused", run)
        with ledger.lock:
            ledger.in_flight.pop(run, None)  # (a run claimed twice would be in it once)


def heartbeat_loop(ledger: Ledger, stop: threading.Event) -> None:
    """Extend the leases of the runs in flight, except stalled ones (as a run past its deadline).

    A run missing from the answer has lost its row (or its outcome was just recorded)."""
    while not stop.wait(BEAT_EVERY):
        with ledger.lock:
            runs = [run for run, stalled in ledger.in_flight.items() if not stalled]
        if not runs:
            continue
        try:
            beats = store.heartbeat(runs, LEASE)
        except DatabaseError:  # a deadlock with a node-wide hand-back: the runner's heartbeat retries too
            connections[store.CLAIMS].close()
            continue
        held = {(beat.id, beat.attempt) for beat in beats}
        assert held <= set(runs), f"the heartbeat extended runs it was not asked about: {held - set(runs)}"
        with ledger.lock:
            ledger.beats += len(held)
            ledger.unheld.extend(set(runs) - held)


def taken(ended: list[store.Ended]) -> list[tuple[int, int]]:
    """The runs a reap or hand-back took (read in its transaction, the rows still locked by it)."""
    return list(Job.objects.filter(pk__in=[row.id for row in ended]).values_list("id", "attempt"))


def reaper_loop(ledger: Ledger, stop: threading.Event) -> None:
    """recovery.reap, also noting which attempt of each row it took."""
    while not stop.wait(REAP_EVERY):
        for job_id in store.expired(100):
            with transaction.atomic():  # one row per transaction, as recovery.reap does
                row = store.reap(job_id)
                if row is None:
                    continue
                runs = taken([row])
                finished([row], How.REAPED)
            with ledger.lock:
                ledger.reaped.extend(runs)


def hand_back_loop(ledger: Ledger, stop: threading.Event) -> None:
    """recovery.hand_back of a start of a node declared gone (now and then the whole node) while
    its runner still runs, also noting which attempt of each row it took."""
    rng = random.Random(SEED - 1)
    while not stop.wait(HAND_BACK_EVERY):
        i = rng.randrange(RUNNERS - SPARED)
        node, instance = f"node{i // 2}@test", ("" if rng.random() < 0.25 else f"start{i}")
        try:
            with transaction.atomic():
                # Drained (attempt given back): a crash's counted attempts could end a row dead
                # here, and this test is about each attempt running once and one success.
                ended = store.hand_back(node, instance, drained=True)
                runs = taken(ended)
                finished(ended, How.HANDED_BACK)
        except DatabaseError:  # a deadlock with the heartbeat: recovery.hand_back gives up too
            continue
        with ledger.lock:
            ledger.handed_back.extend(runs)


def test_runners_reaper_and_hand_back_on_the_same_rows_run_each_attempt_once_and_record_one_success():
    # given: 50 rows of 4 attempts, 5 of them failing every run
    rows = store.insert(
        [new_job(Step("examples.echo", {"n": n, "doomed": n < DOOMED}, retries=3)) for n in range(ROWS)]
    )
    assert len(rows) == ROWS
    ledger, stop = Ledger(), threading.Event()
    threads = [thread(ledger, stop, f"runner-{i}", lambda i=i: runner_loop(i, ledger, stop)) for i in range(RUNNERS)]
    threads += [
        thread(ledger, stop, "heartbeat", lambda: heartbeat_loop(ledger, stop)),
        thread(ledger, stop, "reaper", lambda: reaper_loop(ledger, stop)),
        thread(ledger, stop, "hand-back", lambda: hand_back_loop(ledger, stop)),
    ]

    # when: they run until every row has ended (or an error, or the deadline)
    for t in threads:
        t.start()
    deadline = time.monotonic() + DEADLINE
    try:
        while not stop.is_set() and time.monotonic() < deadline:
            if not Job.objects.exclude(status__in=(Status.SUCCEEDED, Status.DEAD)).exists():
                break
            time.sleep(0.2)
    finally:
        stop.set()
        for t in threads:
            t.join(LEASE * 2 + 15)
    assert not [t.name for t in threads if t.is_alive()], "threads still running"
    assert not ledger.errors, "\n".join(ledger.errors)

    # then: every row ended
    final = {job.pk: job for job in Job.objects.all()}
    assert len(final) == ROWS
    unfinished = {pk: (job.status, job.attempt) for pk, job in final.items() if job.status not in (Status.SUCCEEDED, Status.DEAD)}
    assert not unfinished, f"rows not ended within {DEADLINE}s: {unfinished}"

    # no attempt ran twice, and each row's attempts ran once each, 1 to its final attempt
    repeated = [run for run, n in Counter(ledger.runs).items() if n > 1]
    assert not repeated, f"attempts run twice: {repeated}"
    attempts: dict[int, list[int]] = defaultdict(list)
    for job_id, attempt in ledger.runs:
        attempts[job_id].append(attempt)
    for pk, job in final.items():
        assert sorted(attempts[pk]) == list(range(1, job.attempt + 1)), (pk, job.status, job.attempt, sorted(attempts[pk]))

    # each succeeded row's success was recorded once, by its final attempt; none for a dead row
    successes: dict[int, list[int]] = defaultdict(list)
    for job_id, attempt in ledger.succeeded:
        successes[job_id].append(attempt)
    for pk, job in final.items():
        if job.status == Status.SUCCEEDED:
            assert successes[pk] == [job.attempt], (pk, job.attempt, successes[pk])
            assert job.output["attempt"] == job.attempt
        else:
            assert successes[pk] == [], (pk, job.status, successes[pk])
            assert job.attempt == job.max_attempts, (pk, job.attempt, job.max_attempts)
    assert all(final[rows[n].pk].status == Status.DEAD for n in range(DOOMED))

    # every run's outcome was recorded or refused, and refused exactly when the reaper or hand-back
    # had taken that run's row; a run the heartbeat did not extend had been taken or had finished
    assert sorted(ledger.runs) == sorted(ledger.succeeded + ledger.failed + ledger.refused)
    took = ledger.reaped + ledger.handed_back
    assert len(took) == len(set(took)), f"a run taken twice: {sorted(took)}"
    assert set(took) <= set(ledger.runs)
    assert set(ledger.refused) == set(took), (
        f"refused but not taken: {sorted(set(ledger.refused) - set(took))}; taken but recorded: {sorted(set(took) - set(ledger.refused))}"
    )
    assert set(ledger.unheld) <= set(took) | set(ledger.succeeded) | set(ledger.failed)
    for job_id, attempt in ledger.failed:
        job = final[job_id]
        assert job.attempt > attempt or (job.status == Status.DEAD and job.attempt == attempt), (job_id, attempt, job.status, job.attempt)

    # and the run exercised what it is about
    assert ledger.reaped and ledger.handed_back and ledger.beats > 0
    recorded = set(ledger.succeeded + ledger.failed)
    assert any(run in recorded for run in ledger.long), "no run longer than its lease kept its row through heartbeats"
    assert Counter(job.status for job in final.values())[Status.SUCCEEDED] >= ROWS // 2
