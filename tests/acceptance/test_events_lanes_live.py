"""Per-key order when an operator retries or replays a delivery, across real worker processes.

A keyed delivery runs in its key's order: one at a time per (subscriber, key), the next released
only when the one before it has ended. An operator's retry of a dead delivery's job
(jobs.engine.control.retry, POST /api/jobs/{id}/retry) or a replay (subscribers.bus.replay) runs outside
that order: it must neither release the key's next delivery when it ends, nor keep the delivery it
replays from releasing it.

diagnostics.flaky (examples/subscribers.py) fails its first `data.fail` attempts (3 attempts in
all, backoff 0.1-1 s) then writes an Arrival row; every diagnostics.* event also reaches
diagnostics.record. Timings come from tests.support.FAST.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import pytest

from examples.models import Arrival
from jobs.engine import control
from jobs.models import FINISHED, Job, Status
from subscribers import emit, replay
from subscribers.models import Delivery, Event
from tests.support import wait_for

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True, databases="__all__")]

FLAKY, RECORD, KEY = "diagnostics.flaky", "diagnostics.record", "account-lanes"


def delivery(event: Event, subscriber: str = FLAKY) -> Delivery:
    return Delivery.objects.select_related("job").get(event=event, subscriber=subscriber)


def wait_status(event: Event, status: str, timeout: float, subscriber: str = FLAKY) -> Delivery:
    wait_for(
        lambda: delivery(event, subscriber).status == status,
        timeout,
        interval=0.05,
        what=f"{subscriber}'s delivery of {event} to be {status} (now {delivery(event, subscriber).status})",
    )
    return delivery(event, subscriber)


@dataclass(frozen=True)
class Turn:
    """A delivery's run in its key's order: released when its job was made, ended when that job
    (not a later retry or replay of it) ended."""

    event_id: int
    job_id: int
    released: dt.datetime
    ended: dt.datetime


def turn(event: Event, job_id: int, subscriber: str = FLAKY, run: bool = False) -> Turn:
    """From the delivery's release (or, with `run`, from its job's last claim) to its job's end.

    A release stamps the database's time at the start of its transaction: an emit that began
    before the key's last delivery ended, and took the key's lock after it, reads as released
    before that end. Where emits race ends like this, compare runs instead.
    """
    d = Delivery.objects.get(event=event, subscriber=subscriber)
    job = Job.objects.get(pk=job_id)
    assert job.status in FINISHED, f"{job} has not ended"
    return Turn(event.pk, job_id, job.started_at if run else d.released_at, job.finished_at)


def overlaps(turns: list[Turn]) -> list[str]:
    """Each pair of consecutive turns (in emit order) where the later one was released before the
    earlier one ended: two deliveries of the key ran at once."""
    turns = sorted(turns, key=lambda t: t.event_id)
    return [
        f"event {b.event_id} (job {b.job_id}) released at {b.released:%H:%M:%S.%f} while event "
        f"{a.event_id} (job {a.job_id}) ran until {a.ended:%H:%M:%S.%f}"
        for a, b in zip(turns, turns[1:])
        if b.released < a.ended
    ]


def test_retry_and_replay_break_per_key_event_order(live):
    # given a worker with four pool processes (room for a key's deliveries to run side by side)
    live.start("--concurrency", "4", mode="worker", name="lanes")

    # and a keyed delivery that dead-letters (fails all 3 attempts), with three more of its key
    # behind it, each failing once then succeeding
    doomed = emit(FLAKY, {"fail": 5}, key=KEY)
    flowed = [emit(FLAKY, {"fail": 1}, key=KEY) for _ in range(3)]
    assert delivery(flowed[0]).status == "waiting"
    dead = wait_status(doomed, Status.DEAD, 30)
    # which flow, in order, once it is dead
    for event in flowed:
        wait_status(event, Status.SUCCEEDED, 30)
    turns = [turn(doomed, dead.job_id)] + [turn(e, delivery(e).job_id) for e in flowed]

    # when a new event of the key is emitted (it takes the key's turn at once), and is replayed
    # while it still runs (it fails twice first: 0.3 s of backoff at least)
    holder = emit(FLAKY, {"fail": 2}, key=KEY)
    holder_job = delivery(holder).job_id
    assert holder_job is not None
    (replayed_holder,) = replay(holder, FLAKY)
    assert Job.objects.get(pk=holder_job).status not in FINISHED, "the key's holder ended before its replay"
    assert replayed_holder.job_id != holder_job
    # and eleven more are emitted behind it, each failing once (a backlog of a few seconds)
    backlog = [emit(FLAKY, {"fail": 1}, key=KEY) for _ in range(11)]
    assert delivery(backlog[0]).status == "waiting"
    # and, while the backlog runs, the dead delivery's job is retried by an operator (it fails two
    # more attempts, then succeeds: it ends while the backlog still runs)
    assert control.retry(Job.objects.get(pk=dead.job_id))
    # and an already delivered event is replayed
    (replayed,) = replay(flowed[0], FLAKY)
    assert replayed.job_id != turns[1].job_id

    # then every delivery completes: the key's sixteen, the retried one and both replays
    every = [doomed, *flowed, holder, *backlog]

    def all_done() -> bool:
        jobs = [dead.job_id, holder_job, replayed_holder.job_id, replayed.job_id]
        jobs += [d.job_id for d in Delivery.objects.filter(event__in=every, subscriber=FLAKY)]
        return None not in jobs and Job.objects.filter(pk__in=jobs, status=Status.SUCCEEDED).count() == len(set(jobs))

    wait_for(all_done, 90, interval=0.2, what="every delivery, the retry and both replays to succeed")
    for event in every:
        wait_status(event, Status.SUCCEEDED, 30, subscriber=RECORD)
    assert Job.objects.get(pk=dead.job_id).attempt == 6  # 3 dead + 3 after the retry
    # and each event reached diagnostics.flaky once in its key's order, plus once per retry or replay
    arrived = list(Arrival.objects.filter(subscriber=FLAKY).values_list("event_id", flat=True))
    assert sorted(arrived) == sorted([e.pk for e in every] + [flowed[0].pk, holder.pk])

    # and no two deliveries of the key ever ran at once in its order: each was released only once
    # the one before it had ended (the retry and the replays ran outside the order, beside it).
    # Each emit of the key above came while its lane was idle or held by a slow delivery, never
    # as one ended, so releases are compared (see turn()).
    turns += [turn(holder, holder_job)] + [turn(e, delivery(e).job_id) for e in backlog]
    ran_at_once = overlaps(turns)
    assert not ran_at_once, "two deliveries of the key ran at once:\n" + "\n".join(ran_at_once)
    # and diagnostics.record, which got every event once (no retry, no replay), never ran two of
    # the key at once either (its runs are compared: its lane often drained while events were emitted)
    record_turns = [turn(e, delivery(e, RECORD).job_id, RECORD, run=True) for e in every]
    ran_at_once = overlaps(record_turns)
    assert not ran_at_once, "two deliveries of the key ran at once:\n" + "\n".join(ran_at_once)
