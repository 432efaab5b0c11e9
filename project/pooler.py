"""A transaction-mode pooler (PgBouncer) in front of PostgreSQL: which connection does what, and
the check that refuses a misconfiguration at start.

A pooler in transaction mode hands each transaction to whichever server connection is free: what
a session keeps between transactions (LISTEN, a session advisory lock, a SET, a prepared
statement, a cursor WITH HOLD) is on a server connection the client no longer has. So:

- through DATABASE_URL (the pooler): enqueue, claims, heartbeats, outcomes, reads, the pages; each
  is one transaction, and their advisory locks are transaction-scoped (`pg_advisory_xact_lock`);
- through the "direct" alias (DATABASE_DIRECT_URL, PostgreSQL itself; DATABASE_URL when unset):
  the HTTP servers' listening connection (jobs/interfaces/listener.py: LISTEN and the waiters'
  shared session locks), a Python-side wait (jobs/engine/waiting.py), the release step's lock
  (project/release.py) and the migrations (`manage.py migrate` and `release`).

`manage.py start` and `release` observe DATABASE_URL (`observe`: two clients, a few statements)
and refuse, exit 2, a transaction-mode pooler there without DATABASE_DIRECT_URL, a
DATABASE_DIRECT_URL that is one too, and DATABASE_PREPARED=true through a pooler that loses
prepared statements (`refusal`, pure).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

DIRECT = "direct"
#: Django's connection parameters that are for its own connections (adapters, cursor class, pool).
DJANGO_ONLY = ("context", "cursor_factory", "prepare_threshold", "pool")
PID_SQL = "SELECT pg_backend_pid()"


def params(alias: str = DIRECT) -> dict[str, Any]:
    """psycopg's keyword arguments for a connection of its own to `alias` (by default the direct
    one, for what needs a session): Django's settings, less what only Django's connections use."""
    from django.db import connections

    found = dict(connections[alias].get_connection_params())
    for name in DJANGO_ONLY:
        found.pop(name, None)
    found.setdefault("connect_timeout", 10)
    return found


def databases(
    databases: dict[str, dict[str, Any]], direct: dict[str, Any], pooled: bool, claims: dict[str, Any] | None = None,
) -> dict[str, dict[str, Any]]:
    """Django's DATABASES with the "direct" alias (`direct`: DATABASE_DIRECT_URL's settings, or
    DATABASE_URL's when unset) and, when a pooler may be in front (`pooled`: DATABASE_DIRECT_URL
    set), the pooled aliases made safe for transaction pooling; `claims`: DATABASE_CLAIMS_URL's
    settings (where the claims connect instead of DATABASE_URL: a pooler's database entry whose
    server connections commit asynchronously), when set."""
    result = {alias: {**settings, "OPTIONS": dict(settings.get("OPTIONS", {}))} for alias, settings in databases.items()}
    if claims is not None and "claims" in result:
        where = {key: claims[key] for key in ("NAME", "USER", "PASSWORD", "HOST", "PORT") if key in claims}
        result["claims"] = {**result["claims"], **where, "OPTIONS": {**result["claims"]["OPTIONS"], **claims.get("OPTIONS", {})}}
    options = dict(direct.get("OPTIONS", {}))
    if "application_name" in result["default"]["OPTIONS"]:  # an ASGI server names its connections
        options["application_name"] = result["default"]["OPTIONS"]["application_name"]
    # In tests, the same test database (a test may point it elsewhere).
    result[DIRECT] = {**direct, "OPTIONS": options, "TEST": {"MIRROR": "default"}}
    if pooled:
        for alias in ("default", "claims"):
            if alias in result:
                # A server-side cursor (`.iterator()`) is declared WITH HOLD outside a transaction:
                # it outlives its transaction, whose server connection is meanwhile another client's.
                result[alias]["DISABLE_SERVER_SIDE_CURSORS"] = True
                # A startup parameter `options` (the claims' synchronous_commit=off) is refused by
                # PgBouncer before 1.20 (Debian 12 has 1.18), and later ones take only the settings
                # they track: through the pooler, claims commit durably, like outcomes, unless
                # DATABASE_CLAIMS_URL names a database entry of the pooler whose `connect_query`
                # sets synchronous_commit = off (docs/deployment.md).
                result[alias]["OPTIONS"].pop("options", None)
    return result


@dataclass(frozen=True)
class Observation:
    """What two clients of one URL saw: `first`, `second` and `during` are one client's backend
    pids for three statements in a row (the third while the other client held a transaction),
    `other` the other client's pid inside that transaction. `prepared_kept`: whether a statement
    the first client prepared still ran once it was on another backend (None: not tried, or it
    never moved)."""

    first: int
    second: int
    during: int
    other: int
    prepared_kept: bool | None = None

    @property
    def pooled(self) -> bool:
        """A session of PostgreSQL keeps its backend (one pid) and no other session shares it
        while it lives. Through a transaction-mode pooler, the client's pid changes between its
        statements (round-robin), or the other client's transaction is given the backend the first
        one just released (the default, most recently used first), or both. Never true of a
        direct connection or a session-mode pool; missed only when other clients of the pooler
        take the released backend between these statements (the next start sees it)."""
        return not (self.first == self.second == self.during and self.other != self.first)


def refusal(url: Observation | None, direct: Observation | None, direct_set: bool, prepared: bool) -> str | None:
    """What is wrong, in one line naming the setting, or None. `url`, `direct`: the observations of
    DATABASE_URL and DATABASE_DIRECT_URL (None: not observed, e.g. unreachable)."""
    if url is not None and url.pooled and not direct_set:
        return (
            "DATABASE_URL goes through a pooler in transaction mode (one connection's statements ran on "
            f"PostgreSQL backends {url.first}, {url.second}, {url.during}; another's on {url.other}): set "
            "DATABASE_DIRECT_URL to PostgreSQL itself, for what needs a session (waits, streams, "
            "advisory locks, migrations), or use a session-mode pool"
        )
    if direct is not None and direct.pooled:
        return (
            "DATABASE_DIRECT_URL goes through a pooler in transaction mode: it must name PostgreSQL "
            "itself (or a session-mode pool), not the pooler"
        )
    if url is not None and url.pooled and prepared and url.prepared_kept is False:
        return (
            "DATABASE_PREPARED=true, but the pooler at DATABASE_URL loses prepared statements (a statement "
            "prepared on one backend was unknown on the next: PgBouncer before 1.21, or "
            "max_prepared_statements = 0): set DATABASE_PREPARED=false"
        )
    return None


def observe(connect: dict[str, Any], try_prepared: bool = False) -> Observation:
    """Observe the server behind `connect` (psycopg's keyword arguments) with two clients."""
    import psycopg

    def pid(conn: psycopg.Connection, prepare: bool | None = None) -> int:
        return int(conn.execute(PID_SQL, prepare=prepare).fetchone()[0])

    with psycopg.connect(**connect, autocommit=True) as a, psycopg.connect(**connect, autocommit=True) as b:
        first, second = pid(a), pid(a)
        with b.transaction():
            other = pid(b)
            during = pid(a)
        seen = Observation(first, second, during, other)
        if try_prepared and seen.pooled:
            seen = Observation(first, second, during, other, _prepared_kept(a, b, pid))
    return seen


def _prepared_kept(a: Any, b: Any, pid: Any) -> bool | None:
    """`a` prepares a statement on its backend; `b` takes a backend in a transaction (the same one,
    most often: it was just released); `a` runs the statement again, now elsewhere: unknown there
    unless the pooler prepares it again (PgBouncer 1.21+ with max_prepared_statements)."""
    import psycopg

    try:
        for _ in range(3):
            prepared_on = pid(a, prepare=True)
            with b.transaction():
                if pid(b) == prepared_on:
                    pid(a, prepare=True)  # elsewhere, for sure
                    return True
            # `b` was handed another backend: `a` may run on its own again; nothing learnt yet
    except (psycopg.errors.InvalidSqlStatementName, psycopg.errors.DuplicatePreparedStatement):
        # Unknown on the other backend; or already there: prepared by another client under the
        # same name (psycopg names them _pg3_0, _pg3_1... per connection), a worse mix-up.
        return False
    finally:
        # Most likely back on the backend it prepared on (the last one released): leave nothing
        # prepared there for the next client (best effort: a pooler that loses them may miss it).
        with contextlib.suppress(psycopg.Error):
            a.execute("DEALLOCATE ALL")
    return None


def check(url_connect: dict[str, Any], direct_connect: dict[str, Any] | None, prepared: bool) -> str | None:
    """Observe DATABASE_URL (and DATABASE_DIRECT_URL when set) and say what is wrong, or None.
    A server that does not answer is not refused here (`start` checks migrations the same way)."""
    import psycopg

    try:
        url = observe(url_connect, try_prepared=prepared)
    except psycopg.Error:
        return None
    direct = None
    if direct_connect is not None:
        try:
            direct = observe(direct_connect)
        except psycopg.Error:
            direct = None
    return refusal(url, direct, direct_connect is not None, prepared)


def refuse_misconfigured() -> None:
    """Exit 2 (`env.fail`, a one-line message naming the setting) when the database settings do not
    fit the pooler in front: `manage.py start` and `release` call it before anything else."""
    from django.conf import settings

    from project import env

    direct = params(DIRECT) if settings.DATABASE_DIRECT_URL else None
    message = check(params("default"), direct, settings.DATABASE_PREPARED)
    if message:
        env.fail(message)
