"""REDIS_URL in kombu's `sentinel://` form (issue 15), read once in project/connections.py: the
sentinels, the master's name, its database and password, the sentinels' own password; the broker
URL and transport options kombu gets, the pool Django's cache gets, and a malformed URL stopping
start-up with one line naming REDIS_URL. Nothing connects here (tests/acceptance/test_sentinel.py
runs real sentinels)."""
from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from urllib.parse import quote

import kombu
import pytest

from project import connections
from project.env import ConfigError
from tests.support import MANAGE, ROOT

PASSWORD = "p@ss:w/rd#%?&= 'é"  # every character a URL must escape


def test_several_sentinels_the_master_name_and_the_defaults():
    got = connections.parse_sentinel("sentinel://10.0.0.1:26379;sentinel://10.0.0.2:26380;sentinel://redis-c?master_name=mymaster")
    assert got.sentinels == (("10.0.0.1", 26379), ("10.0.0.2", 26380), ("redis-c", 26379))  # Sentinel's port by default
    assert (got.master_name, got.db, got.username, got.password) == ("mymaster", 0, None, None)
    assert (got.sentinel_username, got.sentinel_password) == (None, None)


def test_the_issues_example_password_on_the_first_database_and_query_on_the_last():
    got = connections.parse_sentinel("sentinel://:password@10.0.0.1:26379;sentinel://10.0.0.2:26379/0?master_name=mymaster")
    assert got.sentinels == (("10.0.0.1", 26379), ("10.0.0.2", 26379))
    assert (got.master_name, got.db, got.password) == ("mymaster", 0, "password")


def test_user_password_database_and_the_sentinels_own_password_escaped():
    url = (f"sentinel://app:{quote(PASSWORD, safe='')}@s1.example.com:26379/5;sentinel://s2.example.com:26379/5"
           f"?master_name=cache-primary&sentinel_password={quote('sent pw&1', safe='')}&sentinel_username=watcher")
    got = connections.parse_sentinel(url)
    assert (got.username, got.password, got.db, got.master_name) == ("app", PASSWORD, 5, "cache-primary")
    assert (got.sentinel_username, got.sentinel_password) == ("watcher", "sent pw&1")
    assert got.master_kwargs() == {"db": 5, "username": "app", "password": PASSWORD}
    assert got.sentinel_kwargs() == {"socket_timeout": connections.SENTINEL_TIMEOUT, "socket_connect_timeout": connections.SENTINEL_TIMEOUT,
                                     "username": "watcher", "password": "sent pw&1"}


def test_ipv6_sentinels():
    got = connections.parse_sentinel("sentinel://[::1]:26379;sentinel://[fe80::2]:26380?master_name=m")
    assert got.sentinels == (("::1", 26379), ("fe80::2", 26380))
    assert connections.broker_url("sentinel://[::1]:26379?master_name=m") == "sentinel://[::1]:26379/0"


def test_is_sentinel_tells_the_forms_apart():
    assert connections.is_sentinel("sentinel://h:26379?master_name=m")
    assert connections.is_sentinel("SENTINEL://h:26379?master_name=m")
    for url in ("redis://h:6379/0", "rediss://h:6380/0", "unix:///tmp/redis.sock"):
        assert not connections.is_sentinel(url)


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("sentinel://10.0.0.1:26379;sentinel://10.0.0.2:26379/0", "master_name"),
        ("sentinel://10.0.0.1:26379?master_name=", "master_name"),
        ("sentinel://10.0.0.1:26379/0?master=mymaster", "unknown option 'master'"),
        ("sentinel://10.0.0.1:26379/x?master_name=m", "database"),
        ("sentinel://10.0.0.1:26379/1;sentinel://10.0.0.2:26379/2?master_name=m", "different databases"),
        ("sentinel://:a@10.0.0.1:26379;sentinel://:b@10.0.0.2:26379?master_name=m", "different passwords"),
        ("sentinel://10.0.0.1:26379?master_name=a;sentinel://10.0.0.2:26379?master_name=b", "different master_names"),
        ("sentinel://10.0.0.1:26379;redis://10.0.0.2:6379?master_name=m", "address 2"),
        ("sentinel://10.0.0.1:port?master_name=m", "invalid port"),
        ("sentinel://:pw@/0?master_name=m", "no host"),
        ("sentinel://", "no host"),
    ],
)
def test_a_malformed_sentinel_url_is_a_configuration_error_naming_redis_url(url, words, capsys):
    with pytest.raises(ConfigError) as caught:
        connections.parse_sentinel(url)
    message = str(caught.value)
    assert message.startswith("REDIS_URL: ") and words in message, message
    assert caught.value.code == 2
    assert capsys.readouterr().err.strip() == f"conveyor: configuration error: {message}"


def test_the_password_never_appears_in_an_error():
    with pytest.raises(ConfigError) as caught:
        connections.parse_sentinel(f"sentinel://:{quote(PASSWORD, safe='')}@10.0.0.1:26379/zz?master_name=m")
    assert "p@ss" not in str(caught.value) and quote(PASSWORD, safe="") not in str(caught.value)


