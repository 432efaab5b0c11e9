"""The nominal time of a beat tick: the same instant in every beat process, across DST changes
(django-celery-beat#194, "Package not handling Daylight Savings Time": a crontab in a zone with
DST fires at the wrong hour, or twice, around the change)."""
from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest
from celery.schedules import crontab

from jobs.interfaces.beat import tick_time

PARIS = ZoneInfo("Europe/Paris")


class Entry:
    def __init__(self, schedule, last_run_at):
        self.schedule = schedule
        self.last_run_at = last_run_at


@pytest.mark.parametrize(
    ("last_run_local", "expected_utc"),
    [
        # an ordinary night: 03:00 in Paris is 02:00 UTC in winter
        (dt.datetime(2026, 1, 10, 3, 0, tzinfo=PARIS), dt.datetime(2026, 1, 11, 2, 0, tzinfo=dt.timezone.utc)),
        # the spring-forward night (29 March 2026): 03:00 CEST is 01:00 UTC
        (dt.datetime(2026, 3, 28, 3, 0, tzinfo=PARIS), dt.datetime(2026, 3, 29, 1, 0, tzinfo=dt.timezone.utc)),
        # the fall-back night (25 October 2026): 03:00 CET is 02:00 UTC again
        (dt.datetime(2026, 10, 24, 3, 0, tzinfo=PARIS), dt.datetime(2026, 10, 25, 2, 0, tzinfo=dt.timezone.utc)),
    ],
)
def test_crontab_tick_is_the_local_wall_clock_time_across_dst(last_run_local, expected_utc):
    """django-celery-beat#194: the tick after a run is at the intended local time, whichever
    side of a DST change it falls on."""
    nightly = crontab(minute="0", hour="3")
    nightly.tz = PARIS
    assert tick_time(Entry(nightly, last_run_local)) == expected_utc


def test_crontab_tick_is_exact_to_the_second():
    every_minute = crontab()
    last = dt.datetime(2026, 5, 1, 12, 0, 0, 700_000, tzinfo=dt.timezone.utc)
    assert tick_time(Entry(every_minute, last)) == dt.datetime(2026, 5, 1, 12, 1, tzinfo=dt.timezone.utc)


def fires(hour: int, minute: int, start: dt.datetime, end: dt.datetime) -> list[tuple[dt.datetime, dt.datetime]]:
    """(moment fired, nominal tick) of a daily crontab at `hour:minute` in Paris, as beat would
    fire it between `start` and `end` (UTC): a schedule row (django-celery-beat's CrontabSchedule,
    its TzAwareCrontab), beat's entry of it (jobs.interfaces.beat.LeaderScheduler.Entry), asked whether it is
    due on a clock that moves as beat sleeps (as long as the entry says, an hour at most); each
    time it is due, the tick is written under jobs.interfaces.beat.tick_time and the run recorded, as beat
    does."""
    from django_celery_beat.models import CrontabSchedule, PeriodicTask

    from jobs.interfaces.beat import LeaderScheduler
    from project import celery_app

    cron = CrontabSchedule(minute=str(minute), hour=str(hour), timezone="Europe/Paris")
    task = PeriodicTask(name="conveyor:nightly", task="conveyor.tick", crontab=cron, kwargs="{}", last_run_at=start)
    now, found = start, []
    for _ in range(1_000):  # an hour at a time at most: 4 days need 96 steps and a few
        if now >= end:
            return found
        entry = LeaderScheduler.Entry(task, app=celery_app)
        entry.schedule.nowfun = lambda: now.astimezone(PARIS)
        due, wait = entry.is_due()
        if due:
            found.append((now, tick_time(entry)))
            task.last_run_at = now
        now += dt.timedelta(seconds=min(max(wait, 1.0), 3600.0))
    raise AssertionError("the simulated clock did not reach its end")


UTC = dt.timezone.utc
SPRING = (dt.datetime(2026, 3, 27, 12, tzinfo=UTC), dt.datetime(2026, 3, 31, 12, tzinfo=UTC))  # 29 March: 02:00 -> 03:00
AUTUMN = (dt.datetime(2026, 10, 23, 12, tzinfo=UTC), dt.datetime(2026, 10, 27, 12, tzinfo=UTC))  # 25 October: 03:00 -> 02:00


@pytest.mark.parametrize("night", [SPRING, AUTUMN], ids=["spring-forward", "fall-back"])
@pytest.mark.parametrize(("hour", "minute"), [(3, 0), (2, 30), (1, 30)])
def test_a_daily_crontab_fires_once_a_day_at_its_local_time_across_dst_django_celery_beat_194(night, hour, minute):
    """django-celery-beat#194: across each DST change of Europe/Paris, a daily schedule fires once
    per local day (02:30 too: missing on the spring night, twice on the autumn one), each time at
    its local time (a missing 02:30 an hour later, at 03:30 CEST), under a tick equal to the
    moment it fired; four days, four runs, four distinct ticks."""
    found = fires(hour, minute, *night)
    local = [fired.astimezone(PARIS) for fired, _ in found]
    assert [d.date() for d in local] == sorted({d.date() for d in local}) and len(local) == 4, local
    for (fired, tick), when in zip(found, local):
        assert tick == fired.replace(second=0, microsecond=0)  # one job key per fire, the fire's minute
        if (when.hour, when.minute) != (hour, minute):
            # only the 02:30 that does not exist on the spring-forward night is moved, by an hour
            assert (hour, minute, when.month, when.day, when.hour, when.minute) == (2, 30, 3, 29, 3, 30), when
