"""The nominal time of a beat tick: the same instant in every beat process, across DST changes."""
from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest
from celery.schedules import crontab

from jobs.beat import tick_time

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
    nightly = crontab(minute="0", hour="3")
    nightly.tz = PARIS
    assert tick_time(Entry(nightly, last_run_local)) == expected_utc


def test_crontab_tick_is_exact_to_the_second():
    every_minute = crontab()
    last = dt.datetime(2026, 5, 1, 12, 0, 0, 700_000, tzinfo=dt.timezone.utc)
    assert tick_time(Entry(every_minute, last)) == dt.datetime(2026, 5, 1, 12, 1, tzinfo=dt.timezone.utc)
