"""`manage.py token --email E [--scope SCOPE ...] [--expires-in DAYS]`: print a new API token.

Scopes (api.scopes): events:emit, events:emit:<event name>, jobs:read, jobs:write, operate; the
names before issue 22 still work (read = jobs:read, write = all four). Without --scope, every
scope the user's permissions allow. A scope the user's permissions do not allow is refused,
naming it (grant it with `manage.py grant` or in the admin).
"""
from __future__ import annotations

import datetime as dt

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from api import scopes
from api.auth import issue_token


class Command(BaseCommand):
    help = "Print a new API bearer token for an existing user (shown once, stored hashed)."

    def add_arguments(self, parser) -> None:  # noqa: ANN001
        parser.add_argument(
            "--scope", action="append", metavar="SCOPE",
            help=f"repeat or space-separate: {scopes.HELP}; default: every scope the user's permissions allow",
        )
        parser.add_argument("--email", required=True)
        parser.add_argument("--expires-in", type=int, metavar="DAYS", help="days until it expires (default: never)")

    def handle(self, *args: object, email: str, scope: list[str] | None, expires_in: int | None, **options: object) -> None:
        user = get_user_model().objects.filter(email=email).first()
        if user is None:
            raise CommandError(f"no user with --email {email!r} (create one with `manage.py user`)", returncode=2)
        if expires_in is not None and expires_in < 1:
            raise CommandError("--expires-in must be at least 1 (days)", returncode=2)
        lifetime = dt.timedelta(days=expires_in) if expires_in is not None else None
        try:
            token = issue_token(user, scope=scope, expires_in=lifetime)
        except scopes.ScopeError as error:
            raise CommandError(f"--scope: {error}", returncode=2) from None
        except scopes.ScopeRefused as refused:
            raise CommandError(f"--scope: {refused} (grant it: manage.py grant --email {email} --scope ...)", returncode=2) from None
        self.stdout.write(token)
