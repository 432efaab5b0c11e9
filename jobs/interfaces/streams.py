"""Live streams of a job, a chain or an event (Server-Sent Events), on the process's one listening
connection: thousands of open streams, no PostgreSQL connection of their own.

A stream sends the row's whole state (jobs/interfaces/sse.py: snapshots, ids that are their digest,
`Last-Event-ID` resumption) when it changes, until it ends. Each event loop (one per ASGI server
process) has one `Watcher`, which learns of changes two ways, both on the hub's connection
(jobs/interfaces/listener.py):

- every `TICK` seconds, ONE statement per kind reads the watched rows of the process that can
  have changed (`unnest` of the ids and of the digests last seen): PostgreSQL computes those rows'
  digest (of the fields every visible change alters) and builds and sends their state only where
  the digest differs. Read in full: the rows where something runs (a running or failed job, a
  chain with one: progress may change any moment), the rows whose end was heard, and in turn a
  tenth of the quiet ones (`SWEEP_TICKS`: each every 5 s). The other quiet rows (waiting jobs, a
  chain between steps) go in as ids only, and the kind's `moved` finds on an index those that
  started running (a claim) or, for a chain, had a job written: so 1,000 streams of waiting jobs
  cost one index read of the running rows and ~100 digests per tick, not 1,000. Running,
  progress, a failed attempt, a retry, a reap and a claim show within a tick; a change no index
  tells (a waiting job held by a limit, a deletion) within a sweep. Nothing is added to the
  statements of a job's path (no NOTIFY per claim or progress: a NOTIFY serializes the commits
  of every transaction that sends one);
- the end of a job or a chain is heard at once: the watcher waits for it as a `?wait=` does
  (`Hub.ended`: the waiter's shared advisory lock makes the ending statement NOTIFY), then reads
  that row at once instead of at the next tick.

Streams end with the row (`end` event), at `MAX_SECONDS` less up to a tenth at random (the client
reconnects with its `Last-Event-ID`; streams opened together do not all reconnect at once), when
the server drains (`close_all`), or when the listening connection fails (the client reconnects; a
new connection is opened). A comment every `HEARTBEAT_SECONDS` keeps
proxies from closing an idle stream.
"""
from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import hashlib
import heapq
import itertools
import logging
import random
import weakref
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable, Iterable, NamedTuple

from asgiref.sync import SyncToAsync, sync_to_async
from django.conf import settings
from django.db import close_old_connections
from django.http import Http404, HttpRequest, HttpResponse
from ninja import Query
from ninja.errors import HttpError

from api.auth import STREAM_READS
from project.asgi_handler import DetachedStreamingResponse, release_connections
from api.schemas import errors
from jobs.interfaces import listener, sse

log = logging.getLogger(__name__)

#: Seconds between two reads of every watched row (CONVEYOR_STREAM_TICK_SECONDS).
TICK = float(settings.CONVEYOR["STREAM_TICK_SECONDS"])
#: Seconds between two keep-alive comments on a stream that has nothing to say.
HEARTBEAT_SECONDS = float(settings.CONVEYOR["STREAM_HEARTBEAT_SECONDS"])
#: The longest a stream stays open; the client reconnects with its Last-Event-ID.
MAX_SECONDS = float(settings.CONVEYOR["STREAM_MAX_SECONDS"])
#: Keep-alives and ends are sent within this many seconds of their time (a quarter of the
#: heartbeat's period at most): the watcher looks for those due at most 4 times a second.
BEAT_RESOLUTION = 0.25
#: A quiet row (nothing of it runs) is read in full once every this many ticks (5 s by default),
#: whatever its kind's `moved` says: the changes no index tells (a hold, a deletion) show then.
SWEEP_TICKS = 10
#: Streams open at once per bearer token in one server process; one more is refused with 429.
PER_TOKEN = int(settings.CONVEYOR["STREAMS_PER_TOKEN"])

