"""`manage.py token --email E [--scope read|write] [--expires-in DAYS]`: print a new API token."""
from __future__ import annotations

import datetime as dt

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from api.auth import issue_token
from api.models import SCOPES, WRITE


class Command(BaseCommand):
    help = "Print a new API bearer token for an existing user (shown once, stored hashed)."

    def add_arguments(self, parser) -> None:  # noqa: ANN001
        parser.add_argument("--email", required=True)
        parser.add_argument("--scope", choices=SCOPES, default=WRITE, help="read, or write (includes read; the default)")
        parser.add_argument("--expires-in", type=int, metavar="DAYS", help="days until it expires (default: never)")

    def handle(self, *args: object, email: str, scope: str, expires_in: int | None, **options: object) -> None:
        user = get_user_model().objects.filter(email=email).first()
        if user is None:
            raise CommandError(f"no user with --email {email!r} (create one with `manage.py user`)", returncode=2)
        if expires_in is not None and expires_in < 1:
            raise CommandError("--expires-in must be at least 1 (days)", returncode=2)
        lifetime = dt.timedelta(days=expires_in) if expires_in is not None else None
        self.stdout.write(issue_token(user, scope=scope, expires_in=lifetime))
