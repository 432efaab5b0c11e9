"""Login lockouts on a real `manage.py start` server (gunicorn, uvicorn's worker class), not only
through Django's test client: the address a lockout counts is the one project.logins.client_ip
reads, never one a client writes in X-Forwarded-For (uvicorn, left to itself, believes that header
from a loopback peer and would hand Django the client's own choice as REMOTE_ADDR)."""
from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
from django.contrib.auth import get_user_model

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True, databases="__all__")]

PASSWORD = "right-password-1"


def _login(url: str, email: str, password: str, forwarded_for: str) -> int:
    request = urllib.request.Request(
        url, data=json.dumps({"email": email, "password": password}).encode(), method="POST",
        headers={"Content-Type": "application/json", "X-Forwarded-For": forwarded_for},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_a_client_writing_its_own_x_forwarded_for_is_still_locked_out_without_trusted_proxies(live):
    # given a server with no trusted proxy (TRUSTED_PROXY_HOPS unset) and an account
    server = live.start("--no-beat", mode="server", name="logins")
    email = "locked@example.com"
    get_user_model().objects.create_user(username=email, email=email, password=PASSWORD)
    url = server.url("/auth/token")

    # when one client fails ten logins, each claiming another address in X-Forwarded-For
    statuses = [_login(url, email, f"wrong-{n}", f"198.51.100.{n}") for n in range(10)]

    # then the tenth is refused as a lockout, and so is the right password from that client
    assert statuses == [401] * 9 + [429], statuses
    assert _login(url, email, PASSWORD, "198.51.100.77") == 429
