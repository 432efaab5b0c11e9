"""Rows the tests need: an admin user with an API token; a user holding the permissions behind
some token scopes (api.scopes)."""
from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission

from api import scopes
from api.auth import issue_token


def api_token(email: str = "admin@example.com") -> str:
    user, _ = get_user_model().objects.get_or_create(username=email, defaults={"email": email, "is_staff": True, "is_superuser": True})
    return issue_token(user)


def grant(holder, *families: str):
    """Give `holder` (a user or a group) the Django permissions behind `families`
    (api.scopes.PERMISSIONS); a user fetched again (Django caches a user's permissions on it)."""
    held = holder.permissions if isinstance(holder, Group) else holder.user_permissions
    for name in families:
        app_label, codename = scopes.PERMISSIONS[name].split(".")
        held.add(Permission.objects.get(content_type__app_label=app_label, codename=codename))
    return holder if isinstance(holder, Group) else get_user_model().objects.get(pk=holder.pk)
