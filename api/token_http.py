"""`POST /auth/token`: a user's email and password for a short-lived JWT (api.auth.issue_jwt).

Its own NinjaAPI under /auth/ (namespace "auth", document at /auth/openapi.json), without the
bearer auth of /api/. The JWT's scopes (api.scopes) are those asked, each bounded by the user's
permissions (a scope the user may not hold: 403 naming it). Failed logins are counted by
django-axes per (client address, account), as the admin's: LOGIN_FAILURE_LIMIT failures lock the
pair out, 429 with Retry-After (project/logins.py).
"""
from __future__ import annotations

from typing import Literal

from django.conf import settings
from django.contrib.auth import authenticate, get_user_model
from django.contrib.auth.signals import user_logged_in
from django.http import Http404, HttpRequest, HttpResponse
from ninja import NinjaAPI, Schema, Status
from ninja.errors import ValidationError
from pydantic import Field

from api import scopes
from api.auth import mint_jwt
from api.schemas import Strict, errors
from api.validation import JsonParser, Text
from project.logins import locked_out_json

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


@auth_api.exception_handler(ValidationError)
def validation_error(request: HttpRequest, exc: ValidationError) -> HttpResponse:
    from api.root import invalid_body, invalid_fields

    return auth_api.create_response(request, invalid_body(invalid_fields(exc)), status=400)


@auth_api.exception_handler(Http404)
def not_found(request: HttpRequest, exc: Http404) -> HttpResponse:
    from api.root import not_found_body

    return auth_api.create_response(request, not_found_body(request, exc), status=404)


@auth_api.post(
    "/token",
    response={200: TokenOut, **errors(400, 401, 403, 429)},
    summary="Exchange email and password for a JWT",
    description="A JWT (HS256) with claims sub, iat, exp and scope, valid JWT_TTL_SECONDS (15 min by "
    "default): use it as `Authorization: Bearer <jwt>` on /api/. 401 on a wrong email or password; 429 "
    "(with Retry-After) once LOGIN_FAILURE_LIMIT logins of one account from one client address have failed "
    "(for LOGIN_COOLOFF_SECONDS, the right password included). "
    "`scope` asks for scopes; 400 naming `scope` for an unknown one, 403 naming the scope the user's "
    "permissions do not allow.",
    auth=None,
)
def token(request: HttpRequest, payload: TokenIn):  # noqa: ANN201
    email = payload.email.strip()
    found = get_user_model().objects.filter(email__iexact=email).first()
    # django-axes keys its count on the username given to authenticate(). The account the lookup
    # found, not the email as typed: every spelling PostgreSQL's iexact (UPPER() = UPPER()) takes
    # for one account ('SIS@', 'ſis@' with a long s, for 'sis@') counts toward that account's
    # limit. An email of no account: upper-cased as UPPER() compares it, cut to the 254
    # characters of an email (upper-casing lengthens some: 'ß' is 'SS'; axes keeps 255). That one
    # still goes through authenticate(), which then hashes the password once anyway: the answer
    # takes as long as for a known email (no telling which emails exist).
    username = found.get_username() if found is not None else email.upper()[:254]
    user = authenticate(request, username=username, password=payload.password)
    if getattr(request, "axes_locked_out", False):
        return locked_out_json(request)
    if user is None:
        return Status(401, {"detail": "wrong email or password"})
    # A login, as the admin's (which sends it from django.contrib.auth.login): axes forgets this
    # pair's failures (AXES_RESET_ON_SUCCESS) and Django records the user's last_login.
    user_logged_in.send(sender=user.__class__, request=request, user=user)
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
