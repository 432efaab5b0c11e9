"""project.logins.client_ip: the address failed logins are counted by. Behind N trusted proxies
that each append to X-Forwarded-For, the N-th entry from the right; never an entry the client
wrote itself."""
from __future__ import annotations

import pytest
from django.test import RequestFactory

from project.logins import client_ip


def _request(forwarded: str | None, remote: str = "10.0.0.2"):
    extra = {"REMOTE_ADDR": remote}
    if forwarded is not None:
        extra["HTTP_X_FORWARDED_FOR"] = forwarded
    return RequestFactory().post("/auth/token", **extra)


@pytest.mark.parametrize(
    ("hops", "forwarded", "expected"),
    [
        (0, "203.0.113.7", "10.0.0.2"),  # no trusted proxy: the header is the client's, ignored
        (1, "203.0.113.7", "203.0.113.7"),
        (1, "192.0.2.1, 203.0.113.7", "203.0.113.7"),  # the client's own entry, left of the proxy's
        (1, "192.0.2.1,203.0.113.7 ", "203.0.113.7"),
        (2, "192.0.2.1, 203.0.113.7, 10.0.0.9", "203.0.113.7"),  # CDN then load balancer
        (1, "2001:DB8::1", "2001:db8::1"),
        (2, "203.0.113.7", "10.0.0.2"),  # fewer entries than proxies: not through them all
        (1, None, "10.0.0.2"),
        (1, "", "10.0.0.2"),
        (1, "192.0.2.1, not-an-address", "10.0.0.2"),
    ],
)
def test_client_ip_trusts_only_the_entries_of_the_trusted_proxies(settings, hops, forwarded, expected):
    settings.TRUSTED_PROXY_HOPS = hops
    assert client_ip(_request(forwarded)) == expected