#: The query parameter a browser's EventSource authenticates with (api.auth.STREAM_READS reads it).
ACCESS_TOKEN = Query(
    # No NUL, as the OpenAPI document says of every string (api.validation.STORABLE): one given
    # beside an Authorization header was ignored, not refused (schemathesis' ST201).
    None, max_length=4096, pattern=r"^[^\x00]*$",
    description="The bearer, for a client that cannot send an Authorization header (a browser's EventSource): "
    "better a short-lived JWT (POST /auth/token, scope jobs:read), as a URL may be logged.",
)

#: The context a watch's callback runs in (none of the stream's: a callback copies the running
#: context otherwise, one object more per open stream).
_QUIET = contextvars.Context()

_open: Counter[str] = Counter()  # by the bearer's digest; touched on the event loop only

# Each kind's statement, in two parts: `fingerprint`, a SELECT of (id, fp, ended) for the rows of
# `w` (the watched ids with the digest last seen of each) that exist, `fp` a text that every change a
# client can see alters (the row's status, attempt, progress, updated_at, ...); and `state`, a
# scalar subquery building the row's state (jsonb) for `s.id`, run only for the rows whose
# digest changed. Measured here: a tick over 500 jobs 3.8 ms this way, 19 ms digesting the
# whole state of each row. Only the changed rows come back, and the gone ones (digest NULL): with
# 1,000 streams, 1,000 unchanged rows a tick turned into Python tuples on the event loop held
# up the requests of the process (bench.streams: p99 1.4x with the streams, 1.05x with a tick 4x
# rarer); now a tick's answer is its changes.
#
# `w` is the rows read in full (`ids`, `known`) and, of the quiet rows (`cold`, `cold_known`: rows
# where nothing runs, Watcher._plan), those `moved` names: a SELECT of the ids among `cold` that
# may have changed, found by an index on what changes them (a claim makes a job `running`), not
# by reading each. Without `moved` a kind has no quiet rows: every row is read every tick.
def poll(fingerprint: str, state: str, moved: str | None = None) -> str:
    woke = f"c.id IN ({moved})" if moved else "false"
    return f"""
WITH c AS (SELECT * FROM unnest(%(cold)s::bigint[], %(cold_known)s::text[]) AS c(id, known)),
     w AS MATERIALIZED (SELECT * FROM unnest(%(ids)s::bigint[], %(known)s::text[]) AS w(id, known)
                        UNION ALL SELECT c.id, c.known FROM c WHERE {woke}),
     s AS MATERIALIZED ({fingerprint})
SELECT s.id, d.digest, s.ended, ({state})
  FROM s JOIN w USING (id), LATERAL (SELECT left(md5(COALESCE(s.fp, '')), 16) AS digest) d
 WHERE d.digest IS DISTINCT FROM w.known
UNION ALL
SELECT w.id, NULL, NULL, NULL FROM w WHERE NOT EXISTS (SELECT 1 FROM s WHERE s.id = w.id)
"""


FINISHED = "('succeeded', 'dead', 'cancelled')"

# A job: every statement that changes what a client sees changes its status, attempt, progress,
# hold, cancel, run_after or worker, and stamps updated_at (its errors and output change with its
# status).
JOB_STATE_SQL = poll(f"""
SELECT j.id, concat_ws('|', j.status, j.attempt, j.progress, j.progress_message, j.held, j.cancel_requested,
                       j.run_after, j.worker, j.finished_at, j.updated_at) AS fp,
       j.status IN {FINISHED} AS ended
  FROM jobs_job j WHERE j.id IN (SELECT id FROM w)""", """
SELECT jsonb_build_object(
         'id', j.id, 'type', j.type, 'queue', j.queue, 'status', j.status, 'attempt', j.attempt,
         'max_attempts', j.max_attempts, 'progress', j.progress, 'progress_message', j.progress_message,
         'held', j.held, 'cancel_requested', j.cancel_requested, 'run_after', j.run_after,
         'started_at', j.started_at, 'finished_at', j.finished_at, 'worker', j.worker,
         'error', j.error, 'errors', COALESCE(j.errors, '[]'::jsonb), 'output', j.output,
         'chain', j.chain_id, 'chain_index', j.chain_index, 'member', j.member)
  FROM jobs_job j WHERE j.id = s.id""",
# A quiet job (pending, or held) changes by its claim (it runs: `running`, or at once `failed`),
# by its end (heard at once: Watcher._hear_end), or rarely otherwise (a hold, a deletion: the
# sweep). Both statuses are on job_status_idx: this reads the running and failed rows among the
# quiet ones, not each quiet row.
"""SELECT j.id FROM jobs_job j WHERE j.status IN ('running', 'failed') AND j.id = ANY(%(cold)s::bigint[])""")

