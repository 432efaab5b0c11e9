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


# A process of its own reads its settings from ADMIN_CORS and logs in to the admin by a POST that
# says where it comes from (Origin), as a browser's does; Django's CSRF check decides.
ADMIN_LOGIN = """
import json, os, sys
import django
django.setup()
from django.test import Client
answers = {}
for origin in sys.argv[1:]:
    browser = Client(enforce_csrf_checks=True)
    browser.get("/admin/login/")
    form = {"username": "ops@example.com", "password": "a-long-password",
            "csrfmiddlewaretoken": browser.cookies["csrftoken"].value, "next": "/admin/"}
    answers[origin] = browser.post("/admin/login/", form, HTTP_ORIGIN=origin).status_code
print(json.dumps(answers))
"""


def test_a_cross_origin_admin_post_is_accepted_only_from_an_admin_cors_origin():
    import json
    import os
    import subprocess
    import sys

    from django.conf import settings
    from django.contrib.auth import get_user_model

    from tests.support import ROOT, test_database_url

    get_user_model().objects.create_superuser("ops@example.com", "ops@example.com", "a-long-password")
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "project.settings", "DATABASE_URL": test_database_url(),
           "REDIS_URL": settings.REDIS_URL, "ADMIN_CORS": f"{ADMIN},https://second.example"}
    done = subprocess.run([sys.executable, "-c", ADMIN_LOGIN, ADMIN, "https://second.example", STORE, "https://evil.example"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    answers = json.loads(done.stdout.strip().splitlines()[-1])
    # 302: logged in, to /admin/; 403: refused by the CSRF check (the origin is not trusted)
    assert answers == {ADMIN: 302, "https://second.example": 302, STORE: 403, "https://evil.example": 403}
