"""The JSON API under /api/: one NinjaAPI, a router per capability, errors as JSON with fields."""
from __future__ import annotations

from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse
from ninja import NinjaAPI
from ninja.errors import AuthenticationError, ValidationError

from api.auth import TokenAuth
from api.errors import BadInput, Conflict

api = NinjaAPI(
    title="Conveyor",
    version="1",
    description="Durable jobs, chains and events on Django, Celery, Redis and PostgreSQL.",
    auth=TokenAuth(),
    openapi_url="/openapi.json",
    docs_url="/docs",
    urls_namespace="api",
)


def _field(loc: list | tuple) -> str:
    # Ninja reports ("body", "payload", "input", "width"): keep what the client sent.
    parts = [str(part) for part in loc if part not in ("body", "payload", "query", "path")]
    return ".".join(parts) or "body"


@api.exception_handler(ValidationError)
def validation_error(request: HttpRequest, exc: ValidationError) -> HttpResponse:
    fields = {_field(err.get("loc", ())): err.get("msg", "invalid") for err in exc.errors}
    return api.create_response(request, {"detail": "invalid request", "fields": fields}, status=400)


@api.exception_handler(Conflict)
def conflict(request: HttpRequest, exc: Conflict) -> HttpResponse:
    return api.create_response(request, {"detail": str(exc), "fields": exc.errors}, status=409)


@api.exception_handler(BadInput)
def bad_input(request: HttpRequest, exc: BadInput) -> HttpResponse:
    return api.create_response(request, {"detail": str(exc), "fields": exc.errors}, status=400)


@api.exception_handler(AuthenticationError)
def unauthorized(request: HttpRequest, exc: AuthenticationError) -> HttpResponse:
    return api.create_response(
        request, {"detail": "missing or invalid token (Authorization: Bearer <token>)"}, status=401
    )


@api.exception_handler(RequestDataTooBig)
def too_big(request: HttpRequest, exc: RequestDataTooBig) -> HttpResponse:
    return api.create_response(request, {"detail": "request body over 1 MiB"}, status=413)


from jobs.http import chains as chains_router  # noqa: E402 - routers after the handlers
from jobs.http import router as jobs_router  # noqa: E402
from subscribers.http import router as events_router  # noqa: E402

api.add_router("/jobs", jobs_router)
api.add_router("/chains", chains_router)
api.add_router("/events", events_router)