# A chain: its status, the number of steps planned, every job made so far in order (no outputs:
# a group's may be many), and once it succeeded the output of its last job. A step added by a
# handler (continue_with, fan_out) comes with its job.
CHAIN_STATE_SQL = poll("""
SELECT c.id, concat_ws('|', c.status, c.finished_at,
         (SELECT string_agg(concat_ws(':', j.id, j.status, j.attempt, j.progress, j.updated_at), ',' ORDER BY j.id)
            FROM jobs_job j WHERE j.chain_id = c.id)) AS fp,
       c.status <> 'running' AS ended
  FROM jobs_chain c WHERE c.id IN (SELECT id FROM w)""", """
SELECT jsonb_build_object(
         'id', c.id, 'status', c.status, 'finished_at', c.finished_at, 'steps', jsonb_array_length(c.steps),
         'jobs', COALESCE((SELECT jsonb_agg(jsonb_build_object(
                    'id', j.id, 'index', j.chain_index, 'member', j.member, 'type', j.type, 'status', j.status,
                    'attempt', j.attempt, 'progress', j.progress, 'progress_message', j.progress_message,
                    'error', j.error) ORDER BY j.chain_index, j.member NULLS FIRST, j.id)
                  FROM jobs_job j WHERE j.chain_id = c.id), '[]'::jsonb),
         'output', CASE WHEN c.status = 'succeeded' THEN
                     (SELECT j.output FROM jobs_job j WHERE j.chain_id = c.id
                       ORDER BY j.chain_index DESC, j.member DESC NULLS LAST, j.id DESC LIMIT 1) END)
  FROM jobs_chain c WHERE c.id = s.id""",
# A quiet chain (no job of it running) changes when one of its jobs does: one runs, or one was
# written since the last ticks (a step that ran whole between two ticks, a step added), on the
# chain's index of jobs.
"""SELECT j.chain_id FROM jobs_job j WHERE j.chain_id = ANY(%(cold)s::bigint[])
      AND (j.status IN ('running', 'failed') OR j.updated_at > now() - make_interval(secs => %(recent)s))""")


# The operations page's signal (one row, id 0): what a refresh of the page would show changed.
# Jobs enqueued (the newest id), chains started, and every running job's attempt, progress and
# hold (claims, progress, ends, failed attempts, reaps: the running set changes); all on indexes,
# bounded by the running jobs. What it misses (a waiting job cancelled, a dead one retried
# elsewhere) the page's slow refresh still shows (jobs/static/jobs/operations.js).
_OPERATIONS = """jsonb_build_object(
         'jobs', (SELECT max(id) FROM jobs_job), 'chains', (SELECT max(id) FROM jobs_chain),
         'running', (SELECT count(*) FROM jobs_job WHERE status = 'running'),
         'runs', (SELECT md5(COALESCE(string_agg(concat_ws(':', id, attempt, progress, held), ',' ORDER BY id), ''))
                    FROM jobs_job WHERE status = 'running'))"""
OPERATIONS_STATE_SQL = poll(f"""
SELECT w.id, {_OPERATIONS}::text AS fp, false AS ended FROM w WHERE w.id = 0""", f"SELECT {_OPERATIONS}")


@dataclass(frozen=True, eq=False)
class Kind:
    """What a stream follows: its name ("job"), its poll statement (`poll`), and the
    listener's kind whose end is heard at once (None: the ticks alone tell).

    Compared and hashed by identity (one per module): a kind is half of every key of the watcher's
    dicts, looked up several times per stream per tick, and a dataclass's own hash builds and
    hashes the tuple of its fields each time (0.67 ms a tick's plan over 1,000 streams, 0.2 ms so)."""

    name: str
    sql: str
    ends: tuple[str, str, str] | None = None
    #: Whether a snapshot is of a row where something runs (read every tick), else quiet (its
    #: statement's `moved` says when to read it); None: every row is read every tick.
    active: Callable[[dict[str, Any]], bool] | None = None


