"""`manage.py user --email E`: create (or update) a user, like `medusa user`.

The password comes from --password, else the CONVEYOR_USER_PASSWORD environment variable, else a
prompt (getpass, twice) when stdin is a terminal: a password on the command line is seen by `ps`
and kept in shell history. Staff (admin) by default; --no-staff makes an API-only user.
"""
from __future__ import annotations

import argparse
import getpass
import os
import sys

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.core.validators import validate_email

PASSWORD_ENV = "CONVEYOR_USER_PASSWORD"


class Command(BaseCommand):
    help = "Create or update a user who can log in to /admin/ (staff) and get API tokens and JWTs."

    def add_arguments(self, parser) -> None:  # noqa: ANN001
        parser.add_argument("--email", required=True)
        parser.add_argument(
            "--password", help=f"the password (better: ${PASSWORD_ENV}, or the prompt when stdin is a terminal)"
        )
        parser.add_argument(
            "--staff", action=argparse.BooleanOptionalAction, default=True,
            help="staff and superuser: logs in to /admin/ (default); --no-staff: API only",
        )

    def _password(self, given: str | None) -> str:
        if given:
            return given
        if os.environ.get(PASSWORD_ENV):
            return os.environ[PASSWORD_ENV]
        if sys.stdin is not None and sys.stdin.isatty():
            first = getpass.getpass("Password: ")
            if first != getpass.getpass("Password (again): "):
                raise CommandError("the passwords differ", returncode=2)
            return first
        raise CommandError(
            f"no password: give --password, set {PASSWORD_ENV}, or run from a terminal to be asked", returncode=2
        )

    def handle(self, *args: object, email: str, password: str | None, staff: bool, **options: object) -> None:
        try:
            validate_email(email)
        except ValidationError:
            raise CommandError(f"--email {email!r} is not an e-mail address", returncode=2) from None
        password = self._password(password)
        if len(password) < 8:
            raise CommandError("the password must have at least 8 characters", returncode=2)
        User = get_user_model()
        user, created = User.objects.get_or_create(username=email, defaults={"email": email})
        user.email = email
        user.is_staff = user.is_superuser = staff
        user.set_password(password)
        user.save()
        role = "staff (admin)" if staff else "not staff (API only)"
        self.stdout.write(f"{'created' if created else 'updated'} user {email}: {role}")
