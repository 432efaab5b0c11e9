"""`manage.py grant --email E --scope SCOPE ...`: give a user the Django permissions behind
scopes (api.scopes.PERMISSIONS), so that they can mint tokens with them; `--revoke` takes them
away (their tokens lose those scopes at once: each request checks the permission again).

The admin does the same (a user's or a group's permissions); this is for an API-only user
(what `manage.py user` makes by default) on a server without the admin.
"""
from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.core.management.base import BaseCommand, CommandError

from api import scopes


class Command(BaseCommand):
    help = "Give (or --revoke) a user the permissions behind API token scopes."

    def add_arguments(self, parser) -> None:  # noqa: ANN001
        parser.add_argument("--email", required=True)
        parser.add_argument("--scope", action="append", required=True, metavar="SCOPE", help=f"repeat or space-separate: {scopes.HELP}")
        parser.add_argument("--revoke", action="store_true", help="take the permissions away instead")

    def handle(self, *args: object, email: str, scope: list[str], revoke: bool, **options: object) -> None:
        user = get_user_model().objects.filter(email=email).first()
        if user is None:
            raise CommandError(f"no user with --email {email!r} (create one with `manage.py user`)", returncode=2)
        try:
            families = sorted({scopes.family(name) for name in scopes.parse(scope)}, key=scopes.FAMILIES.index)
        except scopes.ScopeError as error:
            raise CommandError(f"--scope: {error}", returncode=2) from None
        permissions = []
        for name in families:
            app_label, codename = scopes.PERMISSIONS[name].split(".")
            permissions.append(Permission.objects.get(content_type__app_label=app_label, codename=codename))
        (user.user_permissions.remove if revoke else user.user_permissions.add)(*permissions)
        verb = "revoked from" if revoke else "granted to"
        self.stdout.write(f"{', '.join(families)} {verb} {email} ({', '.join(scopes.PERMISSIONS[n] for n in families)})")