RUNS = ("running", "failed")  # a failed attempt runs again (at run_after): as likely to change


def _job_active(state: dict[str, Any]) -> bool:
    return state.get("status") in RUNS


def _chain_active(state: dict[str, Any]) -> bool:
    return any(job.get("status") in RUNS for job in state.get("jobs", ()))


JOB = Kind("job", JOB_STATE_SQL, listener.JOB, _job_active)
CHAIN = Kind("chain", CHAIN_STATE_SQL, listener.CHAIN, _chain_active)
OPERATIONS = Kind("operations", OPERATIONS_STATE_SQL)


class Snapshot(NamedTuple):
    digest: str
    state: dict[str, Any]
    ended: bool
    active: bool = True  # something runs (Kind.active): read every tick


def int_array(values: Iterable[int]) -> str:
    """PostgreSQL's text form of a bigint[] (`{1,2,3}`), the statement casting it.

    Why not the list itself: psycopg adapts a list in Python, item by item (its `ListDumper`):
    a tick's ~500 ids and ~500 digests per server process took 0.65 ms of the event loop twice a
    second (1 ms under load), the larger part of a tick's time on the loop; joined here, ~0.05 ms
    (bench.streams, issue 27). (`int()` first: what is not a number raises, nothing else is sent.)"""
    return "{" + ",".join([str(int(value)) for value in values]) + "}"


def text_array(values: Iterable[str | None]) -> str:
    """PostgreSQL's text form of a text[], each element quoted (a digest is hex, but any text is
    sent as itself: `\\` and `"` escaped), None as NULL."""
    return "{" + ",".join([
        "NULL" if value is None else '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"' for value in values
    ]) + "}"


class Plan(NamedTuple):
    """One kind's read: the ids read in full with the digest last seen of each, and the quiet ids
    with theirs."""

    ids: list[int]
    known: list[str | None]
    cold: list[int]
    cold_known: list[str | None]


@dataclass(eq=False)
class Follower:
    """One open stream: the digest it sent last, when it owes its client a keep-alive comment
    (`beat_at`) and when it closes (`until`), both on the loop's clock; `wake` when its row's
    snapshot changed, a comment or its end is due, or it must stop (`lost`: the row was deleted or
    the connection failed).

    Why a bare future and not `wait_for(event.wait(), HEARTBEAT_SECONDS)`: an idle stream's wait
    then allocates one object, not a task, two coroutines, a future, a timer and a context copy
    every heartbeat, objects that live long enough to reach the collector's oldest generation. With
    1,000 streams those promotions brought a full collection (~70 ms, every request in flight
    waiting) every few seconds (bench.streams, issue 27). The watcher's tick wakes whoever is due."""

    key: tuple[Kind, int]
    sent: str
    beat_at: float
    until: float
    waiter: asyncio.Future[None] | None = None
    woken: bool = False  # woken while not waiting (sending): the next wait returns at once
    lost: bool = False

    def wake(self) -> None:
        self.woken = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def wait(self) -> None:
        if not self.woken:
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        self.woken = False


