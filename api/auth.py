"""Bearer authentication for /api/: an API token (random, stored as its HMAC keyed by
TOKEN_HASH_KEY) or a short-lived JWT from `POST /auth/token` (HS256, signed with JWT_SECRET).

A bearer with three dot-separated parts is checked as a JWT; anything else as an API token.
Each carries scopes (api.scopes): every route names the family it needs (`TokenAuth(family)`),
and a bearer without it, or whose user no longer has the family's permission, is refused with a
403 naming the scope, inside the authentication (before the body is read).

Key rotation: a JWT is signed with JWT_SECRET only, and verified with JWT_SECRET, then with
JWT_PREVIOUS_SECRET when it is set (the rotation window: until every JWT signed with the old key
has expired). API tokens are keyed by TOKEN_HASH_KEY (JWT_SECRET when unset, as before issue 22),
so rotating JWT_SECRET leaves them working once TOKEN_HASH_KEY holds the old value.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
import asyncio
from typing import Any, Callable, Iterable

import jwt
from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth import get_user_model
from django.http import HttpRequest
from django.utils import timezone
from ninja.errors import HttpError
from ninja.security import HttpBearer

from api import scopes as scoping
from api.models import ApiToken

ALGORITHM = "HS256"
#: last_used_at is written at most this often per token.
TOUCH_EVERY = dt.timedelta(minutes=1)


def _hash(token: str) -> str:
    return hmac.new(settings.TOKEN_HASH_KEY.encode(), token.encode(), hashlib.sha256).hexdigest()


def _scopes_for(user, scope: str | Iterable[str] | None) -> tuple[str, ...]:  # noqa: ANN001 - the user model
    """The scopes asked (None: every family the user may hold), bounded by the user's
    permissions: ScopeError for an unknown one, ScopeRefused for one the user may not hold."""
    wanted = scoping.permitted(user) if scope is None else scoping.parse(scope)
    if not wanted:
        if scope is None:
            raise scoping.ScopeRefused(None)
        raise scoping.ScopeError(f"no scope given: {scoping.HELP}")
    scoping.bound(user, wanted)
    return wanted


def issue_token(user, scope: str | Iterable[str] | None = None, expires_in: dt.timedelta | None = None) -> str:  # noqa: ANN001
    """Create a token for `user` and return it; it cannot be shown again. `scope`: space-separated
    scopes (api.scopes), None for every family the user's permissions allow."""
    granted = _scopes_for(user, scope)
    token = "cvy_" + secrets.token_urlsafe(32)
    expires_at = timezone.now() + expires_in if expires_in is not None else None
    ApiToken.objects.create(user=user, key_hash=_hash(token), scope=scoping.render(granted), expires_at=expires_at)
    return token


def mint_jwt(user, scope: str | Iterable[str] | None = None, ttl: int | None = None) -> tuple[str, str]:  # noqa: ANN001
    """A JWT for `user` and its scopes: claims sub (the user's id), iat, exp (JWT_TTL_SECONDS on)
    and scope (space-separated; None: every family the user's permissions allow). Signed with
    JWT_SECRET only."""
    granted = scoping.render(_scopes_for(user, scope))
    now = int(timezone.now().timestamp())
    ttl = settings.JWT_TTL_SECONDS if ttl is None else ttl
    claims = {"sub": str(user.pk), "iat": now, "exp": now + ttl, "scope": granted}
    return jwt.encode(claims, settings.JWT_SECRET, algorithm=ALGORITHM), granted


def issue_jwt(user, scope: str | Iterable[str] | None = None, ttl: int | None = None) -> str:  # noqa: ANN001
    """The JWT of `mint_jwt`."""
    return mint_jwt(user, scope, ttl)[0]


def looks_like_jwt(token: str) -> bool:
    return token.count(".") == 2 and not token.startswith("cvy_")


def _decode(token: str) -> dict[str, Any] | None:
    """The claims of a JWT signed with JWT_SECRET, or with JWT_PREVIOUS_SECRET while it is set."""
    keys = [settings.JWT_SECRET] + ([settings.JWT_PREVIOUS_SECRET] if settings.JWT_PREVIOUS_SECRET else [])
    for key in keys:
        try:
            return jwt.decode(token, key, algorithms=[ALGORITHM], options={"require": ["sub", "exp", "iat", "scope"]})
        except jwt.InvalidSignatureError:
            continue  # perhaps signed with the previous key
        except jwt.PyJWTError:  # expired, malformed, another algorithm, missing claims
            return None
    return None


