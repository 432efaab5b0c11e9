"""A transaction-mode pooler told from PostgreSQL itself (project/pooler.py), against a real
PgBouncer (Debian's, tests/pgbouncer.py) in front of the test database; and what needs a session
(a Python-side wait, the release lock) takes the direct connection.

Each PgBouncer starts in a tenth of a second; the observations take a few milliseconds."""
from __future__ import annotations

import psycopg
import pytest
from django.db import connection, connections

import jobs
from jobs.models import Job
from project import pooler, release
from tests import pgbouncer

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")


@pytest.fixture(scope="module")
def bouncers(django_db_setup):  # the test database first
    """PgBouncer in transaction mode and in session mode, in front of the test database."""
    database = connections["default"].settings_dict
    started = [pgbouncer.start(database), pgbouncer.start(database, mode="session")]
    yield {"transaction": started[0], "session": started[1]}
    for bouncer in started:
        bouncer.stop()


def test_pgbouncer_in_transaction_mode_is_seen_pooled_and_postgres_or_a_session_pool_is_not(bouncers):
    # when each is observed by two clients
    direct = pooler.observe(pooler.params("default"))
    session = pooler.observe(bouncers["session"].params())
    pooled = pooler.observe(bouncers["transaction"].params())

    # then only the transaction pool hands one client's statements to other backends
    assert not direct.pooled, direct
    assert not session.pooled, session
    assert pooled.pooled, pooled
    # ... and it was PgBouncer that served them
    assert bouncers["transaction"].stats()["total_xact_count"] >= 4


def test_a_pooler_that_loses_prepared_statements_is_caught(bouncers):
    # given Debian 12's PgBouncer (1.18: no protocol-level prepared statements)
    # when a statement prepared on one backend is run again from another
    seen = pooler.observe(bouncers["transaction"].params(), try_prepared=True)

    # then it was unknown there
    assert seen.prepared_kept is False, seen


def test_the_check_refuses_each_misconfiguration_naming_its_setting(bouncers):
    postgres, pooled = pooler.params("default"), bouncers["transaction"].params()

    # a transaction pooler at DATABASE_URL, no DATABASE_DIRECT_URL
    message = pooler.check(pooled, None, prepared=False)
    assert message and "DATABASE_URL goes through a pooler in transaction mode" in message and "set DATABASE_DIRECT_URL" in message
    # DATABASE_DIRECT_URL naming the pooler too
    message = pooler.check(pooled, pooled, prepared=False)
    assert message and message.startswith("DATABASE_DIRECT_URL goes through a pooler")
    # prepared statements through a pooler that loses them
    message = pooler.check(pooled, postgres, prepared=True)
    assert message and "set DATABASE_PREPARED=false" in message
    # and the right settings, or PostgreSQL itself, or an unreachable server, pass
    assert pooler.check(pooled, postgres, prepared=False) is None
    assert pooler.check(postgres, None, prepared=True) is None
    assert pooler.check(bouncers["session"].params(), None, prepared=True) is None
    assert pooler.check({**postgres, "host": "127.0.0.1", "port": 1, "connect_timeout": 2}, None, prepared=True) is None


@pytest.fixture
def direct_unreachable():
    """The direct alias pointed at a port nobody listens on, for one test."""
    conn = connections[pooler.DIRECT]
    saved = conn.settings_dict
    conn.settings_dict = {**saved, "HOST": "127.0.0.1", "PORT": "1", "OPTIONS": {**saved.get("OPTIONS", {}), "connect_timeout": 2}}
    yield
    conn.close()
    conn.settings_dict = saved


@pytest.mark.usefixtures("direct_unreachable")
def test_a_python_wait_and_the_release_lock_use_the_direct_connection():
    # given a job (through the default connection, which still works)
    job = Job.objects.create(type="examples.echo", queue="default", input={})

    # then waiting for it, and taking the release lock, go to the direct alias, here unreachable
    with pytest.raises(psycopg.OperationalError, match="port 1"):
        jobs.wait(job, 1)
    with pytest.raises(Exception, match="port 1"):
        with release.lock(on_wait=lambda: None):
            pass
    assert connection.cursor()  # the default one was never in question


def test_the_claims_entry_of_the_pooler_commits_asynchronously(bouncers):
    """DATABASE_CLAIMS_URL's recipe (docs/deployment.md): a PgBouncer database entry whose
    connect_query sets synchronous_commit = off on its server connections; the main entry's keep
    the server's default. Each statement here may run on another server connection of its pool."""
    bouncer = bouncers["transaction"]
    for entry, expected in (("_claims", "off"), ("", "on")):
        with psycopg.connect(**bouncer.params(dbname=bouncer.name + entry), autocommit=True) as conn:
            assert [conn.execute("SHOW synchronous_commit").fetchone()[0] for _ in range(3)] == [expected] * 3
