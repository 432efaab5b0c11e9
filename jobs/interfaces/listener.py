"""Waiting for ends inside an HTTP server process: ONE PostgreSQL connection listens for all.

`jobs/engine/waiting.py` gives each sync caller (`jobs.wait` in a worker or a script) a connection of
its own. A server cannot afford that: every open `?wait=` would hold a connection (and, under
sync workers, the worker itself). Here each event loop (one per ASGI server process) has one
`Hub`: one autocommit psycopg connection (the direct one: DATABASE_DIRECT_URL, project/pooler.py) that

- LISTENs on both channels (`store.JOB_ENDED`, `store.CHAIN_ENDED`) from the moment it opens;
- holds the waiters' shared advisory locks (`store.waiter_key`): once per key however many
  requests wait for that row (session advisory locks stack per connection, so the hub counts its
  waiters per key and takes and releases the lock itself once), which is what makes the ending
  statement NOTIFY;
- reads each new waiter's row once after its lock is held (it may have ended before: the end
  of a row either committed before the lock was taken, then it is seen, or finds the lock held
  and notifies, then it is heard: the LISTEN was on before either);
- hands each notification to the futures of the requests waiting for that id.

Taking a key's lock never blocks the connection: `pg_try_advisory_lock_shared` fails only while
an ending transaction holds the key (until its commit, a moment); the waiter retries shortly.

One connection is used by coroutines one at a time (`_command`); between commands a reader task
sits in psycopg's `notifies()`, cancelled (it holds the connection's lock) when a command comes.
Notifications that arrive during a command wait in psycopg's backlog for the next `notifies()`.

A lost connection wakes every waiter with `WaitUnavailable` (the view answers 503); the next
wait opens a new one. `close()` (server shutdown) answers every open wait at once: a draining
server does not hold its waiters to their deadline.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections import defaultdict
from typing import Any, Awaitable, Callable, TypeVar

import psycopg
from project import pooler

from jobs.engine import store
from jobs.models import Chain, Job

log = logging.getLogger(__name__)
T = TypeVar("T")

#: How long a waiter sleeps before trying a key again that an ending transaction holds.
RETRY_LOCK_SECONDS = 0.01

JOB = (store.JOB_ENDED, "SELECT status IN ('succeeded', 'dead', 'cancelled') FROM jobs_job WHERE id = %s", "job")
CHAIN = (store.CHAIN_ENDED, "SELECT status <> 'running' FROM jobs_chain WHERE id = %s", "chain")

#: True in a server process (project/asgi.py): the hub keeps its connection while idle. Elsewhere
#: (Django's test client, runserver: a new event loop per request) it closes when its last
#: waiter leaves.
KEEP_OPEN = False


class WaitUnavailable(RuntimeError):
    """The hub's connection to PostgreSQL failed or the server is shutting down mid-wait."""


class Watch:
    """A wait for a row's end (`Hub.watch`): its slot among the waiters, its advisory lock key,
    `heard` (the answer), whether the hold was taken, whether it is over."""

    __slots__ = ("slot", "key", "heard", "held", "over")

    def __init__(self, slot: tuple[str, str], key: int, heard: asyncio.Future[bool]) -> None:
        self.slot, self.key, self.heard = slot, key, heard
        self.held = self.over = False


