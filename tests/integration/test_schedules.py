"""Schedules in process: synced from code into django-celery-beat, shown in the admin, tick times
(the beats themselves run in tests/acceptance/test_beat_live.py)."""
from __future__ import annotations

import datetime as dt
import json
import math
import re
import subprocess
import sys
import time
from urllib.parse import urljoin

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from jobs.engine import schedules
from jobs.models import Job
from jobs.engine.schedules import Schedule, ScheduleError
from tests.support import ROOT

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

def test_a_schedule_removed_from_code_is_disabled_not_deleted():
    schedules.sync([Schedule(every=60, name="old", job="examples.echo")])
    assert schedules.sync([])["disabled"] == ["old"]
    assert PeriodicTask.objects.get(name="conveyor:old").enabled is False


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (Schedule(every=60, name="ghost", job="no.such-type"), "unknown job type"),
        (Schedule(cron="61 * * * *", name="bad-cron", job="examples.echo"), "malformed"),
        (Schedule(cron="* * *", name="short-cron", job="examples.echo"), "5 fields"),
        (Schedule(every=60, cron="* * * * *", name="two-forms", job="examples.echo"), "exactly one"),
        (Schedule(cron="0 2 * * *", timezone="Mars/Olympus", name="bad-tz", job="examples.echo"), "unknown timezone"),
    ],
)
def test_sync_schedules_refuses_a_bad_declaration_with_its_name_and_exit_2(monkeypatch, bad, reason):
    monkeypatch.setattr(schedules, "declared", lambda: [bad])
    with pytest.raises(CommandError) as info:
        call_command("sync_schedules")
    assert info.value.returncode == 2
    assert bad.name in str(info.value) and reason in str(info.value)
    assert not PeriodicTask.objects.filter(name=f"conveyor:{bad.name}").exists()


def test_sync_schedules_creates_the_code_schedules():
    call_command("sync_schedules")
    nightly = PeriodicTask.objects.get(name="conveyor:examples.nightly-report")
    assert nightly.crontab.hour == "2" and str(nightly.crontab.timezone) == "Europe/Paris"
    assert PeriodicTask.objects.get(name="conveyor:conveyor.cleanup").interval.every == 60


def admin_row(page: str, name: str) -> dict[str, str]:
    """The cells of the admin changelist's row for the schedule `name`: {column: inner HTML}."""
    rows = [row for row in page.split("<tr")[1:] if f">{name}</a>" in row]
    assert len(rows) == 1, f"{len(rows)} rows for {name}"
    cells = re.findall(r'<t[hd] class="field-([a-z_]+)[^"]*"[^>]*>(.*?)</t[hd]>', rows[0], re.S)
    return {column: html.strip() for column, html in cells}


def test_schedule_admin_shows_next_run_and_last_job(admin_client):
    # given the code's schedules, the cleanup one (every 60 s) last run at a known second
    call_command("sync_schedules")
    last_run = timezone.now().replace(microsecond=0) - dt.timedelta(seconds=10)
    PeriodicTask.objects.filter(name="conveyor:conveyor.cleanup").update(last_run_at=last_run)
    # and the jobs of two of its ticks, and one of another schedule's
    Job.objects.create(type="conveyor.cleanup", queue="default", idempotency_key="conveyor:schedule:conveyor.cleanup:2026-01-01T00:00:00Z")
    last = Job.objects.create(
        type="conveyor.cleanup", queue="default", idempotency_key="conveyor:schedule:conveyor.cleanup:2026-01-01T00:01:00Z"
    )
    Job.objects.create(type="examples.echo", queue="default", idempotency_key="conveyor:schedule:conveyor.cleanup-not:2026-01-01T00:02:00Z")
    # and the nightly report disabled
    PeriodicTask.objects.filter(name="conveyor:examples.nightly-report").update(enabled=False)

    url = "/admin/django_celery_beat/periodictask/"
    response = admin_client.get(url)
    assert response.status_code == 200
    page = response.content.decode()

    # then the cleanup row shows its next run (last run + 60 s, in UTC) and links its last tick's job
    cleanup = admin_row(page, "conveyor:conveyor.cleanup")
    assert cleanup["next_run"] == (last_run + dt.timedelta(seconds=60)).strftime("%Y-%m-%d %H:%M:%S UTC")
    link = f"../../jobs/job/{last.pk}/change/"
    assert cleanup["last_job"] == f'<a href="{link}">#{last.pk} pending</a>'
    # and that link opens the job's page in the admin
    job_page = admin_client.get(urljoin(url, link))
    assert job_page.status_code == 200 and last.idempotency_key in job_page.content.decode()
    # and a disabled schedule, whose ticks made no job, says so
    nightly = admin_row(page, "conveyor:examples.nightly-report")
    assert (nightly["next_run"], nightly["last_job"]) == ("disabled", "-")