def test_kombu_gets_every_sentinel_with_the_password_and_database_and_the_rest_as_transport_options():
    url = f"sentinel://:{quote(PASSWORD, safe='')}@10.0.0.1:26379;sentinel://10.0.0.2:26380/3?master_name=mymaster&sentinel_password=s3"
    broker = connections.broker_url(url)
    options = connections.broker_transport_options(url)
    assert options == {"master_name": "mymaster",
                       "sentinel_kwargs": {"socket_timeout": connections.SENTINEL_TIMEOUT,
                                           "socket_connect_timeout": connections.SENTINEL_TIMEOUT, "password": "s3"}}
    # kombu reads the password and database of the first address, and switches to the next one
    # after a failed connection: each of them says the same, and none carries the query
    conn = kombu.Connection(broker, transport_options=options)
    assert (conn.transport_cls, conn.hostname, conn.port, conn.password, conn.virtual_host) == (
        "sentinel", "10.0.0.1", 26379, PASSWORD, "3")
    assert len(conn.alt) == 2
    for alternate in conn.alt:
        switched = kombu.Connection(alternate)
        assert (switched.transport_cls, switched.password, switched.virtual_host) == ("sentinel", PASSWORD, "3")
    assert [kombu.Connection(a).hostname for a in conn.alt] == ["10.0.0.1", "10.0.0.2"]


def test_the_other_forms_are_unchanged():
    assert connections.broker_url("redis://:p@h:6379/2") == "redis://:p@h:6379/2"
    assert connections.broker_url("unix:///tmp/r.sock") == "redis+socket:///tmp/r.sock"
    assert connections.broker_transport_options("redis://h:6379/0") == {}
    assert connections.cache_settings("unix:///tmp/r.sock") == {
        "BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": "unix:///tmp/r.sock"}
    assert connections.redis_client("redis://:p@h:6379/2").connection_pool.connection_kwargs["db"] == 2


def test_redis_py_clients_ask_the_sentinels_for_the_master():
    url = "sentinel://:pw@10.0.0.1:26379;sentinel://10.0.0.2:26380/4?master_name=mymaster&sentinel_password=s3"
    client = connections.redis_client(url, socket_timeout=1.0)
    pool = client.connection_pool
    assert isinstance(pool, connections.SentinelPool)
    assert pool.service_name == "mymaster"
    assert (pool.connection_kwargs["db"], pool.connection_kwargs["password"], pool.connection_kwargs["socket_timeout"]) == (4, "pw", 1.0)
    sentinels = [s.connection_pool.connection_kwargs for s in pool.sentinel_manager.sentinels]
    assert [(s["host"], s["port"], s.get("password")) for s in sentinels] == [("10.0.0.1", 26379, "s3"), ("10.0.0.2", 26380, "s3")]
    # Django's cache: one location (not split at the ';'), SentinelPool as its pool class
    cache = connections.cache_settings(url)
    assert cache["LOCATION"] == [url] and cache["OPTIONS"] == {"pool_class": "project.connections.SentinelPool"}


# --- The settings, read in a process of their own (they are read once per process) ----------------

PROBE = """
import json, django
django.setup()
from django.conf import settings
from django.core.cache import cache
from project.celery import app
conn = app.connection_for_write()
pool = cache._cache._get_connection_pool(write=True)
print("SETTINGS", json.dumps({
    "broker_url": settings.CELERY_BROKER_URL, "options": app.conf.broker_transport_options,
    "kombu": [conn.transport_cls, conn.hostname, conn.port, conn.password, conn.virtual_host, conn.alt],
    "pool": [type(pool).__name__, pool.service_name, pool.connection_kwargs["db"], pool.connection_kwargs.get("password")],
    "sentinels": [[s.connection_pool.connection_kwargs["host"], s.connection_pool.connection_kwargs["port"]]
                  for s in pool.sentinel_manager.sentinels],
}, default=str))
"""


def production_env(redis_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONVEYOR_", "DATABASE_", "REDIS_", "DJANGO_"))}
    env.update(CONVEYOR_ENV="production", COOKIE_SECRET=secrets.token_urlsafe(48), JWT_SECRET=secrets.token_urlsafe(48),
               ALLOWED_HOSTS="example.com", DJANGO_SETTINGS_MODULE="project.settings",
               DATABASE_URL="postgresql://u:p@127.0.0.1:1/app", REDIS_URL=redis_url)
    return env


def test_the_settings_send_the_broker_and_the_cache_through_the_sentinels():
    url = "sentinel://:secret@10.0.0.1:26379;sentinel://10.0.0.2:26380/2?master_name=mymaster"
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=production_env(url), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("SETTINGS "))[len("SETTINGS "):])
    assert got["broker_url"] == "sentinel://:secret@10.0.0.1:26379/2;sentinel://:secret@10.0.0.2:26380/2"
    assert got["options"]["master_name"] == "mymaster"
    assert got["options"]["visibility_timeout"] == 3600 and got["options"]["sep"] == ":"  # Conveyor's own options kept
    assert got["kombu"] == ["sentinel", "10.0.0.1", 26379, "secret", "2",
                            ["sentinel://:secret@10.0.0.1:26379/2", "sentinel://:secret@10.0.0.2:26380/2"]]
    assert got["pool"] == ["SentinelPool", "mymaster", 2, "secret"]
    assert got["sentinels"] == [["10.0.0.1", 26379], ["10.0.0.2", 26380]]


@pytest.mark.parametrize("command", [["check"], ["start", "--port", "1"]])
def test_a_sentinel_url_without_master_name_stops_start_up_with_one_line(command):
    env = production_env("sentinel://:secret@10.0.0.1:26379;sentinel://10.0.0.2:26379/0")
    done = subprocess.run([sys.executable, MANAGE, *command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("conveyor: configuration error: REDIS_URL:") and "master_name" in lines[0]
    assert "Traceback" not in done.stderr and "secret" not in done.stderr