class Watcher:
    """The streams of one event loop: who follows which row, the latest snapshot of each, one poll
    task while any stream is open.

    A tick reads in full only the rows that can have changed (`_plan`): those where something runs
    (their progress may change any moment), those whose end was heard or whose snapshot is in
    doubt (`dirty`), the quiet ones their kind's `moved` finds changed (a claim), and a tenth of the
    quiet ones in turn (`sweep_at`). With 1,000 streams of waiting jobs a tick is one index read of
    the running rows, not 1,000 digests (bench.streams, issue 27)."""

    def __init__(self) -> None:
        self.followers: dict[tuple[Kind, int], set[Follower]] = defaultdict(set)
        self.latest: dict[tuple[Kind, int], Snapshot] = {}
        # each followed row's end: the task taking its hold, then the watch hearing it
        self.ends: dict[tuple[Kind, int], asyncio.Task[None] | listener.Watch] = {}
        self.dirty: set[tuple[Kind, int]] = set()  # read at once, in full
        self.sweep_at: dict[tuple[Kind, int], float] = {}  # a quiet row's next full read (the loop's clock)
        # (when, n, follower): at most when each follower owes a keep-alive or its end, soonest
        # first (`_wake_due` looks at the due ones only, not at every stream each time).
        self.beats: list[tuple[float, int, Follower]] = []
        self._order = itertools.count()
        self.poke = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.closing = False

    async def read(
        self, kind: Kind, ids: list[int], known: list[str | None],
        cold: list[int] | None = None, cold_known: list[str | None] | None = None,
    ) -> dict[int, Snapshot | None]:
        """The rows whose digest is not the one known, each with its snapshot, and the rows gone
        (None): of `ids`, and of `cold` those the kind's `moved` finds; the rest (unchanged) are not
        in it."""
        params = {"ids": int_array(ids), "known": text_array(known), "cold": int_array(cold or ()),
                  "cold_known": text_array(cold_known or ()), "recent": 2 * TICK + 1.0}
        rows = await listener.hub().read(kind.sql, params)
        return {row[0]: None if row[1] is None else self._snapshot(kind, row) for row in rows}

    @staticmethod
    def _snapshot(kind: Kind, row: tuple[Any, ...]) -> Snapshot:
        active = True if kind.active is None else kind.active(row[3])
        return Snapshot(row[1], row[3], row[2], active)

    async def first(self, kind: Kind, row_id: int) -> Snapshot | None:
        """The row's snapshot now (None: no such row)."""
        return (await self.read(kind, [row_id], [None])).get(row_id)

    def add(self, key: tuple[Kind, int], first: Snapshot, sent: str, until: float) -> Follower:
        """Follow the row from `first` (read by `first()`), until `until` (the loop's clock)."""
        loop = asyncio.get_running_loop()
        follower = Follower(key, sent, beat_at=loop.time() + HEARTBEAT_SECONDS, until=until)
        self.followers[key].add(follower)
        heapq.heappush(self.beats, (min(follower.beat_at, until), next(self._order), follower))
        known = self.latest.get(key)
        if known is None:
            self.latest[key] = first
            # Its turns in the sweep: rows added together (a page of streams) take different ticks.
            self.sweep_at[key] = loop.time() + random.random() * SWEEP_TICKS * TICK
        elif known.digest != first.digest:
            # Which of the two reads is newer is unknown: the next poll, at once, reads it again
            # (no digest known: the state comes back) and wakes each follower it differs for.
            del self.latest[key]
            self._dirty(key)
        kind, row_id = key
        if kind.ends is not None and key not in self.ends:
            self.ends[key] = loop.create_task(self._hear_end(kind, row_id))
        if self.task is None or self.task.done():
            self.task = loop.create_task(self._run())
        return follower

    def discard(self, follower: Follower) -> None:
        key = follower.key
        follower.lost = True  # (its entry in `beats` is dropped when due)
        self.followers[key].discard(follower)
        if not self.followers[key]:
            del self.followers[key]
            self.latest.pop(key, None)
            self.sweep_at.pop(key, None)
            self.dirty.discard(key)
            ending = self.ends.pop(key, None)
            if isinstance(ending, listener.Watch):
                listener.hub().unwatch(ending)  # (its hold given back)
            elif ending is not None:
                ending.cancel()  # still taking its hold: Hub.watch gives it back when cancelled

    def close(self) -> None:
        """A draining server: every stream ends now (its client reconnects elsewhere)."""
        self.closing = True
        for followers in self.followers.values():
            for each in followers:
                each.lost = True
                each.wake()
        self.poke.set()

    def _dirty(self, key: tuple[Kind, int]) -> None:
        """Read the row in full at once (not at the next tick)."""
        self.dirty.add(key)
        self.poke.set()

    async def _hear_end(self, kind: Kind, row_id: int) -> None:
        """Wait for the row's end as `?wait=` does, and read that row at once when it is heard.

        This task ends once the hold is taken and the row read (`Hub.watch`): what hears the end
        for the rest of the stream's life is the watch's future and a callback (`_heard`), not a
        task parked in `Hub.ended` (its task, coroutines, timer and contexts were ~10 objects per
        open stream for the collector to walk: bench.streams, issue 27)."""
        assert kind.ends is not None
        hub = listener.hub()
        key = (kind, row_id)
        loop = asyncio.get_running_loop()
        while key in self.followers and not (self.closing or hub.closing):
            try:
                watch = await hub.watch(kind.ends, row_id, loop.time() + MAX_SECONDS)
            except listener.WaitUnavailable:
                self._dirty(key)  # the poll finds the connection gone too, and ends the streams
                return
            except Exception:  # the row is gone (DoesNotExist): the poll says so
                self._dirty(key)
                return
            if watch is None:
                continue  # (the hold not taken in MAX_SECONDS: an end still committing; or draining)
            if self.ends.get(key) is not asyncio.current_task():  # the streams of the row ended meanwhile
                hub.unwatch(watch)
                return
            self.ends[key] = watch
            watch.heard.add_done_callback(functools.partial(self._heard, key, watch), context=_QUIET)
            return

    def _heard(self, key: tuple[Kind, int], watch: listener.Watch, _: object) -> None:
        """The row's end was heard (or the connection failed, or the watch ended): read it at once."""
        if watch.over:
            return  # (its streams ended: `discard` ended the watch)
        listener.hub().unwatch(watch)
        self._dirty(key)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        polled = loop.time()
        while self.followers and not self.closing:
            # Sleep to the next tick, or to the first keep-alive or end due before it (at most
            # 1 / BEAT_RESOLUTION wakes a second, whatever the number of streams).
            now = loop.time()
            due = max(self._wake_due(now), now + min(BEAT_RESOLUTION, HEARTBEAT_SECONDS / 4))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.poke.wait(), max(0.0, min(polled + TICK, due) - now))
            if not self.followers or self.closing:
                return
            tick = loop.time() >= polled + TICK
            if not (tick or self.poke.is_set()):
                continue  # woken for a keep-alive only
            self.poke.clear()
            if tick:
                polled = loop.time()
            try:
                await self._poll(tick)
            except listener.WaitUnavailable:
                self._lose_all()
            except Exception:
                log.exception("the streams' poll failed")
                self._lose_all()

    def _wake_due(self, now: float) -> float:
        """Wake the streams whose keep-alive comment or end is due; the loop time of the next one.

        Each follower has an entry in `beats` at or before its due time (a keep-alive moves it
        later: the entry is put back at the new time when it comes up), so this looks at the due
        entries only: with 1,000 streams, a scan of every one four times a second took 0.2 ms of
        the loop each time."""
        beats = self.beats
        while beats and beats[0][0] <= now:
            _, order, each = heapq.heappop(beats)
            if each.lost:
                continue  # gone: its stream ended
            due = min(each.beat_at, each.until)
            if due <= now:
                each.wake()
                # it sends its comment now (beat_at = now + HEARTBEAT_SECONDS) or ends
                due = min(now + HEARTBEAT_SECONDS, each.until)
                if due <= now:
                    continue  # its end is due: it closes
            heapq.heappush(beats, (due, order, each))
        return min(now + TICK, beats[0][0]) if beats else now + TICK

    def _plan(self, tick: bool, now: float) -> dict[Kind, Plan]:
        """What to read, per kind: the rows read in full and the quiet ones (their kind's `moved`
        finds those that changed). Between ticks (a poke) only the dirty rows."""
        plans: dict[Kind, Plan] = {}
        dirty, self.dirty = self.dirty, set()
        sweep = SWEEP_TICKS * TICK
        for key in self.followers:
            kind, row_id = key
            known = self.latest.get(key)
            if key in dirty or known is None:
                full = True
            elif not tick:
                continue
            elif known.active or kind.active is None:
                full = True
            elif self.sweep_at.get(key, 0.0) <= now:
                full = True
                self.sweep_at[key] = now + sweep
            else:
                full = False
            plan = plans.get(kind)
            if plan is None:
                plan = plans[kind] = Plan([], [], [], [])
            digest = None if known is None else known.digest
            if full:
                plan.ids.append(row_id)
                plan.known.append(digest)
            else:
                plan.cold.append(row_id)
                plan.cold_known.append(digest)
        return plans

    async def _poll(self, tick: bool = True) -> None:
        plans = self._plan(tick, asyncio.get_running_loop().time())
        for kind, plan in plans.items():
            rows = await self.read(kind, plan.ids, plan.known, plan.cold, plan.cold_known)
            for row_id, snapshot in rows.items():
                key = (kind, row_id)
                if key not in self.followers:  # (left while the read ran)
                    continue
                if snapshot is None:  # deleted (retention, a cancelled chain's cleanup): nothing more to say
                    self._lose(key)
                    continue
                self.latest[key] = snapshot
                for each in self.followers[key]:
                    each.wake()

    def _lose(self, key: tuple[Kind, int]) -> None:
        for each in self.followers.get(key, ()):
            each.lost = True
            each.wake()

    def _lose_all(self) -> None:
        for key in list(self.followers):
            self._lose(key)


