"""CORS per family (issue 13): django-cors-headers asks api.cors through its check_request_enabled
signal; each family of routes answers only the origins listed for it."""
from __future__ import annotations

import pytest
from django.test import Client

from tests.factories import api_token

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

STORE, ADMIN, AUTH = "https://shop.example", "https://ops.example", "https://login.example"
ALLOW = "access-control-allow-origin"


@pytest.fixture(autouse=True)
def families(settings):
    settings.STORE_CORS = [STORE]
    settings.ADMIN_CORS = [ADMIN]
    settings.AUTH_CORS = [AUTH]


def preflight(path: str, origin: str, method: str = "POST"):
    return Client().options(
        path, HTTP_ORIGIN=origin, HTTP_ACCESS_CONTROL_REQUEST_METHOD=method,
        HTTP_ACCESS_CONTROL_REQUEST_HEADERS="authorization, content-type",
    )


FAMILIES = {
    "store": (STORE, ["/api/events", "/api/events/7"]),
    "admin": (ADMIN, ["/api/jobs", "/api/jobs/7/cancel", "/api/chains", "/api/types", "/api/subscribers", "/admin/"]),
    "auth": (AUTH, ["/auth/token"]),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_preflight_from_the_family_origin_is_allowed(family):
    origin, paths = FAMILIES[family]
    for path in paths:
        response = preflight(path, origin)
        assert response.status_code == 200, path
        assert response[ALLOW] == origin, path
        assert "authorization" in response["access-control-allow-headers"], path
        assert "POST" in response["access-control-allow-methods"], path


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_preflight_from_any_other_origin_gets_no_cors_headers(family):
    origin, paths = FAMILIES[family]
    others = [o for o in (STORE, ADMIN, AUTH, "https://evil.example") if o != origin]
    for path in paths:
        for other in others:
            response = preflight(path, other)
            assert ALLOW not in response, (path, other)
            assert "access-control-allow-methods" not in response, (path, other)


def test_actual_requests_carry_the_header_only_for_their_family():
    api = Client(HTTP_AUTHORIZATION=f"Bearer {api_token()}")
    assert api.get("/api/events", HTTP_ORIGIN=STORE)[ALLOW] == STORE
    assert ALLOW not in api.get("/api/events", HTTP_ORIGIN=ADMIN)
    assert api.get("/api/jobs", HTTP_ORIGIN=ADMIN)[ALLOW] == ADMIN
    assert ALLOW not in api.get("/api/jobs", HTTP_ORIGIN=STORE)
    login = Client().post("/auth/token", data="{}", content_type="application/json", HTTP_ORIGIN=AUTH)
    assert login.status_code == 400 and login[ALLOW] == AUTH
    assert ALLOW not in Client().post("/auth/token", data="{}", content_type="application/json", HTTP_ORIGIN=STORE)


def test_paths_outside_the_families_get_no_cors_headers():
    for origin in (STORE, ADMIN, AUTH):
        assert ALLOW not in preflight("/health/live", origin, "GET")
        assert ALLOW not in Client().get("/metrics", HTTP_ORIGIN=origin)


def test_no_origins_configured_means_no_cors(settings):
    settings.STORE_CORS = settings.ADMIN_CORS = settings.AUTH_CORS = []
    for origin, paths in FAMILIES.values():
        assert ALLOW not in preflight(paths[0], origin)


def test_csrf_trusted_origins_come_from_admin_cors():
    from project import settings as conf

    assert conf.CSRF_TRUSTED_ORIGINS is conf.ADMIN_CORS
