"""`POST /auth/token`: a user's email and password for a short-lived JWT (api.auth.issue_jwt).

Its own NinjaAPI under /auth/ (namespace "auth", document at /auth/openapi.json), without the
bearer auth of /api/. The JWT's scopes (api.scopes) are those asked, each bounded by the user's
permissions (a scope the user may not hold: 403 naming it). Attempts are limited per client IP
and per email in the shared cache (Redis): past AUTH_RATE_LIMIT in the current minute, 429 with
Retry-After.
"""
from __future__ import annotations

import hashlib
import time
from typing import Literal

from django.conf import settings
from django.contrib.auth import authenticate, get_user_model
from django.core.cache import cache
from django.http import HttpRequest, HttpResponse
from ninja import NinjaAPI, Schema, Status
from ninja.errors import ValidationError
from pydantic import Field

from api import scopes
from api.auth import mint_jwt
from api.schemas import Strict, errors
from api.validation import JsonParser, Text

WINDOW = 60  # seconds

auth_api = NinjaAPI(
    parser=JsonParser(),
    title="Conveyor auth",
    version="1",
    description="Exchange an email and password for a short-lived JWT to use as the bearer on /api/.",
    openapi_url="/openapi.json",
    docs_url="/docs",
    urls_namespace="auth",
)


class TokenIn(Strict):
    email: Text = Field(min_length=3, max_length=254)
    password: Text = Field(min_length=1, max_length=4096)
    scope: Text | None = Field(
        None,
        max_length=4000,
        description="Space-separated scopes: events:emit, events:emit:<event name>, jobs:read, jobs:write, operate "
        "(the names before issue 22: read = jobs:read, write = all four). Each needs its permission (a scope the user "
        "may not hold: 403 naming it). Omitted: every scope the user's permissions allow.",
    )


class TokenOut(Schema):
    access_token: str
    token_type: Literal["bearer"]
    #: Seconds from now.
    expires_in: int
    #: The scopes granted, space-separated.
    scope: str


class RateLimited(Exception):
    def __init__(self, retry_after: int) -> None:
        super().__init__("too many attempts")
        self.retry_after = retry_after


@auth_api.exception_handler(ValidationError)
def validation_error(request: HttpRequest, exc: ValidationError) -> HttpResponse:
    from api.root import _field

    fields = {_field(err): err.get("msg", "invalid") for err in exc.errors}
    return auth_api.create_response(request, {"detail": "invalid request", "fields": fields}, status=400)


@auth_api.exception_handler(RateLimited)
def rate_limited(request: HttpRequest, exc: RateLimited) -> HttpResponse:
    response = auth_api.create_response(
        request, {"detail": f"too many attempts: try again in {exc.retry_after}s"}, status=429
    )
    response["Retry-After"] = str(exc.retry_after)
    return response


def _count(kind: str, value: str) -> tuple[int, int]:
    """One more attempt for (kind, value) in this minute: (attempts so far, seconds left)."""
    now = time.time()
    window = int(now // WINDOW)
    digest = hashlib.sha256(value.encode()).hexdigest()[:32]
    key = f"conveyor:auth-attempts:{kind}:{digest}:{window}"
    cache.add(key, 0, timeout=WINDOW + 1)
    try:
        attempts = cache.incr(key)
    except ValueError:  # expired between add and incr
        cache.add(key, 1, timeout=WINDOW + 1)
        attempts = 1
    return attempts, max(1, int((window + 1) * WINDOW - now + 0.999))


def check_rate(request: HttpRequest, email: str) -> None:
    ip = request.META.get("REMOTE_ADDR") or "unknown"
    counted = [_count("ip", ip), _count("email", email.strip().lower())]
    over = [left for attempts, left in counted if attempts > settings.AUTH_RATE_LIMIT]
    if over:
        raise RateLimited(max(over))


@auth_api.post(
    "/token",
    response={200: TokenOut, **errors(400, 401, 403, 429)},
    summary="Exchange email and password for a JWT",
    description="A JWT (HS256) with claims sub, iat, exp and scope, valid JWT_TTL_SECONDS (15 min by "
    "default): use it as `Authorization: Bearer <jwt>` on /api/. 401 on a wrong email or password; 429 "
    "(with Retry-After) past AUTH_RATE_LIMIT attempts a minute from one client IP or for one email. `scope` asks "
    "for scopes; 400 naming `scope` for an unknown one, 403 naming the scope the user's permissions do not allow.",
    auth=None,
)
def token(request: HttpRequest, payload: TokenIn):  # noqa: ANN201
    check_rate(request, payload.email)
    found = get_user_model().objects.filter(email__iexact=payload.email.strip()).first()
    # An unknown email still goes through authenticate(), which then hashes the password once
    # anyway: the answer takes as long as for a known one (no telling which emails exist).
    username = found.get_username() if found is not None else payload.email
    user = authenticate(request, username=username, password=payload.password)
    if user is None:
        return Status(401, {"detail": "wrong email or password"})
    try:
        token, granted = mint_jwt(user, payload.scope)
    except scopes.ScopeRefused as refused:
        needs = f"{refused.scope or 'any scope'} needs {refused.permission}"
        return Status(403, {"detail": str(refused), "fields": {"scope": needs}})
    except scopes.ScopeError as error:
        return Status(400, {"detail": str(error), "fields": {"scope": str(error)}})
    return Status(200, {
        "access_token": token,
        "token_type": "bearer",
        "expires_in": settings.JWT_TTL_SECONDS,
        "scope": granted,
    })