# Run in two processes: each builds its beat's entries from the rows at a moment of its own, as
# two beat processes do, and prints the tick time it computes for each schedule at that moment.
# It says "ready" once set up, then reads its moment on stdin (chosen when both are ready: no
# margin for interpreters starting on a busy machine to wait out).
TICK_PROBE = """
import json, sys, time
import django
django.setup()
from django_celery_beat.models import PeriodicTask
from jobs.interfaces.beat import LeaderScheduler, tick_time
from project.celery import app
print("ready", flush=True)
at = float(sys.stdin.readline())
time.sleep(max(0.0, at - time.time()))
entries = [LeaderScheduler.Entry(task, app=app) for task in PeriodicTask.objects.filter(name__in=sys.argv[1:])]
now = time.time()
print(json.dumps({"now": now, "ticks": {entry.model.name: tick_time(entry).isoformat() for entry in entries}}))
"""


def test_tick_time_is_the_same_for_every_beat():
    """celery#1495 and django-celery-beat#194: every beat names the same tick (so a take-over
    cannot fire one twice under two keys), a Paris crontab's included on the DST night."""
    from django_celery_beat.models import CrontabSchedule

    from tests.support import LiveEnv

    # given an interval schedule (every 10 s, never run: each beat's entry starts from its own
    # "now") and a crontab one in Paris, last run 0.7 s past a tick just before the DST change
    period = 10
    interval, _ = IntervalSchedule.objects.get_or_create(every=period, period=IntervalSchedule.SECONDS)
    PeriodicTask.objects.create(
        name="conveyor:every-10",
        task=schedules.TASK,
        interval=interval,
        kwargs=json.dumps({"schedule": "every-10", "type": "examples.echo", "input": {}}),
    )
    paris = CrontabSchedule.objects.create(minute="*/5", hour="*", timezone="Europe/Paris")
    PeriodicTask.objects.create(
        name="conveyor:five-minutes",
        task=schedules.TASK,
        crontab=paris,
        kwargs=json.dumps({"schedule": "five-minutes", "type": "examples.echo", "input": {}}),
        last_run_at=dt.datetime(2026, 3, 29, 0, 55, 0, 700_000, tzinfo=dt.timezone.utc),
    )
    # when two processes compute them 3 s apart, within one period of the interval
    env = LiveEnv().env()
    argv = ["conveyor:every-10", "conveyor:five-minutes"]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", TICK_PROBE, *argv], cwd=ROOT, env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for _ in range(2)
    ]
    for proc in procs:  # both set up
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()[-3000:]
    # two moments 3 s apart, the first at least 0.5 s away, in one period with 3 s of it left after
    # the second (for a probe late on a loaded machine): in this period if they fit, else from the
    # next one's second 0.5 (each probe then sleeps until its moment). Waiting for the next period
    # every time cost 1-11 s more.
    earliest = time.time() + 0.5
    start = math.floor(earliest / period) * period
    if earliest + 3.0 > start + period - 3.0:
        start += period
        earliest = start + 0.5
    moments = (earliest, earliest + 3.0)
    for proc, at in zip(procs, moments):
        proc.stdin.write(f"{at}\n")
        proc.stdin.flush()
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    first, second = results
    # (they did compute at two moments 3 s apart, both in the period that starts at `start`)
    assert second["now"] - first["now"] >= 2.5
    assert all(start <= r["now"] < start + period for r in results), (start, [r["now"] for r in results])

    # then both beats name the same tick: the period's start for the interval, and for the
    # crontab the first five-minute mark after its last run (03:00 in Paris, 01:00 UTC)
    assert first["ticks"] == second["ticks"], results
    assert first["ticks"] == {
        "conveyor:every-10": dt.datetime.fromtimestamp(start, dt.timezone.utc).isoformat(),
        "conveyor:five-minutes": "2026-03-29T01:00:00+00:00",
    }


def test_a_schedule_more_often_than_every_second_is_refused():
    with pytest.raises(ScheduleError):
        schedules.validate(Schedule(every=0.5, name="fast", job="examples.echo"))
