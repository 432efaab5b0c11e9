"""The JSON API under /api/: one NinjaAPI and its errors as JSON with fields; the routers of
each capability are added by project/api.py (this layer imports neither jobs nor subscribers)."""
from __future__ import annotations

from typing import Any

from django.core.exceptions import RequestDataTooBig
from django.db import OperationalError
from django.http import Http404, HttpRequest, HttpResponse
from ninja import NinjaAPI
from ninja.errors import AuthenticationError, ValidationError
from ninja.openapi.schema import OpenAPISchema

from api import scopes
from api.auth import TokenAuth
from api.errors import BadInput, Conflict, TooLarge
from api.messages import (
    RETRY_AFTER_SECONDS, field_message, invalid_detail, not_found_detail, unavailable_detail, without_nul,
)
from api.validation import UNION_TAGS, JsonParser, constrain


class ScopedSchema(OpenAPISchema):
    """The document with each operation's scope in its security requirement
    (`[{"TokenAuth": ["jobs:write"]}]`: OpenAPI 3.1 lets a non-OAuth scheme list the roles it
    needs), and the scopes described once in the scheme."""

    def operation_security(self, operation: Any) -> Any:
        result = super().operation_security(operation)
        families = [auth.family for auth in operation.auth_callbacks if isinstance(auth, TokenAuth) and auth.family]
        if result and families:
            result = [{name: families} for entry in result for name in entry]
        for scheme in self.securitySchemes.values():
            scheme.setdefault("description", SCOPES_DESCRIPTION)
        return result


SCOPES_DESCRIPTION = (
    "An API token (`manage.py token`) or a JWT (`POST /auth/token`), each with scopes: each operation "
    "names the one it needs in its security requirement, and a bearer without it gets 403 naming it. "
    + "; ".join(f"`{name}` needs the user's permission `{perm}`" for name, perm in scopes.PERMISSIONS.items())
    + ". `events:emit:<name>` emits only the event `<name>`."
)


class ConveyorAPI(NinjaAPI):
    def get_openapi_schema(self, *, path_prefix: str | None = None, path_params: dict[str, Any] | None = None) -> Any:
        # What the server refuses, the document says: storable strings, free JSON as JsonValue,
        # and the scope each operation needs.
        if path_prefix is None:
            path_prefix = self.get_root_path(path_params or {})
        return constrain(ScopedSchema(self, path_prefix))


api = ConveyorAPI(
    parser=JsonParser(),
    title="Conveyor",
    version="1",
    description="Durable jobs, chains and events on Django, Celery, Redis and PostgreSQL.",
    auth=TokenAuth(),
    openapi_url="/openapi.json",
    docs_url="/docs",
    urls_namespace="api",
)


def _field(error: dict[str, Any]) -> str:
    """The field as the client wrote it: ninja reports ("body", "payload", "steps", 1,
    "examples.fail", "input", "times"), with the tag of a discriminated union in the path."""
    parts = [
        str(part) for part in error.get("loc", ()) if part not in ("body", "payload", "query", "path") and part not in UNION_TAGS
    ]
    if error.get("type") in ("union_tag_invalid", "union_tag_not_found"):
        parts.append(str(error.get("ctx", {}).get("discriminator", "type")).strip("'"))
    return ".".join(parts) or "body"


def invalid_fields(exc: ValidationError) -> dict[str, str]:
    """Each wrong field, as the client named it, with its message in plain words (api.messages)."""
    return {without_nul(_field(err)): without_nul(field_message(err, UNION_TAGS)) for err in exc.errors}


def invalid_body(fields: dict[str, str]) -> dict[str, Any]:
    """A 400's body (docs/errors.md): `detail` in a sentence, `fields` naming each wrong one."""
    return {"detail": invalid_detail(fields), "fields": fields}


@api.exception_handler(ValidationError)
def validation_error(request: HttpRequest, exc: ValidationError) -> HttpResponse:
    return api.create_response(request, invalid_body(invalid_fields(exc)), status=400)


def not_found_body(request: HttpRequest, exc: Http404) -> dict[str, str]:
    """A 404's body, the same words for every route: `{"detail": "no job 12"}`."""
    match = getattr(request, "resolver_match", None)
    ids = [value for value in (match.kwargs.values() if match else ()) if isinstance(value, int)]
    return {"detail": not_found_detail(str(exc), ids)}


@api.exception_handler(Http404)
def not_found(request: HttpRequest, exc: Http404) -> HttpResponse:
    return api.create_response(request, not_found_body(request, exc), status=404)


@api.exception_handler(Conflict)
def conflict(request: HttpRequest, exc: Conflict) -> HttpResponse:
    return api.create_response(request, {"detail": str(exc), "fields": exc.errors}, status=409)


@api.exception_handler(BadInput)
def bad_input(request: HttpRequest, exc: BadInput) -> HttpResponse:
    return api.create_response(request, {"detail": str(exc), "fields": exc.errors}, status=400)


@api.exception_handler(TooLarge)
def too_large(request: HttpRequest, exc: TooLarge) -> HttpResponse:
    return api.create_response(request, {"detail": str(exc), "fields": exc.errors}, status=413)


@api.exception_handler(AuthenticationError)
def unauthorized(request: HttpRequest, exc: AuthenticationError) -> HttpResponse:
    return api.create_response(
        request, {"detail": "missing or invalid token (Authorization: Bearer <token>)"}, status=401
    )


@api.exception_handler(RequestDataTooBig)
def too_big(request: HttpRequest, exc: RequestDataTooBig) -> HttpResponse:
    return api.create_response(request, {"detail": "request body over 1 MiB"}, status=413)



@api.exception_handler(OperationalError)
def database_unavailable(request: HttpRequest, exc: OperationalError) -> HttpResponse:
    # PostgreSQL away, or every connection of the process's pool busy past its timeout (a burst of
    # requests under load): the request did nothing, so 503 and a retry, not a 500 and a traceback.
    response = api.create_response(request, {"detail": unavailable_detail()}, status=503)
    response["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response
