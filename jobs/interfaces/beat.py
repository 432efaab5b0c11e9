"""Beat: django-celery-beat's database scheduler with a leader lock and exactly-once ticks.

- Only the beat holding the Redis lock `conveyor:beat:leader` fires ticks; every other beat
  waits as a standby and takes over within CONVEYOR_BEAT_LOCK_SECONDS (+1 s) of the leader's
  death (django-celery-beat#558, celery#1495).
- A Conveyor tick writes the job row itself (no intermediate Celery message) with the
  idempotency key `conveyor:schedule:<name>:<tick time>`, so a beat restarted mid-tick, or two beats
  that both believe they lead, produce one job per tick.
"""
from __future__ import annotations

import datetime as dt
import logging
import math
import uuid
from typing import Any

from celery.schedules import crontab, schedule as interval_schedule
from django.conf import settings
from django.db import DatabaseError, connections
from django_celery_beat.clockedschedule import clocked
from django_celery_beat.schedulers import DatabaseScheduler, ModelEntry

from jobs.engine.schedules import TASK
from project.services import redis_client

log = logging.getLogger("conveyor.beat")
LOCK_NAME = "conveyor:beat:leader"


def tick_time(entry: Any) -> dt.datetime:
    """The nominal time of the tick being fired, the same in every beat process.

    Interval schedules tick on multiples of their period since the epoch; crontab schedules at
    the first occurrence after the entry's last run; one-off schedules at their clocked time.
    """
    sched = entry.schedule
    now = dt.datetime.now(dt.timezone.utc)
    if isinstance(sched, clocked):
        return sched.clocked_time.astimezone(dt.timezone.utc)
    if isinstance(sched, crontab) and entry.last_run_at is not None:
        # The next occurrence after the last run, exactly: celery's remaining_delta gives it as
        # (last run in the schedule's zone, delta); adding them is wall-clock arithmetic in that
        # zone, which keeps "03:00 Paris" at 03:00 across daylight-saving changes.
        start, delta, _ = sched.remaining_delta(entry.last_run_at)
        nominal = (start + delta).replace(second=0, microsecond=0)
        return nominal.astimezone(dt.timezone.utc)
    if isinstance(sched, interval_schedule):
        period = max(1.0, sched.run_every.total_seconds())
        return dt.datetime.fromtimestamp(math.floor(now.timestamp() / period) * period, dt.timezone.utc)
    return now.replace(microsecond=0)


def enqueue_tick(schedule_name: str, job_type: str, data: dict[str, Any], at: dt.datetime, priority: int | None = None) -> Any:
    """Write the tick's job (or find the one already written for this tick)."""
    from jobs.engine import tracing
    from jobs.engine.creation import Step, enqueue_step, platform_key

    key = platform_key("schedule", schedule_name, at.strftime("%Y-%m-%dT%H:%M:%SZ"))
    # Traced: each tick starts a trace of its own, its job enqueued (and run) under it.
    with tracing.span("conveyor.schedule.tick", {"conveyor.schedule": schedule_name, "conveyor.job.type": job_type,
                                                 "conveyor.tick": at.isoformat()}):
        return enqueue_step(Step(job_type, data, idempotency_key=key, priority=priority))[0]


class AlignedInterval(interval_schedule):
    """An interval schedule that ticks on multiples of its period since the epoch.

    Celery's interval counts from the last run, which drifts later at every firing until a tick
    is skipped; aligned ticks are also the same instants in every beat process.
    """

    def is_due(self, last_run_at: dt.datetime) -> tuple[bool, float]:
        period = max(1.0, self.run_every.total_seconds())
        now = self.now().timestamp()
        until_next = period - (now % period)
        if math.floor(now / period) > math.floor(self.maybe_make_aware(last_run_at).timestamp() / period):
            return True, until_next
        return False, until_next


class AlignedEntry(ModelEntry):
    def __init__(self, model: Any, app: Any = None) -> None:
        super().__init__(model, app=app)
        sched = getattr(self, "schedule", None)
        if type(sched) is interval_schedule:
            self.schedule = AlignedInterval(sched.run_every, app=sched.app)


class _Sent:
    def __init__(self, job_id: int) -> None:
        self.id = f"job-{job_id}"


class LeaderScheduler(DatabaseScheduler):
    """DatabaseScheduler that fires only while it holds the leader lock."""

    Entry = AlignedEntry

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._lock_ttl = float(settings.CONVEYOR["BEAT_LOCK_SECONDS"])
        self._lock = None
        self._leading = False
        super().__init__(*args, **kwargs)

    def _hold_lock(self) -> bool:
        try:
            if self._lock is None:
                self._lock = redis_client().lock(LOCK_NAME, timeout=self._lock_ttl, thread_local=False)
                self._lock.local.token = uuid.uuid4().hex.encode()
            if self._leading:
                self._lock.reacquire()
                return True
            if self._lock.acquire(blocking=False, token=self._lock.local.token):
                log.warning("beat: this process is now the leader")
                # Read every entry afresh: the previous leader may have fired since we loaded.
                # Private state of the pinned django-celery-beat and Celery: a fresh read is what
                # DatabaseScheduler.schedule does when `_initial_read` is set, and Scheduler.tick
                # rebuilds its heap when `_heap` is None (tests/unit/test_beat_hooks.py).
                self._initial_read = True
                self._heap = None
                self._leading = True
                return True
        except Exception as exc:  # Redis away or the lock lost: stand by until it is back
            if self._leading:
                log.warning("beat: lost the leader lock (%s); standing by", exc)
            self._leading = False
            self._lock = None
        return False

    def tick(self, *args: Any, **kwargs: Any) -> float:
        if not self._hold_lock():
            return 1.0  # standby: try for the lock every second
        try:
            delay = super().tick(*args, **kwargs)
        except DatabaseError as exc:
            # PostgreSQL restarted or away (a standby's connection may have died while it waited):
            # Celery's beat would exit on the error. Drop the connections, read every entry afresh
            # in a second (the tick's platform key keeps a re-read from firing a tick twice).
            log.warning("beat: PostgreSQL error (%s); reading the schedule again in 1 s", exc)
            connections.close_all()
            self._initial_read = True
            self._heap = None
            return 1.0
        return min(delay, self._lock_ttl / 3)

    def apply_async(self, entry: Any, producer: Any = None, advance: bool = True, **kwargs: Any) -> Any:
        if entry.task != TASK:
            return super().apply_async(entry, producer=producer, advance=advance, **kwargs)
        entry = self.reserve(entry) if advance else entry
        params = entry.kwargs or {}
        at = tick_time(entry)
        job = enqueue_tick(params["schedule"], params["type"], params.get("input") or {}, at)
        log.info("beat: schedule %s tick %s -> job %s", params["schedule"], at.isoformat(), job.pk)
        # Save the entry's last run now (the base apply_async would, with beat_sync_every=1): a
        # beat that re-reads the schedule (on taking the lead, or again after losing it for a
        # moment) must not see a stale last run and fire the same tick again.
        self.sync()
        return _Sent(job.pk)

    def close(self) -> None:
        if self._leading and self._lock is not None:
            try:
                self._lock.release()
            except Exception:  # already expired: nothing to hand over
                pass
        super().close()
