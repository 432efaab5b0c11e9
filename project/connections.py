"""The TLS forms of REDIS_URL, for the Celery broker (kombu) as redis-py reads them for the cache.

`rediss://[:password@]host:port/db` is Redis over TLS. redis-py (Django's cache, the metrics, the
beat lock) verifies the server's certificate unless `?ssl_cert_reqs=none|optional` says otherwise;
kombu, given a bare `rediss://`, would not verify at all. `broker_ssl` gives Celery's
`broker_use_ssl` the same choice as redis-py, with `ssl_ca_certs`, `ssl_certfile` and
`ssl_keyfile` from the query too. PostgreSQL's TLS is dj-database-url's: `?sslmode=require`
(or `verify-full` with `sslrootcert=...`) lands in the connection's OPTIONS as libpq reads it.
"""
from __future__ import annotations

import ssl
from urllib.parse import parse_qs, urlsplit

CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}
FILES = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")


def broker_ssl(redis_url: str) -> dict | None:
    """Celery's `broker_use_ssl` for a `rediss://` URL (None for plain `redis://` and sockets)."""
    parts = urlsplit(redis_url)
    if parts.scheme != "rediss":
        return None
    query = {name: values[-1] for name, values in parse_qs(parts.query).items()}
    reqs = query.get("ssl_cert_reqs", "required").lower().removeprefix("cert_")
    if reqs not in CERT_REQS:
        from project import env

        env.fail(f"REDIS_URL: ssl_cert_reqs={reqs!r} must be none, optional or required")
    return {"ssl_cert_reqs": CERT_REQS[reqs], **{name: query[name] for name in FILES if name in query}}
