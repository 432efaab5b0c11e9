"""`manage.py user --email E`: create (or update) a user, like `medusa user`.

The password comes from --password, else --password-stdin (the first line of stdin: for scripts,
`printf '%s\n' "$PW" | manage.py user ... --password-stdin`), else the CONVEYOR_USER_PASSWORD
environment variable, else a prompt (getpass, twice) when stdin is a terminal: a password on the
command line is seen by `ps` and kept in shell history. The README's block sets the variable, so
that a whole pasted block runs (a prompt would read the next pasted lines as the password).

What the user may do is said, never assumed (Django's own default, as `createuser` would): a new
user is a plain one (API tokens and JWTs only) unless `--staff` (logs in to /admin/, sees and does
what its permissions and groups grant) or `--superuser` (every permission; implies staff). On an
existing user, a flag not given leaves that flag as it was (`--no-staff`, `--no-superuser` take
it away), so re-running to change a password never changes a role.
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
    help = (
        "Create or update a user who gets API tokens and JWTs. A new user is neither staff nor superuser "
        "unless asked: --staff logs in to /admin/ with only the permissions granted to it (or its groups); "
        "--superuser has every permission (and is staff). On an existing user, a flag not given is left as it was."
    )

    def add_arguments(self, parser) -> None:  # noqa: ANN001
        parser.add_argument("--email", required=True)
        parser.add_argument(
            "--password", help=f"the password (better: ${PASSWORD_ENV}, or the prompt when stdin is a terminal)"
        )
        parser.add_argument(
            "--password-stdin", action="store_true",
            help="read the password from the first line of stdin (scripts; nothing on the command line)",
        )
        parser.add_argument(
            "--staff", action=argparse.BooleanOptionalAction, default=None,
            help="logs in to /admin/, with only the permissions granted to the user or its groups "
            "(a new user: not staff unless given; --no-staff takes it away)",
        )
        parser.add_argument(
            "--superuser", action=argparse.BooleanOptionalAction, default=None,
            help="every permission, and staff (a new user: not unless given; --no-superuser takes it away)",
        )

    def _password(self, given: str | None, from_stdin: bool = False) -> str:
        if given:
            return given
        if from_stdin:
            line = sys.stdin.readline().rstrip("\r\n") if sys.stdin is not None else ""
            if not line:
                raise CommandError("--password-stdin: stdin gave no password (its first line is read)", returncode=2)
            return line
        if os.environ.get(PASSWORD_ENV):
            return os.environ[PASSWORD_ENV]
        if sys.stdin is not None and sys.stdin.isatty():
            first = getpass.getpass("Password: ")
            if first != getpass.getpass("Password (again): "):
                raise CommandError("the passwords differ", returncode=2)
            return first
        raise CommandError(
            f"no password: set {PASSWORD_ENV}, give --password-stdin, or run from a terminal to be asked", returncode=2
        )

    def handle(self, *args: object, email: str, password: str | None, staff: bool | None,
               superuser: bool | None, password_stdin: bool = False, **options: object) -> None:
        try:
            validate_email(email)
        except ValidationError:
            raise CommandError(f"--email {email!r} is not an e-mail address", returncode=2) from None
        if superuser and staff is False:
            raise CommandError("--superuser with --no-staff: a superuser is staff", returncode=2)
        if password and password_stdin:
            raise CommandError("give --password or --password-stdin, not both", returncode=2)
        password = self._password(password, password_stdin)
        if len(password) < 8:
            raise CommandError("the password must have at least 8 characters", returncode=2)
        User = get_user_model()
        user, created = User.objects.get_or_create(username=email, defaults={"email": email})
        user.email = email
        if superuser is not None:
            user.is_superuser = superuser
        if staff is not None:
            user.is_staff = staff
        if superuser:
            user.is_staff = True
        user.set_password(password)
        user.save()
        self.stdout.write(f"{'created' if created else 'updated'} user {email}: {role(user)}")


def role(user: object) -> str:
    """What the user may do, in the words of the command's output."""
    if user.is_superuser and user.is_staff:
        return "superuser (admin, every permission)"
    if user.is_superuser:
        return "superuser, not staff (every permission on the API; no admin login)"
    if user.is_staff:
        return "staff (admin, with the permissions granted to it)"
    return "not staff (API only)"
