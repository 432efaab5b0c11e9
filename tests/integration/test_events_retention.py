"""Retention of the event log, in process on the session's real PostgreSQL: what the every-minute
housekeeping schedules delete (events whose deliveries have all ended, older than
CONVEYOR_RETENTION_DAYS) and what they must keep (anything still waiting or running).

No worker runs here: rows are put in the states a worker would leave them in.
"""
from __future__ import annotations

import datetime as dt

import pytest
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from jobs.engine import registry
from jobs.engine.context import Context
from jobs.models import FINISHED, Job, Status
from jobs.engine.schedules import declared
from subscribers import emit, replay
from subscribers.models import Delivery, Event
from tests.support import redis_client

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

DAYS = int(settings.CONVEYOR["RETENTION_DAYS"])


@pytest.fixture(autouse=True)
def empty_redis():
    # emit() publishes each delivery's message; no worker takes them here
    redis_client().flushall()
    yield
    redis_client().flushall()


def ago(days: float) -> dt.datetime:
    return timezone.now() - dt.timedelta(days=days)


def every_minute_housekeeping(data: dict | None = None) -> dict[str, object]:
    """Run, in process, each job every-minute schedule of the platform runs (as beat would fire
    them): conveyor.cleanup, and whatever the event bus declares."""
    results = {}
    for sched in declared():
        if sched.every != 60:
            continue
        jt = registry.get(sched.job)
        ctx = Context(0, jt.name, 1, 1, None, None, None, f"test-{jt.name}")
        results[jt.name] = jt.handler(ctx, jt.parse({**sched.input, **(data or {})}))
    return results


def set_status(job_ids: list[int], status: str, finished_days: float = DAYS + 1) -> None:
    """Put jobs in `status` as a worker would: an ending runs the job type's on_finish hook in the
    same transaction (a delivery's ending hands its key's turn on)."""
    with transaction.atomic():
        for job in Job.objects.filter(pk__in=job_ids):
            ends = status in FINISHED
            Job.objects.filter(pk=job.pk).update(status=status, finished_at=ago(finished_days) if ends else None)
            hook = registry.get(job.type).on_finish
            if ends and hook:
                hook(job.pk, status)


def jobs_of(event: Event) -> list[int]:
    return list(Delivery.objects.filter(event=event).values_list("job_id", flat=True))


def old_event(name: str, *, ended: str = Status.SUCCEEDED, finished_days: float = DAYS + 1, key: str | None = None) -> Event:
    """An event emitted DAYS + 1 days ago whose deliveries' jobs are in state `ended`."""
    event = emit(name, {}, key=key)
    Event.objects.filter(pk=event.pk).update(created_at=ago(DAYS + 1))
    set_status(jobs_of(event), ended, finished_days)
    return event


def test_events_and_deliveries_are_never_deleted():
    # given old events (DAYS + 1 days) whose deliveries all ended long ago: succeeded, dead,
    # cancelled, to one subscriber (diagnostics.*) or two (diagnostics.flaky)
    gone = [
        old_event("diagnostics.done"),
        old_event("diagnostics.flaky"),
        old_event("diagnostics.dead", ended=Status.DEAD),
        old_event("diagnostics.cancelled", ended=Status.CANCELLED),
        old_event("diagnostics.keyed-done", key="k-done"),
    ]
    # and one whose delivery job retention already deleted (the delivery reads "expired")
    expired = old_event("diagnostics.expired", finished_days=DAYS + 0.5)
    Job.objects.filter(pk=Delivery.objects.get(event=expired).job_id).delete()
    assert Delivery.objects.get(event=expired).status == "expired"
    gone.append(expired)
    # and old events that must stay: a delivery still pending, failed (runs again), running, or
    # waiting behind the running one of its key
    pending = old_event("diagnostics.pending", ended=Status.PENDING)
    failed = old_event("diagnostics.failed", ended=Status.FAILED)
    running = old_event("diagnostics.running", ended=Status.RUNNING, key="k-busy")
    waiting = emit("diagnostics.waiting", {}, key="k-busy")
    Event.objects.filter(pk=waiting.pk).update(created_at=ago(DAYS + 1))
    assert Delivery.objects.get(event=waiting).status == "waiting"
    # and one old event whose deliveries ended only recently (replayed yesterday)
    recently = old_event("diagnostics.recently", finished_days=1)
    # and an old event replayed while its first delivery still ran: the replay ended long ago,
    # the first run (still holding its key's turn) has not
    holder = emit("diagnostics.holder", {}, key="k-replayed")
    first_job = Delivery.objects.get(event=holder).job_id
    set_status([first_job], Status.RUNNING)
    (again,) = replay(holder, "diagnostics.record")
    set_status([again.job_id], Status.SUCCEEDED)
    Event.objects.filter(pk=holder.pk).update(created_at=ago(DAYS + 1))
    # and a recent event, all delivered
    recent = emit("diagnostics.recent", {})
    set_status(jobs_of(recent), Status.SUCCEEDED, finished_days=0)
    kept = [pending, failed, running, waiting, recently, holder, recent]
    deliveries_kept = Delivery.objects.filter(event__in=kept).count()

    # when the every-minute housekeeping runs, in batches of 2 events
    results = every_minute_housekeeping({"batch": 2})

    # then the old, ended events are gone with their deliveries
    assert Event.objects.filter(pk__in=[e.pk for e in gone]).count() == 0, results
    assert Delivery.objects.filter(event_id__in=[e.pk for e in gone]).count() == 0
    # and every other event is still there, with each of its deliveries
    assert sorted(Event.objects.values_list("pk", flat=True)) == sorted(e.pk for e in kept)
    assert Delivery.objects.count() == deliveries_kept
    assert Delivery.objects.get(event=waiting).status == "waiting"
    # and the run says what it did
    (events_result,) = [r for name, r in results.items() if name != "conveyor.cleanup"]
    assert events_result["deleted_events"] == len(gone)
    assert events_result["deleted_deliveries"] == 7  # diagnostics.flaky reaches two subscribers
    assert events_result["batches"] >= 3

    # and when the kept ones end long ago, the next run deletes them too; the waiting one, released
    # by the end of the running one of its key, now runs and stays
    set_status([*jobs_of(pending), *jobs_of(failed), *jobs_of(running), first_job], Status.SUCCEEDED)
    assert Delivery.objects.get(event=waiting).status == Status.PENDING
    every_minute_housekeeping()
    assert set(Event.objects.values_list("pk", flat=True)) == {waiting.pk, recently.pk, recent.pk}


def test_event_retention_is_scheduled_every_minute():
    (sched,) = [s for s in declared() if registry.get(s.job).handler.__module__.startswith("subscribers.")]
    assert sched.every == 60
    assert sched.job == "subscribers.cleanup"
