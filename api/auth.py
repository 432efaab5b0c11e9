"""API tokens: random bearer tokens whose HMAC (keyed by JWT_SECRET) is all that is stored."""
from __future__ import annotations

import hashlib
import hmac
import secrets

from django.conf import settings
from django.http import HttpRequest
from ninja.security import HttpBearer

from api.models import ApiToken


def _hash(token: str) -> str:
    return hmac.new(settings.JWT_SECRET.encode(), token.encode(), hashlib.sha256).hexdigest()


def issue_token(user) -> str:  # noqa: ANN001 - the user model
    """Create a token for `user` and return it; it cannot be shown again."""
    token = "cvy_" + secrets.token_urlsafe(32)
    ApiToken.objects.create(user=user, key_hash=_hash(token))
    return token


class TokenAuth(HttpBearer):
    def authenticate(self, request: HttpRequest, token: str):  # noqa: ANN201
        found = ApiToken.objects.select_related("user").filter(key_hash=_hash(token)).first()
        if found is None or not found.user.is_active:
            return None
        request.user = found.user
        return found.user
