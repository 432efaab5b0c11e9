"""`manage.py sync_schedules`: make django-celery-beat's table match the schedules in code."""
from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from jobs.engine import schedules
from jobs.interfaces.progress import Progress


class Command(BaseCommand):
    help = "Create or update beat schedules declared in code; disable the ones removed from it."

    def handle(self, *args: object, **options: object) -> None:
        progress = Progress(self.stderr, "sync_schedules")
        try:
            report = schedules.sync(progress=progress)
        except schedules.ScheduleError as exc:
            raise CommandError(str(exc), returncode=2) from None
        for action in ("created", "updated", "kept", "disabled", "removed"):
            for name in report[action]:
                self.stdout.write(f"{action:>8} {name}")
        known = sum(len(report[action]) for action in ("created", "updated", "kept", "disabled"))
        self.stdout.write(f"schedules: {known} declared or known")
