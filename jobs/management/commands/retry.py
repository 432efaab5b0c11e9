"""`manage.py retry --status dead [--type T] [--limit N]`: retry many ended jobs, showing progress.

Each job is retried as from the admin or the API (jobs.engine.control.retry: a fresh budget of attempts,
its chain reopened), one transaction each, so an interrupted run leaves every job either retried
or as it was.
"""
from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from jobs.engine import control
from jobs.models import Job, Status
from jobs.interfaces.progress import Progress

RETRYABLE = (Status.DEAD, Status.FAILED, Status.CANCELLED)


class Command(BaseCommand):
    help = "Retry dead (or failed, or cancelled) jobs in bulk, oldest first, with progress on stderr."

    def add_arguments(self, parser) -> None:  # noqa: ANN001 - argparse's parser
        parser.add_argument("--status", default=Status.DEAD, help="dead (default), failed or cancelled")
        parser.add_argument("--type", default=None, help="only jobs of this job type")
        parser.add_argument("--limit", type=int, default=None, help="at most this many jobs")

    def handle(self, *args: object, status: str, type: str | None, limit: int | None, **options: object) -> None:  # noqa: A002
        if status not in RETRYABLE:
            raise CommandError(f"--status must be one of {', '.join(RETRYABLE)}, not {status!r}", returncode=2)
        if limit is not None and limit < 1:
            raise CommandError("--limit must be at least 1", returncode=2)
        jobs = Job.objects.filter(status=status).order_by("id").only("id", "type")
        if type:
            jobs = jobs.filter(type=type)
        ids = list(jobs.values_list("id", flat=True)[:limit])
        progress = Progress(self.stderr, "retry")
        retried = 0
        for done, job in enumerate(Job.objects.filter(id__in=ids).order_by("id").only("id", "type").iterator(chunk_size=500), 1):
            retried += control.retry(job)
            progress(done, len(ids))
        self.stdout.write(f"retried {retried} of {len(ids)} {status} job(s)")
