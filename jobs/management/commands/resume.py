"""`manage.py resume queue|type NAME`: resume a paused queue or job type; its held jobs are
published at once. Exit status 2 for an unknown name, 1 when it was not paused."""
from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from jobs.engine import pauses


class Command(BaseCommand):
    help = "Resume a paused queue or job type: its held jobs are published at once."

    def add_arguments(self, parser) -> None:  # noqa: ANN001 - argparse's parser
        parser.add_argument("kind", choices=pauses.KINDS, help="queue or type")
        parser.add_argument("name", help="the queue's or the job type's name")

    def handle(self, *args: object, kind: str, name: str, **options: object) -> None:
        try:
            released = pauses.resume(kind, name)
        except pauses.UnknownTarget as exc:
            raise CommandError(str(exc), returncode=2) from None
        if released is None:
            raise CommandError(f"{kind} {name} is not paused", returncode=1)
        self.stdout.write(f"{kind} {name} resumed: {released} held job(s) published")
