"""Who is logging in, and what a locked-out login is answered (django-axes' hooks).

django-axes counts failed logins of the admin (`/admin/login/`) and of `POST /auth/token` per
(client address, account) and locks that pair out for LOGIN_COOLOFF_SECONDS after
LOGIN_FAILURE_LIMIT failures (settings, "Logins"). Two things it cannot know by itself:

- the client's address behind the TLS proxy (docs/deployment.md): REMOTE_ADDR is then the
  proxy's, the same for every client, so one client's failures would lock out everyone.
  `client_ip` reads X-Forwarded-For, trusting only the TRUSTED_PROXY_HOPS entries our own proxies
  appended (an entry a client wrote itself sits further left and is never read);
- the answer: JSON with Retry-After on the API (`/auth/`), a plain page on the admin.
"""
from __future__ import annotations

import ipaddress
import logging

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse

log = logging.getLogger(__name__)


def client_ip(request: HttpRequest) -> str:
    """The client's address: REMOTE_ADDR with no trusted proxy; behind N trusted proxies, the
    N-th X-Forwarded-For entry from the right (the address the outermost of our proxies saw).

    Each proxy appends the address it received the request from, so the rightmost N entries are
    written by our proxies and anything left of them by the client (spoofable). Fewer entries than
    hops, or one that is not an address, means a request that did not come through every proxy
    (or a misconfigured one): REMOTE_ADDR then, never a value the client chose."""
    remote = request.META.get("REMOTE_ADDR") or "0.0.0.0"
    hops = settings.TRUSTED_PROXY_HOPS
    if hops <= 0:
        return remote
    forwarded = [part.strip() for part in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if part.strip()]
    if len(forwarded) < hops:
        log.warning("X-Forwarded-For has %d entries behind %d trusted proxies: using REMOTE_ADDR", len(forwarded), hops)
        return remote
    candidate = forwarded[-hops]
    try:
        return str(ipaddress.ip_address(candidate))
    except ValueError:
        log.warning("X-Forwarded-For entry %r is not an address: using REMOTE_ADDR", candidate[:64])
        return remote


def retry_after() -> int:
    """Seconds until a locked-out pair may try again. Every failure, those during the lockout too,
    starts the cool-off again (axes' AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT), so a lockout
    just answered ends one full cool-off from now."""
    return settings.LOGIN_COOLOFF_SECONDS


def locked_out_json(request: HttpRequest) -> JsonResponse:
    """The API's answer to a locked-out login: 429, a JSON detail and Retry-After."""
    seconds = retry_after()
    response = JsonResponse(
        {"detail": f"too many failed logins for this account from this address: try again in {seconds}s"},
        status=429,
    )
    response["Retry-After"] = str(seconds)
    return response


def locked_out(request: HttpRequest, original_response: HttpResponse | None = None,
               credentials: dict | None = None) -> HttpResponse:
    """AXES_LOCKOUT_CALLABLE: AxesMiddleware's answer for a request whose login axes locked out.

    Under /auth/ (and /api/) JSON, as every answer there; elsewhere (the admin's login form) a
    plain-text page, both 429 with Retry-After."""
    if request.path.startswith(("/auth/", "/api/")):
        return locked_out_json(request)
    seconds = retry_after()
    response = HttpResponse(
        f"Too many failed logins for this account from this address. Try again in {seconds} seconds.\n",
        status=429, content_type="text/plain; charset=utf-8",
    )
    response["Retry-After"] = str(seconds)
    return response
