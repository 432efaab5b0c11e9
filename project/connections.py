"""The forms of REDIS_URL, read in one place for the Celery broker (kombu) and every redis-py client.

`redis://[[user]:password@]host:port/db` and `unix://PATH` are plain Redis; `rediss://...` is Redis
over TLS. redis-py (Django's cache, the metrics, the beat lock) verifies the server's certificate
unless `?ssl_cert_reqs=none|optional` says otherwise; kombu, given a bare `rediss://`, would not
verify at all. `broker_ssl` gives Celery's `broker_use_ssl` the same choice as redis-py, with
`ssl_ca_certs`, `ssl_certfile` and `ssl_keyfile` from the query too. PostgreSQL's TLS is
dj-database-url's: `?sslmode=require` (or `verify-full` with `sslrootcert=...`) lands in the
connection's OPTIONS as libpq reads it.

`sentinel://` is Redis behind Redis Sentinel, the form kombu reads, one address per sentinel:

    sentinel://[[user]:password@]host:port[/db];sentinel://host:port[/db]...?master_name=NAME

The password (and user) are the Redis master's and the `/db` the database, written on any one of
the addresses (kombu reads them from the first, so `broker_url` writes them on every one); the
query, on any address, names the master (`master_name`, required) and, when the sentinels
themselves ask for a password, `sentinel_password` (and `sentinel_username`). Every client asks
the sentinels for the current master and asks again after a failover: the broker through kombu's
`sentinel` transport (`broker_transport_options`: master_name, sentinel_kwargs), every redis-py
client through `redis_client` / `SentinelPool` (Django's cache takes the pool as its
`pool_class`).

kombu's transport names (`redis`, `rediss`, `sentinel`) resolve to project/broker.py's subclasses
of kombu's, whose channel leaves Redis alone once its connection was closed: a failover must not
end a worker on kombu#582 (project/celery.py installs them).
"""
from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import redis
from redis.sentinel import Sentinel, SentinelConnectionPool

CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}
FILES = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")

SENTINEL_SCHEME = "sentinel"
SENTINEL_PORT = 26379  # Sentinel's own default port (kombu's too)
#: The query options of the sentinel:// form.
SENTINEL_OPTIONS = ("master_name", "sentinel_password", "sentinel_username")
#: A sentinel that does not answer in this time is skipped for the next (redis-py asks each in turn).
SENTINEL_TIMEOUT = 2.0


def _fail(message: str) -> None:
    from project import env

    env.fail(f"REDIS_URL: {message}")


def broker_ssl(redis_url: str) -> dict | None:
    """Celery's `broker_use_ssl` for a `rediss://` URL (None for plain `redis://`, sockets and Sentinel)."""
    parts = urlsplit(redis_url)
    if parts.scheme != "rediss":
        return None
    query = {name: values[-1] for name, values in parse_qs(parts.query).items()}
    reqs = query.get("ssl_cert_reqs", "required").lower().removeprefix("cert_")
    if reqs not in CERT_REQS:
        _fail(f"ssl_cert_reqs={reqs!r} must be none, optional or required")
    return {"ssl_cert_reqs": CERT_REQS[reqs], **{name: query[name] for name in FILES if name in query}}


# --- Redis Sentinel ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SentinelURL:
    """A `sentinel://` REDIS_URL, read: where the sentinels are, and what to ask them for."""

    sentinels: tuple[tuple[str, int], ...]
    master_name: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_username: str | None = None
    sentinel_password: str | None = None

    def sentinel_kwargs(self) -> dict[str, Any]:
        """redis-py's `sentinel_kwargs`: how to talk to the sentinels themselves."""
        kwargs: dict[str, Any] = {"socket_timeout": SENTINEL_TIMEOUT, "socket_connect_timeout": SENTINEL_TIMEOUT}
        if self.sentinel_username:
            kwargs["username"] = self.sentinel_username
        if self.sentinel_password:
            kwargs["password"] = self.sentinel_password
        return kwargs

    def master_kwargs(self) -> dict[str, Any]:
        """redis-py's connection arguments for the master: its database and credentials."""
        kwargs: dict[str, Any] = {"db": self.db}
        if self.username:
            kwargs["username"] = self.username
        if self.password:
            kwargs["password"] = self.password
        return kwargs


def is_sentinel(url: str) -> bool:
    """Whether REDIS_URL is the `sentinel://` form."""
    return url.partition("://")[0].strip().lower() == SENTINEL_SCHEME


def _one(found: dict[str, str], name: str, value: str, what: str) -> None:
    """Record `value` for `name`, refusing a different value given on another address."""
    if name in found and found[name] != value:
        _fail(f"the sentinel:// addresses give different {what}s: write it once")
    found[name] = value


