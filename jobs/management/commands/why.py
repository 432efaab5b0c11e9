"""`manage.py why <job id>`: why a job has not started (jobs.engine.why), in plain words.

    manage.py why 1234            the reason, its details, and any alarm
    manage.py why 1234 --json     {"job", "status", "why": {"code", "words", "details", "alarms"}}
    manage.py why delivery:56     a delivery of an event that waits for its key's lane (no job yet)

Exit status: 0 with the reason (or "not waiting"), 2 for an id that names nothing.
"""
from __future__ import annotations

import json

from django.core.management.base import BaseCommand, CommandError

from jobs.engine import why


class Command(BaseCommand):
    help = "Say why a job (or `delivery:<id>`, an event's delivery) has not started."

    def add_arguments(self, parser) -> None:  # noqa: ANN001 - argparse's parser
        parser.add_argument("id", help="a job's id, or delivery:<id>")
        parser.add_argument("--json", action="store_true", help="machine-readable output")

    def handle(self, *args: object, id: str, **options: object) -> None:  # noqa: A002
        kind, _, number = id.rpartition(":")
        kind = kind or "job"
        if not number.isdigit() or int(number) < 1 or int(number) > 2**63 - 1:
            raise CommandError(f"id: {id!r} is not a job id (a positive number) nor delivery:<id>", returncode=2)
        try:
            status, answer = why.explain(kind, int(number))
        except why.NoSuchJob as exc:
            raise CommandError(f"{exc}", returncode=2) from None
        if options["json"]:
            self.stdout.write(json.dumps({kind: int(number), "status": status,
                                          "why": answer.as_dict() if answer else None}, indent=2, default=str))
            return
        if answer is None:
            self.stdout.write(f"{kind} {number} is {status}: not waiting")
            return
        self.stdout.write(f"{kind} {number} ({status}) waits: {answer.code}\n  {answer.words}")
        for name, value in answer.details.items():
            self.stdout.write(f"  {name}: {value}")
        for alarm in answer.alarms:
            self.stdout.write(self.style.ERROR(f"  ALARM: {alarm}"))