class Hub:
    def __init__(self, keep_open: bool) -> None:
        self.keep_open = keep_open
        self.conn: psycopg.AsyncConnection | None = None
        self.waiters: dict[tuple[str, str], set[asyncio.Future[bool]]] = defaultdict(set)
        self.holds: dict[int, int] = {}  # key -> waiters holding it through this connection
        self.commanding = asyncio.Lock()
        self.pending = 0
        self.reader: asyncio.Task[None] | None = None
        self.closing = False

    # --- what a waiter calls --------------------------------------------------------------------

    async def ended(self, kind: tuple[str, str, str], row_id: int, timeout: float) -> bool:
        """Whether the row ended within `timeout` seconds; raises the model's DoesNotExist for an
        unknown id, `WaitUnavailable` when the listening connection failed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        watch = await self.watch(kind, row_id, deadline)
        if watch is None:  # a draining server, or the hold not taken by the deadline
            return False
        try:
            # At the deadline `heard` is answered False (a timer, not `wait_for(shield(heard))`,
            # whose objects every open wait kept: bench.streams, issue 27). Nothing else needs
            # `heard` shielded: whoever answers it checks `done()` first.
            timer = loop.call_at(deadline, _answer, watch.heard, False)
            try:
                return await watch.heard
            finally:
                timer.cancel()
        finally:
            release = self.unwatch(watch)
            if release is not None and not self.keep_open:  # this loop may end with the request: finish here
                await release

    async def watch(self, kind: tuple[str, str, str], row_id: int, deadline: float) -> Watch | None:
        """Begin to wait for the row's end: its waiter registered, the hold taken and the row read.
        The watch's `heard` is answered True when the end is heard (at once if the row has ended
        already), or fails with `WaitUnavailable` when the connection does; `unwatch` ends it (the
        caller's to call). None: a draining server, or the hold not taken by `deadline` (the loop's
        clock: an end still committing). Raises as `ended`.

        What `ended` waits with, and what an open stream holds instead of a task parked in `ended`
        for its whole life (a future and its callback: jobs/interfaces/streams.py)."""
        channel, check, what = kind
        if self.closing:  # a draining server answers at once
            return None
        loop = asyncio.get_running_loop()
        key = store.waiter_key(what, row_id)
        watch = Watch((channel, str(row_id)), key, loop.create_future())
        self.waiters[watch.slot].add(watch.heard)  # before the lock and the read: nothing said after is missed
        try:
            while not (held := await self._command(lambda pg: self._hold(pg, key))):
                if self.closing or loop.time() >= deadline:
                    self.unwatch(watch)
                    return None
                await asyncio.sleep(min(RETRY_LOCK_SECONDS, max(0.0, deadline - loop.time())))
            watch.held = held
            row = await self._command(lambda pg: _fetch(pg, check, row_id))
            if row is None:
                model = Job if what == "job" else Chain
                raise model.DoesNotExist(f"{what} {row_id} does not exist (or is not committed yet)")
            if row[0]:
                _answer(watch.heard, True)
            return watch
        except BaseException:
            release = self.unwatch(watch)
            if release is not None and not self.keep_open:
                await release
            raise

    def unwatch(self, watch: Watch) -> asyncio.Task[None] | None:
        """End a watch (again: nothing): out of the waiters, its hold given back by the task
        returned (None: nothing held). Where this loop may end with the request (not keep_open),
        the caller awaits it."""
        if watch.over:
            return None
        watch.over = True
        heard = watch.heard
        waiting = self.waiters.get(watch.slot)
        if waiting is not None:
            waiting.discard(heard)
            if not waiting:
                del self.waiters[watch.slot]
        if heard.done() and not heard.cancelled():
            heard.exception()  # (retrieved: a failure it carries was answered already)
        if watch.held:
            # A task: a cancelled request (its client went away) still gives its hold back.
            release = asyncio.get_running_loop().create_task(self._quietly(lambda pg: self._release(pg, watch.key)))
            return release
        return None

    async def read(self, sql: str, params: Any) -> list[tuple[Any, ...]]:
        """Run one read on the listening connection (the streams' batched polls,
        jobs/interfaces/streams.py: one statement per tick for every open stream of the process)."""
        if self.closing:
            raise WaitUnavailable("the server is shutting down")
        return await self._command(lambda pg: _fetchall(pg, sql, params))

    def close(self) -> None:
        """Answer every open wait now (as at its timeout) and refuse to wait from now on."""
        self.closing = True
        for futures in list(self.waiters.values()):
            for future in futures:
                if not future.done():
                    future.set_result(False)

    async def aclose(self) -> None:
        """`close`, then close the connection once the releases under way are done."""
        self.close()
        while self.pending:
            await asyncio.sleep(0.01)
        async with self.commanding:
            if self.reader is not None:
                self.reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self.reader
                self.reader = None
            if self.conn is not None:
                conn, self.conn = self.conn, None
                await conn.close()

    # --- the connection -------------------------------------------------------------------------

    async def _command(self, run: Callable[[psycopg.AsyncConnection], Awaitable[T]]) -> T:
        """Run `run` on the connection (opened on demand), alone, the reader stopped meanwhile."""
        self.pending += 1
        if self.reader is not None:
            self.reader.cancel()
        try:
            async with self.commanding:
                if self.reader is not None:
                    with contextlib.suppress(asyncio.CancelledError):
                        await self.reader
                    self.reader = None
                try:
                    if self.conn is None or self.conn.closed:
                        if self.closing and not self.waiters:
                            raise WaitUnavailable("the server is shutting down")
                        self.conn = await self._connect()
                    return await run(self.conn)
                except psycopg.OperationalError as exc:
                    self._lost(exc)
                    raise WaitUnavailable("the connection waiting for ends failed") from exc
        finally:
            self.pending -= 1
            if self.pending == 0:
                await self._after_commands()

    async def _quietly(self, run: Callable[[psycopg.AsyncConnection], Awaitable[None]]) -> None:
        """A release: a lost connection released everything already."""
        with contextlib.suppress(WaitUnavailable):
            await self._command(run)

    async def _after_commands(self) -> None:
        if self.conn is None or self.conn.closed:
            return
        if not self.keep_open and not self.waiters and not self.holds:
            await self._close_idle()
            return
        self.reader = asyncio.get_running_loop().create_task(self._read(self.conn))

    async def _close_idle(self) -> None:
        async with self.commanding:
            if self.conn is not None and not self.waiters and not self.holds and self.pending == 0:
                conn, self.conn = self.conn, None
                await conn.close()

    async def _connect(self) -> psycopg.AsyncConnection:
        # The direct connection (DATABASE_DIRECT_URL: PostgreSQL itself, not a transaction-mode
        # pooler, which would hand LISTEN and the session locks to another client: project/pooler.py).
        params = pooler.params(pooler.DIRECT)
        name = params.get("application_name") or "conveyor"
        params["application_name"] = f"{name}-listen"[:63]
        conn = await psycopg.AsyncConnection.connect(**params, autocommit=True)
        await conn.execute(f"LISTEN {store.JOB_ENDED}")
        await conn.execute(f"LISTEN {store.CHAIN_ENDED}")
        self.holds.clear()  # a new session holds nothing
        return conn

    async def _read(self, conn: psycopg.AsyncConnection) -> None:
        try:
            async for note in conn.notifies():
                # Every waited row's end of the deployment is heard here: wake its waiters only.
                for future in self.waiters.get((note.channel, note.payload), ()):
                    if not future.done():
                        future.set_result(True)
        except asyncio.CancelledError:
            raise
        except psycopg.OperationalError as exc:
            self._lost(exc)
        except Exception:
            log.exception("the wait listener's reader failed")
            self._lost(None)

    def _lost(self, exc: BaseException | None) -> None:
        """The session is gone (and every lock with it): fail every open wait."""
        log.warning("the connection waiting for ends failed: %s", exc)
        conn, self.conn = self.conn, None
        self.holds.clear()
        if conn is not None and not conn.closed:
            asyncio.get_running_loop().create_task(conn.close())
        for futures in list(self.waiters.values()):
            for future in futures:
                if not future.done():
                    future.set_exception(WaitUnavailable("the connection waiting for ends failed"))

    async def _hold(self, pg: psycopg.AsyncConnection, key: int) -> bool:
        if key in self.holds:
            self.holds[key] += 1
            return True
        row = await (await pg.execute("SELECT pg_try_advisory_lock_shared(%s)", [key])).fetchone()
        if row and row[0]:
            self.holds[key] = 1
            return True
        return False

    async def _release(self, pg: psycopg.AsyncConnection, key: int) -> None:
        count = self.holds.get(key)
        if count is None:  # the session was lost meanwhile: nothing is held
            return
        if count > 1:
            self.holds[key] = count - 1
            return
        del self.holds[key]
        await pg.execute("SELECT pg_advisory_unlock_shared(%s)", [key])


async def _fetch(pg: psycopg.AsyncConnection, check: str, row_id: int) -> Any:
    return await (await pg.execute(check, [row_id])).fetchone()


async def _fetchall(pg: psycopg.AsyncConnection, sql: str, params: Any) -> list[tuple[Any, ...]]:
    return await (await pg.execute(sql, params)).fetchall()


_hubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Hub] = weakref.WeakKeyDictionary()


def hub() -> Hub:
    """The running event loop's hub (one per server process: one loop)."""
    loop = asyncio.get_running_loop()
    found = _hubs.get(loop)
    if found is None:
        found = _hubs[loop] = Hub(keep_open=KEEP_OPEN)
    return found


def close_all() -> None:
    """Answer every open wait of this process now (a draining server)."""
    for each in list(_hubs.values()):
        each.close()


async def aclose() -> None:
    """Close the running loop's hub, if it has one (a server process's lifespan shutdown)."""
    found = _hubs.get(asyncio.get_running_loop())
    if found is not None:
        await found.aclose()


def _answer(future: asyncio.Future[bool], value: bool) -> None:
    """A wait's answer, unless it has one (heard, failed or cancelled)."""
    if not future.done():
        future.set_result(value)
