"""`manage.py pause queue|type NAME --reason "..."`: pause a queue or a job type.

Its jobs are not claimed until `manage.py resume queue|type NAME`; they wait in the database (none
is lost), and `manage.py why <id>` says "paused" with the reason. `manage.py pause --list` lists
the pauses. Exit status 2 for a queue no job type uses, or an unknown type.
"""
from __future__ import annotations

import getpass

from django.core.management.base import BaseCommand, CommandError

from jobs.engine import pauses


class Command(BaseCommand):
    help = "Pause a queue or a job type (its jobs wait until resumed); --list lists the pauses."

    def add_arguments(self, parser) -> None:  # noqa: ANN001 - argparse's parser
        parser.add_argument("kind", nargs="?", choices=pauses.KINDS, help="queue or type")
        parser.add_argument("name", nargs="?", help="the queue's or the job type's name")
        parser.add_argument("--reason", default="", help="why: shown as the why of its jobs")
        parser.add_argument("--list", action="store_true", help="list the pauses and the jobs held for each")

    def handle(self, *args: object, kind: str | None, name: str | None, reason: str, **options: object) -> None:
        if options["list"]:
            rows = pauses.paused()
            if not rows:
                self.stdout.write("nothing is paused")
            for p in rows:
                self.stdout.write(f"{p.kind} {p.name}: paused since {p.created_at:%Y-%m-%d %H:%M:%S %Z} by {p.paused_by or '?'}"
                                  f" ({p.held} job(s) held){': ' + p.reason if p.reason else ''}")
            return
        if not kind or not name:
            raise CommandError("say what to pause: manage.py pause queue NAME --reason \"...\" (or: type NAME)", returncode=2)
        try:
            pauses.pause(kind, name, reason, f"cli:{getpass.getuser()}")
        except pauses.UnknownTarget as exc:
            raise CommandError(str(exc), returncode=2) from None
        self.stdout.write(f"{kind} {name} paused: its jobs wait until `manage.py resume {kind} {name}`")
