"""Schedules declared in code, synced into django-celery-beat's tables.

Each app's job module may declare schedules, either on the job type
(`@job_type("reports.nightly", schedule=Schedule(cron="0 2 * * *", timezone="Europe/Paris"))`)
or in a `SCHEDULES = [Schedule(...)]` list. `manage.py sync_schedules` (the release step)
creates or updates one PeriodicTask per schedule, named `conveyor:<name>`:
- a schedule the admin edited or disabled keeps the admin's change until the code's
  declaration changes (a fingerprint of the declaration is kept beside the task);
- a schedule removed from the code is disabled, not deleted.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass, field, replace
from typing import Any, Callable
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django.db import transaction

#: The task name of Conveyor's beat rows. No Celery task has it: jobs.interfaces.beat.LeaderScheduler writes
#: the tick's job row itself, and a beat run with another scheduler fails loudly on it.
TASK = "conveyor.tick"
PREFIX = "conveyor:"


class ScheduleError(ValueError):
    """A declaration that cannot be synced; the message names the schedule and the reason."""


@dataclass(frozen=True)
class Schedule:
    #: Exactly one of cron (`"*/5 * * * *"`), every (seconds) or at (a one-off aware datetime).
    cron: str | None = None
    every: float | None = None
    at: dt.datetime | None = None
    timezone: str = "UTC"
    #: Filled in from the job type when declared on it.
    name: str = ""
    job: str = ""
    input: dict[str, Any] = field(default_factory=dict)
    description: str = ""

    def describe(self) -> dict[str, Any]:
        """The declaration as JSON: when it fires, in which zone, which job with which input."""
        return {
            "cron": self.cron,
            "every": self.every,
            "at": self.at.isoformat() if self.at else None,
            "timezone": self.timezone,
            "job": self.job,
            "input": self.input,
        }

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.describe(), sort_keys=True).encode()).hexdigest()[:16]


def declared() -> list[Schedule]:
    """Every schedule of the code: those on job types and those of SCHEDULES lists."""
    from importlib import import_module

    from django.apps import apps

    from jobs.engine import registry

    found: list[Schedule] = []
    for jt in registry.all_types():
        if jt.schedule is not None:
            found.append(replace(jt.schedule, name=jt.schedule.name or jt.name, job=jt.schedule.job or jt.name))
    for app in apps.get_app_configs():
        try:
            module = import_module(f"{app.name}.jobs")
        except ModuleNotFoundError:
            continue
        found.extend(getattr(module, "SCHEDULES", []))
    return found


def _crontab_fields(sched: Schedule) -> dict[str, str]:
    parts = (sched.cron or "").split()
    if len(parts) != 5:
        raise ScheduleError(f"schedule {sched.name!r}: cron {sched.cron!r} needs 5 fields (minute hour day month weekday)")
    from celery.schedules import crontab

    minute, hour, day_of_month, month_of_year, day_of_week = parts
    try:
        crontab(minute=minute, hour=hour, day_of_month=day_of_month, month_of_year=month_of_year, day_of_week=day_of_week)
    except Exception as exc:  # celery raises ValueError and friends for bad fields
        raise ScheduleError(f"schedule {sched.name!r}: cron {sched.cron!r} is malformed ({exc})") from None
    return dict(minute=minute, hour=hour, day_of_month=day_of_month, month_of_year=month_of_year, day_of_week=day_of_week)


def validate(sched: Schedule) -> None:
    from jobs.engine import registry

    if not sched.name:
        raise ScheduleError(f"a schedule of job {sched.job!r} has no name")
    forms = [f for f in (sched.cron, sched.every, sched.at) if f is not None]
    if len(forms) != 1:
        raise ScheduleError(f"schedule {sched.name!r}: give exactly one of cron, every or at")
    try:
        registry.get(sched.job).validate(sched.input)
    except registry.InvalidJob as exc:
        raise ScheduleError(f"schedule {sched.name!r}: {exc}") from None
    try:
        ZoneInfo(sched.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleError(f"schedule {sched.name!r}: unknown timezone {sched.timezone!r}") from None
    if sched.cron is not None:
        _crontab_fields(sched)
    if sched.every is not None and sched.every < 1:
        raise ScheduleError(f"schedule {sched.name!r}: every must be at least 1 second")
    if sched.at is not None and sched.at.tzinfo is None:
        raise ScheduleError(f"schedule {sched.name!r}: at needs a timezone-aware datetime")


BACKEND_CLEANUP = "celery.backend_cleanup"


def sync(schedules: list[Schedule] | None = None, progress: Callable[[int, int], None] | None = None) -> dict[str, list[str]]:
    """Create, update or disable PeriodicTasks to match the code; return what was done.

    `progress(done, total)` is called after each schedule (a long sync shows where it is)."""
    from django_celery_beat.models import ClockedSchedule, CrontabSchedule, IntervalSchedule, PeriodicTask

    from jobs.models import ScheduleDeclaration

    schedules = declared() if schedules is None else schedules
    names = [s.name for s in schedules]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ScheduleError(f"schedule {duplicates[0]!r} is declared twice")
    for sched in schedules:
        validate(sched)
    report: dict[str, list[str]] = {"created": [], "updated": [], "kept": [], "disabled": [], "removed": []}
    with transaction.atomic():
        # Celery's beat adds `celery.backend_cleanup` whenever a result expiry is set, and
        # django-celery-beat keeps it as a row: results are off here (CELERY_RESULT_EXPIRES is
        # None), so a row left by an earlier configuration only clutters the admin.
        if PeriodicTask.objects.filter(name=BACKEND_CLEANUP).delete()[0]:
            report["removed"].append(BACKEND_CLEANUP)
        for done, sched in enumerate(schedules, start=1):
            if progress is not None and done > 1:
                progress(done - 1, len(schedules))
            task_name = PREFIX + sched.name
            fingerprint = sched.fingerprint()
            record = ScheduleDeclaration.objects.filter(name=sched.name).select_related("task").first()
            if record and record.task and record.fingerprint == fingerprint:
                report["kept"].append(sched.name)  # the admin's edits, if any, stand
                continue
            fields: dict[str, Any] = {"crontab": None, "interval": None, "clocked": None, "one_off": False}
            if sched.cron is not None:
                fields["crontab"], _ = CrontabSchedule.objects.get_or_create(timezone=sched.timezone, **_crontab_fields(sched))
            elif sched.every is not None:
                fields["interval"], _ = IntervalSchedule.objects.get_or_create(every=int(sched.every), period=IntervalSchedule.SECONDS)
            else:
                fields["clocked"], _ = ClockedSchedule.objects.get_or_create(clocked_time=sched.at)
                fields["one_off"] = True
            task, created = PeriodicTask.objects.update_or_create(
                name=task_name,
                defaults={
                    **fields,
                    "task": TASK,
                    "kwargs": json.dumps({"schedule": sched.name, "type": sched.job, "input": sched.input}),
                    "enabled": True,
                    "description": sched.description or f"Conveyor schedule {sched.name} -> job {sched.job}",
                },
            )
            ScheduleDeclaration.objects.update_or_create(name=sched.name, defaults={"fingerprint": fingerprint, "task": task})
            report["created" if created else "updated"].append(sched.name)
        if progress is not None and schedules:
            progress(len(schedules), len(schedules))
        gone = ScheduleDeclaration.objects.exclude(name__in=names).select_related("task")
        for record in gone:
            if record.task and record.task.enabled:
                record.task.enabled = False
                record.task.save(update_fields=["enabled"])
                report["disabled"].append(record.name)
    return report
