"""Beat with real processes: two beats fire each tick once, a standby takes over, admin edits take effect."""
from __future__ import annotations

import datetime as dt
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from jobs.engine import schedules
from jobs.models import Job
from jobs.engine.schedules import Schedule
from tests.support import ROOT, kill_tree, wait_for

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True, databases="__all__")]

LOCK_SECONDS = 3
# The stated take-over time: the lock's TTL, plus the standby's one-second poll, plus one tick.
TAKEOVER_SECONDS = LOCK_SECONDS + 2
TICK_LINE = re.compile(r"beat: schedule (\S+) tick (\S+) -> job (\d+)")


def start_beat(live, name: str) -> subprocess.Popen:
    log = Path(live.env()["CONVEYOR_DATA"]) / f"{name}.log"
    out = open(log, "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "project", "beat", "--loglevel", "INFO"],
        cwd=ROOT, env=live.env(CONVEYOR_BEAT_LOCK_SECONDS=str(LOCK_SECONDS)), stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
    )
    process.log_path = log  # type: ignore[attr-defined]
    return process


def ticks_in(process: subprocess.Popen) -> list[str]:
    return [m.group(2) for m in TICK_LINE.finditer(Path(process.log_path).read_text(errors="replace"))]


def is_leader(process: subprocess.Popen) -> bool:
    return "now the leader" in Path(process.log_path).read_text(errors="replace")


def every_second(name: str = "every-second") -> PeriodicTask:
    interval, _ = IntervalSchedule.objects.get_or_create(every=1, period=IntervalSchedule.SECONDS)
    return PeriodicTask.objects.create(
        name=f"conveyor:{name}", task=schedules.TASK, interval=interval,
        kwargs=json.dumps({"schedule": name, "type": "examples.echo", "input": {}}),
    )


def tick_times(name: str) -> list[dt.datetime]:
    keys = Job.objects.filter(idempotency_key__startswith=f"conveyor:schedule:{name}:").values_list("idempotency_key", flat=True)
    return sorted(
        dt.datetime.fromisoformat(k.rsplit(":", 3)[-3] + ":" + k.rsplit(":", 2)[-2] + ":" + k.rsplit(":", 1)[-1].rstrip("Z")) for k in keys
    )


def stop(*processes: subprocess.Popen) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            kill_tree(process.pid)
            process.wait(5)


def test_two_beats_fire_each_tick_once_and_the_standby_takes_over(live):
    """celery#1495 (Failover for celerybeat), every second: no tick fired by both beats, the
    standby takes over within the stated time; with a period longer than the take-over, not even
    a tick is lost (tests/acceptance/test_upstream_failure_modes.py)."""
    # given an every-second schedule and two beat processes on the same Redis
    every_second()
    first, second = start_beat(live, "beat-a"), start_beat(live, "beat-b")
    try:
        leader = wait_for(lambda: next((p for p in (first, second) if is_leader(p)), None), 30, what="a leader")
        standby = second if leader is first else first
        wait_for(lambda: len(ticks_in(leader)) >= 4, 30, what="4 ticks from the leader")
        # when the leader is killed
        kill_tree(leader.pid)
        leader.wait(10)
        killed_at = time.monotonic()
        # then the standby takes over and keeps ticking
        wait_for(lambda: len(ticks_in(standby)) >= 4, 30, what="4 ticks from the new leader")
        assert time.monotonic() - killed_at < 20
    finally:
        stop(first, second)
    # one job per tick: no tick was fired by both beats, and every fired tick has its job
    fired = ticks_in(first) + ticks_in(second)
    assert len(fired) == len(set(fired)), "a tick was fired twice"
    times = tick_times("every-second")
    assert len(times) == len(set(fired))
    gaps = [(b - a).total_seconds() for a, b in zip(times, times[1:])]
    # every second ticked, except across the take-over
    assert sum(1 for gap in gaps if gap > 1) <= 1, [g for g in gaps if g > 1]
    assert max(gaps) <= TAKEOVER_SECONDS, f"gap of {max(gaps)}s exceeds the stated take-over time"


def test_admin_edits_take_effect_without_restart_and_survive_sync(live):
    # given a schedule declared in code, synced, and a running beat
    declared = [Schedule(every=1, name="edited", job="examples.echo")]
    assert schedules.sync(declared)["created"] == ["edited"]
    beat = start_beat(live, "beat-edit")
    try:
        wait_for(lambda: len(tick_times("edited")) >= 2, 30, what="ticks of the synced schedule")
        # when the admin disables it (the admin form saves the row the same way)
        task = PeriodicTask.objects.get(name="conveyor:edited")
        task.enabled = False
        task.save()
        time.sleep(3)  # django-celery-beat notices the change on its next tick
        count = len(tick_times("edited"))
        time.sleep(4)
        # then no tick fires, without restarting beat
        assert len(tick_times("edited")) == count
        # and sync_schedules with the same declaration keeps the admin's change
        assert schedules.sync(declared)["kept"] == ["edited"]
        assert PeriodicTask.objects.get(name="conveyor:edited").enabled is False
        # when the admin changes it to a crontab instead
        from django_celery_beat.models import CrontabSchedule

        task.refresh_from_db()
        task.interval = None
        task.crontab = CrontabSchedule.objects.create(minute="0", hour="4")
        task.enabled = True
        task.save()
        assert schedules.sync(declared)["kept"] == ["edited"]
        assert PeriodicTask.objects.get(name="conveyor:edited").crontab.hour == "4"
        # when the code's declaration changes, the code wins again
        changed = [Schedule(every=2, name="edited", job="examples.echo")]
        assert schedules.sync(changed)["updated"] == ["edited"]
        task.refresh_from_db()
        assert task.enabled and task.crontab is None and task.interval.every == 2
    finally:
        stop(beat)