_watchers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Watcher] = weakref.WeakKeyDictionary()


def watcher() -> Watcher:
    """The running event loop's watcher (one per server process: one loop)."""
    loop = asyncio.get_running_loop()
    found = _watchers.get(loop)
    if found is None:
        found = _watchers[loop] = Watcher()
    return found


def close_all() -> None:
    """End every open stream of this process now (a draining server)."""
    for each in list(_watchers.values()):
        each.close()


def open_streams() -> int:
    """Streams open in this process."""
    return sum(_open.values())


# --- the response -------------------------------------------------------------------------------


async def respond(request: HttpRequest, kind: Kind, row_id: int, who: str | None = None) -> HttpResponse:
    """The view's answer: 404 for no such row, 204 for an ended row whose last snapshot the client
    has (its Last-Event-ID), 429 over PER_TOKEN, else the stream. `who` is counted against
    PER_TOKEN (default: the bearer)."""
    credential = who or request.headers.get("Authorization") or request.GET.get("access_token", "")
    bearer = hashlib.sha256(credential.encode()).hexdigest()
    if _open[bearer] >= PER_TOKEN:
        raise HttpError(
            429, f"this token already has {PER_TOKEN} streams open on this server (CONVEYOR_STREAMS_PER_TOKEN): "
            "close one first"
        )
    if settings.ASGI_SERVER:
        # The request's thread (ninja ran the token check there) gives its connection back to the
        # pool now: a stream holds none. And its database wrapper goes with it, its cycle broken:
        # the thread is let go when the body starts (release_request_thread; under the servers'
        # handler, with the request's context before the body), and a wrapper left in its storage
        # would be cyclic garbage for the collector's full passes.
        await sync_to_async(_give_back_connections)()
    try:
        first = await watcher().first(kind, row_id)
    except listener.WaitUnavailable:
        raise HttpError(503, "streams are unavailable right now (the database connection failed): try again") from None
    if first is None:
        raise Http404(f"no {kind.name} {row_id}")
    last = request.headers.get("Last-Event-ID")
    decision = sse.resume(last, first.digest, first.ended)
    if decision is sse.Resume.DONE:
        return HttpResponse(status=204)
    # Detached (project/asgi_handler.py): once its headers are sent, the servers' handler ends the
    # request and sends the body alone; an open stream holds the body's objects, not the request's.
    response = DetachedStreamingResponse(
        _follow(bearer, (kind, row_id), first, decision is sse.Resume.SEND), content_type="text/event-stream"
    )
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # nginx: pass each event on as it comes
    return response


