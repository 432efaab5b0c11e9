"""`manage.py user --email E --password P`: create (or update) an admin user, like `medusa user`."""
from __future__ import annotations

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.core.validators import validate_email
from django.core.exceptions import ValidationError


class Command(BaseCommand):
    help = "Create an admin user who can log in to /admin/ and get API tokens."

    def add_arguments(self, parser) -> None:  # noqa: ANN001
        parser.add_argument("--email", required=True)
        parser.add_argument("--password", required=True)

    def handle(self, *args: object, email: str, password: str, **options: object) -> None:
        try:
            validate_email(email)
        except ValidationError:
            raise CommandError(f"--email {email!r} is not an e-mail address", returncode=2) from None
        if len(password) < 8:
            raise CommandError("--password must have at least 8 characters", returncode=2)
        User = get_user_model()
        user, created = User.objects.get_or_create(username=email, defaults={"email": email})
        user.email = email
        user.is_staff = user.is_superuser = True
        user.set_password(password)
        user.save()
        self.stdout.write(f"{'created' if created else 'updated'} admin user {email}")
