"""Rows the tests need: an admin user with an API token."""
from __future__ import annotations

from django.contrib.auth import get_user_model

from api.auth import issue_token


def api_token(email: str = "admin@example.com") -> str:
    user, _ = get_user_model().objects.get_or_create(username=email, defaults={"email": email, "is_staff": True, "is_superuser": True})
    return issue_token(user)