def _give_back_connections() -> None:
    close_old_connections()
    release_connections()


def release_request_thread() -> None:
    """Let the open request's thread end now, not with the stream.

    Django runs each ASGI request in a ThreadSensitiveContext: its sync parts (middleware, ninja's
    token check) run on a thread of the request's own, which asgiref keeps until the response has
    ended. A stream's body needs no thread, so 1,000 open streams kept 1,000 idle threads (bench.streams:
    943 threads and 300 MB per server, 10 threads and 275 MB without them).
    Called once the response has started (every middleware has run): the context's executor is
    dropped and shut down without waiting (its thread is idle, it exits); a later sync call in the
    request (Django closing the response) makes a new one, shut down when the request ends.
    """
    # asgiref's own attributes (pinned 3.13): were they renamed, streams keep their thread, no more.
    contexts = getattr(SyncToAsync, "thread_sensitive_context", None)
    executors = getattr(SyncToAsync, "context_to_thread_executor", None)
    context = contexts.get(None) if contexts is not None else None
    if context is None or executors is None:
        return
    executor = executors.pop(context, None)
    if executor is not None:
        executor.shutdown(wait=False)


def lifetime() -> float:
    """A stream's life: MAX_SECONDS less up to a tenth, at random, so that streams opened together
    (a deploy, a page of many tabs) do not all close and reconnect in the same second."""
    return MAX_SECONDS * (1.0 - random.random() / 10)