def parse_sentinel(url: str) -> SentinelURL:
    """Read a `sentinel://` REDIS_URL (see the module's docstring); a malformed one stops start-up
    with a one-line message naming REDIS_URL (never the password)."""
    sentinels: list[tuple[str, int]] = []
    found: dict[str, str] = {}
    options: dict[str, str] = {}
    for number, address in enumerate(url.split(";"), start=1):
        address = address.strip()
        if not address:
            continue
        parts = urlsplit(address)
        if parts.scheme.lower() != SENTINEL_SCHEME:
            _fail(f"address {number} of the sentinel:// form does not start with sentinel:// (separate sentinels with ';')")
        try:
            host, port = parts.hostname, parts.port or SENTINEL_PORT
        except ValueError:
            _fail(f"address {number} of the sentinel:// form has an invalid port (sentinel://HOST:PORT)")
        if not host:
            _fail(f"address {number} of the sentinel:// form names no host (sentinel://HOST:PORT)")
        sentinels.append((unquote(host), port))
        if parts.username:
            _one(found, "username", unquote(parts.username), "user")
        if parts.password:
            _one(found, "password", unquote(parts.password), "password")
        path = parts.path.strip("/")
        if path:
            if not path.isdigit():
                _fail(f"the database of the sentinel:// form must be a number (sentinel://HOST:PORT/0), not {path!r}")
            _one(found, "db", str(int(path)), "database")
        for name, values in parse_qs(parts.query, keep_blank_values=True).items():
            if name not in SENTINEL_OPTIONS:
                _fail(f"unknown option {name!r} in the sentinel:// form (known: {', '.join(SENTINEL_OPTIONS)})")
            for value in values:
                _one(options, name, value, name)
    if not sentinels:
        _fail("the sentinel:// form names no sentinel (sentinel://HOST:PORT;sentinel://HOST:PORT?master_name=NAME)")
    master_name = options.get("master_name", "").strip()
    if not master_name:
        _fail("the sentinel:// form needs the master's name: add ?master_name=NAME "
              "(the NAME of `sentinel monitor NAME HOST PORT QUORUM` in the sentinels' configuration)")
    return SentinelURL(
        sentinels=tuple(sentinels),
        master_name=master_name,
        db=int(found.get("db", 0)),
        username=found.get("username"),
        password=found.get("password"),
        sentinel_username=options.get("sentinel_username") or None,
        sentinel_password=options.get("sentinel_password") or None,
    )


# --- The broker (kombu) -----------------------------------------------------------------------------


def broker_url(redis_url: str) -> str:
    """Celery's `broker_url` for REDIS_URL, as kombu reads it.

    kombu names a Unix socket `redis+socket://PATH` (redis-py: `unix://PATH`). For Sentinel,
    kombu reads the password and database from the first address only, and takes the next address
    after a failed connection: every address carries them here, and the query goes to
    `broker_transport_options` (kombu would refuse `?master_name=` in the URL)."""
    if redis_url.startswith("unix://"):
        return "redis+socket://" + redis_url[len("unix://") :]
    if not is_sentinel(redis_url):
        return redis_url
    parsed = parse_sentinel(redis_url)
    auth = ""
    if parsed.username or parsed.password:
        auth = quote(parsed.username or "", safe="") + (":" + quote(parsed.password, safe="") if parsed.password else "") + "@"
    return ";".join(
        f"sentinel://{auth}{'[' + host + ']' if ':' in host else host}:{port}/{parsed.db}" for host, port in parsed.sentinels
    )


def broker_transport_options(redis_url: str) -> dict[str, Any]:
    """What kombu's `sentinel` transport needs besides the URL (nothing for the other forms)."""
    if not is_sentinel(redis_url):
        return {}
    parsed = parse_sentinel(redis_url)
    return {"master_name": parsed.master_name, "sentinel_kwargs": parsed.sentinel_kwargs()}


# --- redis-py clients -------------------------------------------------------------------------------


class SentinelPool(SentinelConnectionPool):
    """A redis-py connection pool to the master the sentinels name, asked again on every new
    connection (so after a failover). `from_url` makes it a `pool_class` for Django's RedisCache."""

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> SentinelPool:
        parsed = parse_sentinel(url)
        manager = Sentinel(list(parsed.sentinels), sentinel_kwargs=parsed.sentinel_kwargs())
        return cls(parsed.master_name, manager, **{**parsed.master_kwargs(), **kwargs})


def redis_client(url: str, **kwargs: Any) -> redis.Redis:
    """A redis-py client for REDIS_URL in any of its forms; `kwargs` are redis-py's (timeouts...)."""
    if is_sentinel(url):
        return redis.Redis(connection_pool=SentinelPool.from_url(url, **kwargs))
    return redis.Redis.from_url(url, **kwargs)


def cache_settings(redis_url: str) -> dict[str, Any]:
    """Django's `CACHES["default"]`: its built-in Redis backend, through the sentinels for
    `sentinel://` (one location, not split at the ';', and `SentinelPool` for its pool)."""
    backend = "django.core.cache.backends.redis.RedisCache"
    if is_sentinel(redis_url):
        parse_sentinel(redis_url)  # a malformed URL stops start-up here, not at the first cache call
        return {"BACKEND": backend, "LOCATION": [redis_url], "OPTIONS": {"pool_class": "project.connections.SentinelPool"}}
    return {"BACKEND": backend, "LOCATION": redis_url}
