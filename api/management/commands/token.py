"""`manage.py token --email E`: print a new API token for that user."""
from __future__ import annotations

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from api.auth import issue_token


class Command(BaseCommand):
    help = "Print a new API bearer token for an existing user (shown once, stored hashed)."

    def add_arguments(self, parser) -> None:  # noqa: ANN001
        parser.add_argument("--email", required=True)

    def handle(self, *args: object, email: str, **options: object) -> None:
        user = get_user_model().objects.filter(email=email).first()
        if user is None:
            raise CommandError(f"no user with --email {email!r} (create one with `manage.py user`)", returncode=2)
        self.stdout.write(issue_token(user))
