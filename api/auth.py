"""Bearer authentication for /api/: an API token (random, stored as its HMAC keyed by JWT_SECRET)
or a short-lived JWT from `POST /auth/token` (HS256, signed with JWT_SECRET).

A bearer with three dot-separated parts is checked as a JWT; anything else as an API token.
Each carries a scope, `read` or `write` (write includes read): a read-scoped bearer is refused
with 403 on every method that writes (POST and the other unsafe methods).
"""
from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
from typing import Any

import jwt
from django.conf import settings
from django.contrib.auth import get_user_model
from django.http import HttpRequest
from django.utils import timezone
from ninja.errors import HttpError
from ninja.security import HttpBearer

from api.models import READ, SCOPES, WRITE, ApiToken

SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
ALGORITHM = "HS256"
#: last_used_at is written at most this often per token.
TOUCH_EVERY = dt.timedelta(minutes=1)


def _hash(token: str) -> str:
    return hmac.new(settings.JWT_SECRET.encode(), token.encode(), hashlib.sha256).hexdigest()


def issue_token(user, scope: str = WRITE, expires_in: dt.timedelta | None = None) -> str:  # noqa: ANN001 - the user model
    """Create a token for `user` and return it; it cannot be shown again."""
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}")
    token = "cvy_" + secrets.token_urlsafe(32)
    expires_at = timezone.now() + expires_in if expires_in is not None else None
    ApiToken.objects.create(user=user, key_hash=_hash(token), scope=scope, expires_at=expires_at)
    return token


def issue_jwt(user, scope: str = WRITE, ttl: int | None = None) -> str:  # noqa: ANN001 - the user model
    """A JWT for `user`: claims sub (the user's id), iat, exp (JWT_TTL_SECONDS on) and scope."""
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}")
    now = int(timezone.now().timestamp())
    ttl = settings.JWT_TTL_SECONDS if ttl is None else ttl
    claims = {"sub": str(user.pk), "iat": now, "exp": now + ttl, "scope": scope}
    return jwt.encode(claims, settings.JWT_SECRET, algorithm=ALGORITHM)


def looks_like_jwt(token: str) -> bool:
    return token.count(".") == 2 and not token.startswith("cvy_")


def _from_jwt(token: str) -> tuple[Any, str] | None:
    try:
        claims = jwt.decode(
            token, settings.JWT_SECRET, algorithms=[ALGORITHM], options={"require": ["sub", "exp", "iat", "scope"]}
        )
    except jwt.PyJWTError:  # expired, tampered, wrong key or algorithm, missing claims
        return None
    if claims.get("scope") not in SCOPES or not str(claims["sub"]).isdigit():
        return None
    user = get_user_model().objects.filter(pk=int(claims["sub"])).first()
    return (user, claims["scope"]) if user is not None else None


def _from_api_token(token: str) -> tuple[Any, str] | None:
    found = ApiToken.objects.select_related("user").filter(key_hash=_hash(token)).first()
    if found is None or found.expired:
        return None
    now = timezone.now()
    if found.last_used_at is None or found.last_used_at < now - TOUCH_EVERY:
        ApiToken.objects.filter(pk=found.pk).update(last_used_at=now)
    return found.user, found.scope


class TokenAuth(HttpBearer):
    def authenticate(self, request: HttpRequest, token: str):  # noqa: ANN201
        found = _from_jwt(token) if looks_like_jwt(token) else _from_api_token(token)
        if found is None or not found[0].is_active:
            return None
        user, scope = found
        request.user = user
        request.auth_scope = scope
        if scope == READ and request.method not in SAFE_METHODS:
            raise HttpError(403, "this token's scope is read: writes need a write-scoped token")
        return user