async def _follow(bearer: str, key: tuple[Kind, int], first: Snapshot, send_first: bool) -> AsyncIterator[bytes]:
    _open[bearer] += 1
    release_request_thread()
    follower: Follower | None = None
    try:
        loop = asyncio.get_running_loop()
        yield sse.retry()
        if send_first:
            yield sse.frame("end" if first.ended else "state", first.digest, first.state)
        if first.ended:
            return
        w = watcher()
        follower = w.add(key, first, first.digest, until=loop.time() + lifetime())
        while not follower.lost:
            await follower.wait()
            now = loop.time()
            if follower.lost or now >= follower.until:
                return
            snapshot = w.latest.get(key)
            if snapshot is not None and snapshot.digest != follower.sent:
                follower.sent = snapshot.digest
                follower.beat_at = now + HEARTBEAT_SECONDS
                yield sse.frame("end" if snapshot.ended else "state", snapshot.digest, snapshot.state)
                if snapshot.ended:
                    return
            elif now >= follower.beat_at:
                follower.beat_at = now + HEARTBEAT_SECONDS
                yield sse.comment()
    finally:
        if follower is not None:
            watcher().discard(follower)
        _open[bearer] -= 1
        if _open[bearer] <= 0:
            del _open[bearer]


def route(what: str, summary: str, description: str) -> dict[str, Any]:
    """The options of a stream's route (`@router.get(path, **streams.route(...))`): its answers, its
    auth (a bearer header, or `?access_token=` for EventSource) and its OpenAPI description."""
    return {
        "response": {**errors(400, 401, 403, 404, 429, 503)},
        "summary": summary,
        "auth": STREAM_READS,
        "openapi_extra": openapi(what),
        "description": description,
    }


#: One event of a stream, as OpenAPI 3.1 describes a text/event-stream (its `schema` is each
#: event's, fields as the SSE parser reads them; 3.2's `itemSchema` says the same): it was
#: `{"type": "string"}`, which an outside client (schemathesis) checked each parsed event against.
EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "event": {"type": "string", "enum": ["state", "end"]},
        "id": {"type": "string", "description": "a digest of the state: send it back in Last-Event-ID"},
        "data": {"type": "string", "contentMediaType": "application/json", "description": "the state, a JSON object"},
        "retry": {"type": "integer", "description": "milliseconds before a reconnection"},
    },
}


#: The OpenAPI description of a stream's answers (django-ninja documents JSON bodies; this one is
#: text/event-stream), merged into the operation by `openapi_extra`.
def openapi(what: str) -> dict[str, Any]:
    return {
        "responses": {
            "200": {
                "description": f"A stream of Server-Sent Events: `state` (the {what} as a JSON object) whenever it "
                f"changes, the first one at once; `end` with its last state, then the stream closes. Each event's "
                f"`id` is a digest of its state: reconnect with it in `Last-Event-ID` (EventSource does) and "
                f"nothing already received is sent again. Comments every {HEARTBEAT_SECONDS:g} s keep proxies "
                f"from closing it; it closes within {MAX_SECONDS:g} s (reconnect with Last-Event-ID).",
                "content": {"text/event-stream": {"schema": EVENT_SCHEMA}},
            },
            "204": {"description": f"The {what} has ended and `Last-Event-ID` is its last state: nothing more to send "
                    "(EventSource stops reconnecting)."},
        }
    }