def _from_jwt(token: str, permission: str | None) -> tuple[Any, tuple[str, ...], bool] | None:
    claims = _decode(token)
    if claims is None or not isinstance(claims.get("scope"), str) or not str(claims["sub"]).isdigit():
        return None
    try:
        granted = scoping.parse(claims["scope"])
    except scoping.ScopeError:
        return None
    users = get_user_model().objects.filter(pk=int(claims["sub"]))
    if permission is not None:
        users = users.annotate(holds=scoping.holding(permission, "pk"))
    user = users.first()
    return (user, granted, bool(getattr(user, "holds", False))) if user is not None else None


def _from_api_token(token: str, permission: str | None) -> tuple[Any, tuple[str, ...], bool] | None:
    found = ApiToken.objects.select_related("user").filter(key_hash=_hash(token))
    if permission is not None:
        found = found.annotate(holds=scoping.holding(permission, "user_id"))
    found = found.first()
    if found is None or found.expired:
        return None
    now = timezone.now()
    if found.last_used_at is None or found.last_used_at < now - TOUCH_EVERY:
        ApiToken.objects.filter(pk=found.pk).update(last_used_at=now)
    try:
        return found.user, scoping.parse(found.scope), bool(getattr(found, "holds", False))
    except scoping.ScopeError:
        return None


class TokenAuth(HttpBearer):
    """The bearer of /api/, for routes of one scope family (`family`; see api.scopes). Without a
    family (the API's default), every bearer is refused: a route must name the one it needs.

    `load` (async routes only): what the view will read first, done in the same thread hop as the
    token's check, right after it succeeded (the check and the read each took a hop of their own
    from the event loop to the request's thread: each hop a wake-up of a thread and of the loop,
    docs/performance.md "HTTP under load"). `load(request)` returns the value (None: nothing loaded); the view
    takes it with `loaded(request)`, which raises what `load` raised (a 404 stays the view's)."""

    def __init__(self, family: str | None = None, query: bool = False,
                 load: Callable[[HttpRequest], Any] | None = None) -> None:
        if family is not None and family not in scoping.FAMILIES:
            raise ValueError(f"family must be one of {scoping.FAMILIES}")
        super().__init__()
        self.family = family
        self.permission = scoping.PERMISSIONS[family] if family is not None else None
        #: Also `?access_token=` when no Authorization header came (STREAM_READS below).
        self.query = query
        self.load = load
        #: django-ninja awaits what an `is_async` auth returns (a sync route would not: refused below).
        self.is_async = load is not None

    def __call__(self, request: HttpRequest):  # noqa: ANN204
        if self.load is not None:
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                raise TypeError("a TokenAuth with `load` is for async routes only") from None
            return sync_to_async(self._check_and_load)(request)
        return self._check(request)

    def _check_and_load(self, request: HttpRequest) -> Any:
        user = self._check(request)
        if user:
            try:
                request.conveyor_loaded = (self.load(request), None)  # type: ignore[attr-defined]
            except Exception as exc:  # the view's to raise, as if it had read itself
                request.conveyor_loaded = (None, exc)  # type: ignore[attr-defined]
        return user

    def _check(self, request: HttpRequest):  # noqa: ANN202
        if self.query and not request.headers.get(self.header):
            token = request.GET.get("access_token")
            if token:
                return self.authenticate(request, token)
        return super().__call__(request)

    def authenticate(self, request: HttpRequest, token: str):  # noqa: ANN201
        # The user's permission is read in the same query as the token (or the JWT's user).
        lookup = _from_jwt if looks_like_jwt(token) else _from_api_token
        found = lookup(token, self.permission)
        if found is None or not found[0].is_active:
            return None
        user, granted, holds = found
        request.user = user
        request.auth_scopes = granted
        if self.family is None:
            raise HttpError(403, "this route names no scope: no token may use it")
        if not scoping.allows(granted, self.family):
            raise HttpError(403, f"this route needs the scope {self.family}; this token has {scoping.render(granted)}")
        if not (holds or user.is_superuser):
            raise HttpError(
                403, f"the scope {self.family} needs the permission {self.permission}, which this token's user no longer has"
            )
        return user


def loaded(request: HttpRequest) -> Any:
    """What the route's auth `load` returned for this request (None: nothing), or raise what it raised."""
    value, error = getattr(request, "conveyor_loaded", (None, None))
    if error is not None:
        try:
            raise error
        finally:
            error = None  # (this frame, in the exception's traceback, would hold it: a cycle)
    return value


#: One instance per family, for the routes' `auth=`.
EMITS, READS, WRITES, OPERATES = (TokenAuth(name) for name in scoping.FAMILIES)

#: `jobs:read` for the live streams: TokenAuth that also takes the bearer from the query,
#: `?access_token=` (RFC 6750, 2.3), when no Authorization header is sent: a browser's
#: `EventSource` cannot send one (jobs/interfaces/streams.py). Give it a short-lived JWT
#: (`POST /auth/token`, scope jobs:read): a URL may be written in a proxy's log.
STREAM_READS = TokenAuth(scoping.READ, query=True)
