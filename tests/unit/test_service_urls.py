"""The TLS and password forms of DATABASE_URL and REDIS_URL, as production's settings read them:
Django's DATABASES (both aliases), the Redis cache, and the Celery broker kombu connects with.
Each configuration is read in a new process (the settings are read once per process); nothing
connects, so no server is needed."""
from __future__ import annotations

import secrets
import json
import os
import ssl
import subprocess
import sys
from urllib.parse import quote

import pytest

from tests.support import ROOT

PASSWORD = "p@ss:w/rd#%?&= 'é"  # every character a URL must escape
PROBE = """
import json, django
django.setup()
from django.conf import settings
from project.celery import app
conn = app.connection_for_write()
transport = conn.transport
params = transport.default_connection_params
print("SETTINGS", json.dumps({
    "default": settings.DATABASES["default"], "claims": settings.DATABASES["claims"],
    "cache": settings.CACHES["default"], "broker_url": settings.CELERY_BROKER_URL,
    "broker_use_ssl": settings.CELERY_BROKER_USE_SSL,
    "kombu": {"transport": conn.transport_cls, "ssl": conn.ssl, "password": conn.password, "host": conn.hostname,
              "port": conn.port, "db": conn.virtual_host},
}, default=str))
"""


def read_settings(**variables: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONVEYOR_", "DATABASE_", "REDIS_", "DJANGO_"))}
    env.update(
        CONVEYOR_ENV="production",
        COOKIE_SECRET=secrets.token_urlsafe(48),
        JWT_SECRET=secrets.token_urlsafe(48),
        ALLOWED_HOSTS="example.com",
        DJANGO_SETTINGS_MODULE="project.settings",
        **variables,
    )
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(line for line in done.stdout.splitlines() if line.startswith("SETTINGS "))
    return json.loads(line[len("SETTINGS "):])


def test_tls_and_special_character_passwords_reach_django_and_celery():
    database = f"postgresql://conveyor:{quote(PASSWORD, safe='')}@db.example.com:6543/app?sslmode=verify-full&sslrootcert=/etc/ca.pem"
    redis = f"rediss://:{quote(PASSWORD, safe='')}@redis.example.com:6380/2?ssl_cert_reqs=required&ssl_ca_certs=/etc/ca.pem"
    got = read_settings(DATABASE_URL=database, REDIS_URL=redis)

    # PostgreSQL: the password decoded, TLS as libpq reads it, on both aliases
    for alias in ("default", "claims"):
        db = got[alias]
        assert (db["USER"], db["PASSWORD"], db["HOST"], db["PORT"], db["NAME"]) == ("conveyor", PASSWORD, "db.example.com", 6543, "app")
        assert db["OPTIONS"]["sslmode"] == "verify-full" and db["OPTIONS"]["sslrootcert"] == "/etc/ca.pem", db
    assert got["claims"]["OPTIONS"]["options"] == "-c synchronous_commit=off"

    # Redis for the cache: redis-py reads the URL itself (TLS, the password, certificate checks)
    assert got["cache"]["LOCATION"] == redis
    import redis as redis_py

    kwargs = redis_py.ConnectionPool.from_url(got["cache"]["LOCATION"]).connection_kwargs
    assert (kwargs["password"], kwargs["host"], kwargs["port"], kwargs["db"]) == (PASSWORD, "redis.example.com", 6380, 2)
    assert redis_py.ConnectionPool.from_url(redis).connection_class is redis_py.SSLConnection
    assert kwargs["ssl_cert_reqs"] == "required"

    # the broker: kombu takes rediss:// with the password decoded and verifies the certificate
    assert got["broker_use_ssl"] == {"ssl_cert_reqs": int(ssl.CERT_REQUIRED), "ssl_ca_certs": "/etc/ca.pem"}
    kombu = got["kombu"]
    assert (kombu["transport"], kombu["password"], kombu["host"], kombu["port"], kombu["db"]) == (
        "rediss", PASSWORD, "redis.example.com", 6380, "2")
    assert kombu["ssl"] == {"ssl_cert_reqs": int(ssl.CERT_REQUIRED), "ssl_ca_certs": "/etc/ca.pem"}


@pytest.mark.parametrize(("query", "expected"), [("", ssl.CERT_REQUIRED), ("?ssl_cert_reqs=none", ssl.CERT_NONE),
                                                  ("?ssl_cert_reqs=optional", ssl.CERT_OPTIONAL)])
def test_a_bare_rediss_url_verifies_the_certificate_unless_told_otherwise(query, expected):
    got = read_settings(DATABASE_URL="postgresql://u:p@db.example.com/app?sslmode=require",
                        REDIS_URL=f"rediss://default:secret@redis.example.com:6380/0{query}")
    assert got["broker_use_ssl"] == {"ssl_cert_reqs": int(expected)}
    assert got["kombu"]["ssl"] == {"ssl_cert_reqs": int(expected)}
    assert got["default"]["OPTIONS"]["sslmode"] == "require"


def test_plain_urls_use_no_tls():
    got = read_settings(DATABASE_URL="postgresql://u:p@127.0.0.1:5432/app", REDIS_URL="redis://:p%40ss@127.0.0.1:6379/0")
    assert got["broker_use_ssl"] is None and not got["kombu"]["ssl"]
    assert got["kombu"]["password"] == "p@ss"
    assert "sslmode" not in got["default"]["OPTIONS"]
