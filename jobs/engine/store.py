"""The job store: every statement that writes `jobs_job`, `jobs_chain` or `jobs_stepresult`, and nothing else does.

Two rules are written here once and used by every statement:
- RUNNABLE: a row a worker may claim and the relay may publish (pending or failed, no cancel
  asked). A claim adds "due" (`run_after <= now()`).
- ENDED: where a run that did not succeed goes: `cancelled` if a cancel was asked, `dead` after
  its last attempt (or after a failure that no retry can change: `jobs.Permanent`), otherwise
  back to run again (`failed` after an error, `pending` after a lost worker).

Every time a statement compares or stamps comes from PostgreSQL's clock (`now()`), never from the
caller's host, so hosts whose clocks disagree still agree on what is due.

Claims, heartbeats, progress and relay marks go through the `claims` connection, whose commits do
not wait for the WAL flush (synchronous_commit=off): losing one in a crash only means a job is
claimed or published again. Outcomes go through `default`, durable, inside the caller's
transaction where the caller has one.

The statements of every job's path (insert, claim, heartbeat, outcome) are prepared: sent with
server-side parameters and planned once per connection (`prepared`), where Django's cursors would
have PostgreSQL parse and plan each one again. Set DATABASE_PREPARED=false behind a pooler that
cannot keep prepared statements (PgBouncer in transaction mode before 1.21).

Every statement that ends a job (succeeded, dead, cancelled) or a chain also sends
`pg_notify('conveyor_job_ended' | 'conveyor_chain_ended', '<id>')` in the same statement
(`NOTIFY_JOB`, `NOTIFY_CHAIN`) when someone waits for it: delivered at commit, dropped with a
rollback, heard by `jobs/engine/waiting.py`. A waiter holds a shared advisory lock on the id
(`waiter_key`); the ending statement notifies only when it cannot take that lock exclusively. A
NOTIFY serializes the commits of every transaction that sends one (PostgreSQL holds a
database-wide lock from the notify queue's insert until after the commit's WAL flush), so ends
nobody waits for must not pay it. The lock it does take, when free, is held to the commit, so a
waiter arriving meanwhile blocks until then and finds the row ended. In the statement rather than
in a trigger because that costs PostgreSQL less per ended job (measured: tens of microseconds).

Rows come back as named tuples.
"""
from __future__ import annotations

import datetime as dt
import json
from typing import Any, Callable, NamedTuple, Sequence

from contextlib import contextmanager
from typing import Iterator

import psycopg
from psycopg import generators
from django.conf import settings
from django.db import OperationalError, connections

from jobs.engine import decisions, tracing
from jobs.models import Chain, Job
from jobs.engine.publish import Message

CLAIMS = "claims"

RUNNABLE = "status IN ('pending', 'failed') AND NOT cancel_requested"
#: RUNNABLE for a row found by its id (see below: job_runnable_idx's predicate is not provable).
RUNNABLE_BY_ID = "(status IN ('pending', 'failed')) IS TRUE AND NOT cancel_requested"
# A running row found by its id says `(status = 'running') IS TRUE` (the same test: status is
# never NULL), not `status = 'running'`: from the plain form PostgreSQL may prove job_lease_idx's
# predicate and read that index, whose statistics, after a vacuum found no running row, say it is
# empty, so that reading all of it looks cheaper than the primary key. It is not empty under a
# held transaction: every entry of every row that ran since stays, and each outcome and heartbeat
# walked all of them (issue 29: 0.2-0.3x throughput ten minutes into a held transaction,
# bench/history.py). With IS TRUE no partial index is provable: the primary key is read, a
# row's few versions whatever the table holds (tests/integration/test_history_plans.py).
#: A row whose queue or type is paused (jobs_pause, a table of a few rows: an index probe each).
PAUSED = """EXISTS (SELECT 1 FROM jobs_pause p
                    WHERE (p.kind = 'queue' AND p.name = jobs_job.queue) OR (p.kind = 'type' AND p.name = jobs_job.type))"""
#: Was the attempt just run the row's last one?
LAST = "attempt >= max_attempts"
#: Where a run that did not succeed goes; `{again}` is the status of a row that will run again,
#: `{last}` says when it will not (LAST, or LAST widened by a failure that no retry can change).
ENDED = """CASE WHEN cancel_requested THEN 'cancelled'
                WHEN {last} THEN 'dead' ELSE '{again}' END"""
#: Does the ENDED rule end the row (it will not run again)?
ENDS = "(cancel_requested OR {last})"

#: The channels a commit that ends a job or a chain notifies, with its id as the payload.
JOB_ENDED = "conveyor_job_ended"
CHAIN_ENDED = "conveyor_chain_ended"


def waiter_key(kind: str, row_id: int) -> int:
    """The advisory lock (bigint form) a waiter on a job ("job") or chain ("chain") holds shared:
    the job's id, the chain's id negated."""
    return row_id if kind == "job" else -row_id


#: The last column of every statement that may end a job: its NOTIFY, for a row `done` that ended
#: while a waiter holds its key (void: cut off before the row is read). CASE fixes the order: the
#: lock is tried only for a row that ended.
NOTIFY_JOB = f"""CASE WHEN done.status IN ('succeeded', 'dead', 'cancelled') THEN
                 CASE WHEN pg_try_advisory_xact_lock(done.id) THEN NULL
                      ELSE pg_notify('{JOB_ENDED}', done.id::text) END END"""
NOTIFY_CHAIN = f"""CASE WHEN pg_try_advisory_xact_lock(-done.id) THEN NULL
                   ELSE pg_notify('{CHAIN_ENDED}', done.id::text) END"""


def _error_entry(error_sql: str) -> str:
    """`errors` with one more entry for the attempt just ended badly (SET ... errors = this): its
    number, `error_sql` (an expression of the error text), its worker, its start and its end."""
    return (f"errors = COALESCE(errors, '[]'::jsonb) || jsonb_build_array(jsonb_build_object("
            f"'attempt', attempt, 'error', {error_sql}, 'worker', worker, 'started_at', started_at, 'at', now()))")


def _notifying(update_sql: str) -> str:
    """`update_sql` (an UPDATE ... RETURNING) that also notifies for each row it ended."""
    return f"WITH done AS ({update_sql.strip()})\nSELECT done.*, {NOTIFY_JOB} FROM done"


# --- Named rows ---------------------------------------------------------------------------------


class Claimed(NamedTuple):
    id: int
    type: str
    input: dict[str, Any]
    attempt: int
    max_attempts: int
    chain_id: int | None
    chain_index: int | None
    parent_id: int | None
    idempotency_key: str | None
    queue: str
    #: Seconds from when the row was due (enqueued, or its delay or backoff ended) to this claim.
    waited: float
    #: Its place in its chain step's group (None: a one-job step or no chain).
    member: int | None = None
    #: How many entries the group before this step handed on (ctx.results reads them).
    results_count: int | None = None
    #: The OpenTelemetry context the row was created in (jobs.engine.tracing), or None.
    trace_context: dict[str, str] | None = None
    #: The row as this claim left it, for a handler that shows its run as a whole (the django.tasks
    #: adapter's TaskResult: conveyor_tasks.worker) without reading it again: when it was created,
    #: this attempt's start, the claiming worker, the errors of the attempts before.
    created_at: dt.datetime | None = None
    started_at: dt.datetime | None = None
    worker: str = ""
    errors: Sequence[dict[str, Any]] = ()


class Beat(NamedTuple):
    id: int
    attempt: int
    cancel_requested: bool


class Succeeded(NamedTuple):
    id: int
    type: str
    #: succeeded, or cancelled when a cancel was asked while it ran.
    status: str
    chain_id: int | None
    input: dict[str, Any]
    #: The chain's plan and status, read under its row lock (None outside a chain).
    chain_steps: list[dict[str, Any]] | None
    chain_status: str | None


class Ended(NamedTuple):
    id: int
    type: str
    status: str
    chain_id: int | None
    chain_index: int | None = None
    #: Its place in its chain step's group: its end counts toward the group's fan-in.
    member: int | None = None


class Member(NamedTuple):
    """A group member's end, as the fan-in reads it (its output stays in PostgreSQL: hand_on
    copies it there; the error only of a member that did not succeed)."""

    id: int
    member: int
    status: str
    error: str


def _json(value: Any) -> Any:
    # Django has psycopg hand jsonb over as text (its JSONField decodes it); raw SQL decodes here.
    return json.loads(value) if isinstance(value, (str, bytes)) else value


def text(value: str) -> str:
    """Text PostgreSQL can store: a NUL character (which it refuses) is written as `\\x00`."""
    return value.replace("\x00", "\\x00")


@contextmanager
def prepared(alias: str = "default") -> Iterator[Any]:
    """A cursor of Django's connection `alias` (its transaction, its errors as Django's) whose
    `execute(sql, params)` binds the parameters server-side and prepares the statement."""
    if not settings.DATABASE_PREPARED:
        with connections[alias].cursor() as cursor:
            yield cursor
        return
    conn = connections[alias]
    conn.ensure_connection()
    conn.validate_no_broken_transaction()
    pg = conn.connection
    if pg.prepare_threshold is None:  # Django turns preparing off: on only when asked (prepare=True)
        pg.prepare_threshold = 2**31 - 1
    # Traced (project/tracing.py): the psycopg instrumentation's cursor class, so the claim's and
    # the outcomes' statements are spans of the run they belong to; None while tracing is off.
    with conn.wrap_database_errors, (tracing.statement_cursor or psycopg.Cursor)(pg) as cursor:
        yield _Prepared(cursor)


class _Prepared:
    def __init__(self, cursor: psycopg.Cursor) -> None:
        self._cursor = cursor

    def execute(self, sql: str, params: Sequence[Any]) -> None:
        pg = self._cursor.connection
        if not pg.autocommit and pg.pgconn.transaction_status == psycopg.pq.TransactionStatus.IDLE:
            # The first statement of a transaction: psycopg would send its BEGIN alone, one round
            # trip more; in pipeline mode the BEGIN and the statement go in one (an outcome's
            # transaction: BEGIN + success or failure, then the rest, then COMMIT).
            with pg.pipeline():
                self._cursor.execute(sql, params, prepare=True)
            return
        self._cursor.execute(sql, params, prepare=True)

    def execute_after(self, first_sql: str, first_params: Sequence[Any], sql: str, params: Sequence[Any]) -> None:
        """Two statements in one round trip (pipeline mode), `sql`'s result the cursor's; the
        second runs only if the first succeeds (its error aborts the pipeline and is raised)."""
        with self._cursor.connection.pipeline():
            self._cursor.execute(first_sql, first_params, prepare=True)
            self._cursor.execute(sql, params, prepare=True)

    def fetchone(self) -> Any:
        return self._cursor.fetchone()

    def fetchall(self) -> list[Any]:
        return self._cursor.fetchall()


def _messages(cursor: Any) -> list[Message]:
    return [Message._make(row) for row in cursor.fetchall()]


def send_commit(alias: str = "default") -> Callable[[], None]:
    """Send COMMIT for `alias`'s open transaction without waiting for it; return the function that
    reads its result (raising its error as Django's: a failed COMMIT rolled the transaction back).

    Between the two, the caller does what need not wait for the WAL flush (jobs.engine.early:
    the next step's publish). Called last inside `transaction.atomic`: once the result is read,
    the connection is idle and Django's own commit at the block's end has nothing left to send
    (psycopg's commit() does nothing on an idle connection); on an error the block rolls back,
    which is nothing more, and its on_commit callbacks are dropped."""
    conn = connections[alias]
    pg = conn.connection
    with conn.wrap_database_errors:
        pg.pgconn.send_query(b"COMMIT")
        pg.wait(generators.send(pg.pgconn))

    def result() -> None:
        with conn.wrap_database_errors:
            for res in pg.wait(generators.fetch_many(pg.pgconn)):
                if res.status == psycopg.pq.ExecStatus.FATAL_ERROR:
                    raise psycopg.errors.error_from_result(res, encoding=pg.info.encoding)

    return result


# --- Insert -------------------------------------------------------------------------------------

INSERT_SQL = """
INSERT INTO jobs_job (type, queue, input, priority, max_attempts, idempotency_key, chain_id,
                      chain_index, member, results_count, parent_id, limit_key, run_after, published_at,
                      trace_context, status, attempt, worker, progress, progress_message, cancel_requested, error,
                      created_at, updated_at)
SELECT v.type, v.queue, v.input::jsonb, v.priority, v.max_attempts, v.key, v.chain_id,
       -- A run_after in the past means now (GREATEST ignores a NULL): the row says when it became
       -- due, which is what its queue wait is measured from, never a client's 1970.
       v.chain_index, v.member, v.results_count, v.parent_id, v.limit_key, GREATEST(v.run_after, now()),
       -- Due now: its message is published after commit. Later: the relay publishes it when due.
       CASE WHEN COALESCE(v.run_after, now()) <= now() THEN now() END,
       v.trace_context::jsonb, 'pending', 0, '', 0, '', false, '', now(), now()
  FROM unnest(%s::text[], %s::text[], %s::text[], %s::int[], %s::int[], %s::text[], %s::bigint[],
              %s::int[], %s::int[], %s::int[], %s::bigint[], %s::text[], %s::timestamptz[], %s::text[])
       WITH ORDINALITY AS v(type, queue, input, priority, max_attempts, key, chain_id,
                            chain_index, member, results_count, parent_id, limit_key, run_after,
                            trace_context, n)
 ORDER BY v.n
    ON CONFLICT (idempotency_key) DO NOTHING
RETURNING id, idempotency_key, run_after, published_at, created_at
"""
_INSERTED = ("run_after", "published_at", "created_at")

# The same insert, holding each inserted row's early lock (decisions.early_lock_key) until the
# transaction ends: its message goes out before the commit (jobs.engine.early), and a claim that
# does not see the row yet waits on this lock (AWAIT_COMMIT_SQL) instead of dropping the message.
# One statement still: the lock costs no round trip. (The extra column is the lock's void.)
INSERT_EARLY_SQL = f"""
WITH inserted AS ({INSERT_SQL.strip()})
SELECT inserted.*, pg_advisory_xact_lock({decisions.EARLY_LOCK_SPACE},
                                         ((inserted.id %% 2147483647) - 1073741823)::int4)
  FROM inserted
"""


def insert(jobs: Sequence[Job], early: bool = False) -> list[Job]:
    """Insert unsaved rows in one statement; return those inserted, with their ids and times.

    A row whose idempotency key is already taken is skipped (not returned), and so is a second
    row with the same key in one call. `run_after` None, or in the past, means now, by the
    database's clock (the row stores now). `early`: hold each inserted row's early lock to the
    end of the transaction (INSERT_EARLY_SQL), its message to be sent before the commit.
    """
    if not jobs:
        return []
    columns = [
        [job.type for job in jobs],
        [job.queue for job in jobs],
        [json.dumps(job.input) for job in jobs],
        [job.priority for job in jobs],
        [job.max_attempts for job in jobs],
        [job.idempotency_key for job in jobs],
        [job.chain_id for job in jobs],
        [job.chain_index for job in jobs],
        [job.member for job in jobs],
        [job.results_count for job in jobs],
        [job.parent_id for job in jobs],
        [job.limit_key for job in jobs],
        [job.run_after for job in jobs],
        # The OpenTelemetry context (jobs.engine.tracing): NULL for every row while tracing is off.
        [None if job.trace_context is None else json.dumps(job.trace_context) for job in jobs],
    ]
    with prepared() as cursor:
        cursor.execute(INSERT_EARLY_SQL if early else INSERT_SQL, columns)
        rows = cursor.fetchall()
    # RETURNING follows the insert order; skipped rows are missing, known by their keys.
    keyed = {key: row for row in rows if (key := row[1]) is not None}
    unkeyed = iter(row for row in rows if row[1] is None)
    inserted = []
    for job in jobs:
        row = next(unkeyed) if job.idempotency_key is None else keyed.pop(job.idempotency_key, None)
        if row is None:
            continue
        job.pk = row[0]
        for name, value in zip(_INSERTED, row[2:]):
            setattr(job, name, value)
        job.updated_at = job.created_at
        job._state.adding, job._state.db = False, "default"
        inserted.append(job)
    return inserted


def create_chain(steps: list[dict[str, Any]]) -> Chain:
    return Chain.objects.create(steps=steps)


# --- A run: claim, heartbeat, progress, outcome ---------------------------------------------------

# The queue wait runs from when the row became due: its run_after, but never before the row
# existed (a row stored with a past run_after before inserts clamped it would count decades).
_CLAIMED = """id, type, input, attempt, max_attempts, chain_id, chain_index, parent_id, idempotency_key,
          queue, EXTRACT(EPOCH FROM now() - GREATEST(run_after, created_at))::float8, member, results_count,
          trace_context, created_at, started_at, worker, errors"""

# A row of a type with limits (`limited`, the registry's names) is left to claim_limited.
CLAIM_SQL = f"""
UPDATE jobs_job SET status = 'running', attempt = attempt + 1, worker = %s, started_at = now(),
       lease_expires_at = now() + make_interval(secs => %s), updated_at = now(), finished_at = NULL,
       held = ''
 WHERE id = (SELECT id FROM jobs_job
              WHERE id = %s AND {RUNNABLE_BY_ID} AND run_after <= now() AND type <> ALL(%s::text[])
                AND NOT {PAUSED}
              FOR UPDATE SKIP LOCKED)
RETURNING {_CLAIMED}
"""


def claim(job_id: int, worker: str, lease_seconds: float, limited: Sequence[str] = (), alias: str = CLAIMS) -> Claimed | None:
    """Take the row for one attempt, or None: locked, finished, cancelled, not yet due, paused
    (its queue or type: `hold_paused` then holds it), or of one of the `limited` types (whose
    claims go through jobs.engine.limits and `claim_limited`). `alias` "default": in the caller's
    transaction (a chain's next step claimed with its previous step's outcome, jobs.engine.handoff)."""
    with prepared(alias) as cursor:
        cursor.execute(CLAIM_SQL, [worker, lease_seconds, job_id, list(limited)])
        row = cursor.fetchone()
    return None if row is None else _claimed(row)


# A claim of a message sent before its row's commit (jobs.engine.early) first waits until the
# transaction that inserted the row (it holds the row's early lock: INSERT_EARLY_SQL) has ended,
# committed or rolled back, at most `lock_timeout` (set for this implicit transaction only:
# set_config(..., true)); then CLAIM_SQL, whose snapshot, taken when it starts (READ COMMITTED),
# sees that commit. Both in one pipelined round trip; nothing written by the wait. A lock free
# (the commit done already, the common case under no load) costs nothing more than the claim.
AWAIT_COMMIT_SQL = f"""
SELECT CASE WHEN set_config('lock_timeout', %s, true) IS NOT NULL
            THEN pg_advisory_xact_lock_shared({decisions.EARLY_LOCK_SPACE}, %s::int4) END
"""


# CLAIM_SQL after that wait, in the same implicit transaction (a pipeline without a Sync between
# them): its times are the statement's (statement_timestamp(), when PostgreSQL took it up, after
# the wait), not the transaction's now(), which began with the wait: a job's start is never before
# its row was committed, and the handoff is measured from the real claim.
CLAIM_AFTER_COMMIT_SQL = CLAIM_SQL.replace("now()", "statement_timestamp()")


def claim_after_commit(job_id: int, worker: str, lease_seconds: float, limited: Sequence[str], timeout_ms: int) -> Claimed | None:
    """`claim`, once the transaction that inserted `job_id` early has ended; None as `claim`, or
    when that transaction still runs after `timeout_ms` (the message is then dropped: the row, once
    committed, is published again by the relay when stale, as a message lost after commit).

    (Tried and not kept, issue 28: a plain claim first, the wait only when it finds nothing. It
    saves about 0.05 ms of the claimer's CPU when the commit is done, costs a round trip when the
    message outran the commit, and moved the handoff's p50 by under 2% in an interleaved A/B.)"""
    try:
        with prepared(CLAIMS) as cursor:
            wait, claim_params = [str(timeout_ms), decisions.early_lock_key(job_id)[1]], [worker, lease_seconds, job_id, list(limited)]
            if isinstance(cursor, _Prepared):
                cursor.execute_after(AWAIT_COMMIT_SQL, wait, CLAIM_AFTER_COMMIT_SQL, claim_params)
            else:  # nothing prepared (a pooler): two round trips
                cursor.execute(AWAIT_COMMIT_SQL, wait)
                cursor.execute(CLAIM_AFTER_COMMIT_SQL, claim_params)
            row = cursor.fetchone()
    except OperationalError as exc:
        if getattr(exc.__cause__, "sqlstate", None) != "55P03":  # lock_not_available: the timeout
            raise
        return None
    return None if row is None else _claimed(row)


def _claimed(row: Sequence[Any]) -> Claimed:
    claimed = Claimed._make(row)
    return claimed._replace(input=_json(claimed.input), trace_context=_json(claimed.trace_context), errors=_json(claimed.errors))


# --- Limits: a claim of a limited type, its end releasing the next waiting job --------------------
#
# jobs.engine.limits decides; these statements run in its transactions. A claim locks the row, then the
# scope (an advisory lock per type, and per type and key), counts the running rows of the scope in
# a statement of its own (after the lock: it sees every end committed before), and either claims,
# holds the row (`held`, published_at NULL: the relay leaves it alone) or books a rate slot. A
# job's end takes the same scope locks in its outcome's transaction and releases the oldest
# waiting row. Times are `clock_timestamp()`: a claim that waited for a lock starts when it got it.

LIMITED_ROW_SQL = f"""
SELECT type, limit_key, held FROM jobs_job
 WHERE id = %s AND {RUNNABLE_BY_ID} AND run_after <= now() AND NOT {PAUSED}
   FOR UPDATE SKIP LOCKED
"""


class LimitedRow(NamedTuple):
    type: str
    limit_key: str | None
    held: str


def lock_limited(job_id: int) -> LimitedRow | None:
    """In a transaction on CLAIMS: lock a runnable, due row (None: locked, finished, not due or paused)."""
    with prepared(CLAIMS) as cursor:
        cursor.execute(LIMITED_ROW_SQL, [job_id])
        row = cursor.fetchone()
    return None if row is None else LimitedRow._make(row)


LOCK_SCOPE_SQL = "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))"


def lock_scope(type_name: str, key: str | None = None, alias: str = "default") -> None:
    """Hold the limit scope of a type (or of one key of it) until the transaction ends."""
    scope = f"conveyor:limit:{type_name}" + ("" if key is None else f":key:{key}")
    with prepared(alias) as cursor:
        cursor.execute(LOCK_SCOPE_SQL, [scope])
        cursor.fetchone()


RUNNING_OF_TYPE_SQL = """
SELECT count(*) FROM jobs_job WHERE type = %s AND status = 'running' AND limit_key IS NOT NULL
"""
RUNNING_OF_KEY_SQL = """
SELECT count(*) FROM jobs_job WHERE type = %s AND limit_key = %s AND status = 'running'
"""


def running(type_name: str, key: str | None = None, alias: str = CLAIMS) -> int:
    """Running jobs of a limited type (claimed through limits), or of one key of it."""
    with prepared(alias) as cursor:
        if key is None:
            cursor.execute(RUNNING_OF_TYPE_SQL, [type_name])
        else:
            cursor.execute(RUNNING_OF_KEY_SQL, [type_name, key])
        return cursor.fetchone()[0]


# A rate-limited type's two clocks, GCRA's theoretical arrival times (jobs.engine.limits decides): the
# next free slot to book (`next_at`), and the earliest next start once the starts so far are
# counted (`started_next`). A first claim of the type starts both at PostgreSQL's clock. The row
# stays locked (ON CONFLICT DO UPDATE) until the claim's transaction ends.
RATE_CLOCKS_SQL = """
INSERT INTO jobs_rateslot AS r (type, next_at, started_next)
VALUES (%s, clock_timestamp(), clock_timestamp())
    ON CONFLICT (type) DO UPDATE SET type = r.type
RETURNING r.next_at, r.started_next, clock_timestamp()
"""
SET_RATE_CLOCKS_SQL = "UPDATE jobs_rateslot SET next_at = %s, started_next = %s WHERE type = %s"


def rate_clocks(type_name: str) -> tuple[dt.datetime, dt.datetime, dt.datetime]:
    """Lock the type's rate clocks: (next free slot, earliest next start, PostgreSQL's now)."""
    with prepared(CLAIMS) as cursor:
        cursor.execute(RATE_CLOCKS_SQL, [type_name])
        return cursor.fetchone()


def set_rate_clocks(type_name: str, next_at: dt.datetime, started_next: dt.datetime) -> None:
    with prepared(CLAIMS) as cursor:
        cursor.execute(SET_RATE_CLOCKS_SQL, [next_at, started_next, type_name])


HOLD_SQL = """
UPDATE jobs_job SET held = %s, published_at = NULL, run_after = COALESCE(%s, run_after),
       updated_at = now()
 WHERE id = %s
"""


def hold(job_id: int, held: str, run_after: dt.datetime | None = None) -> None:
    """Hold a row locked by lock_limited: it waits in the table with no message (a booked rate
    slot: until `run_after`, when the relay publishes it; a concurrency slot: until released)."""
    with prepared(CLAIMS) as cursor:
        cursor.execute(HOLD_SQL, [held, run_after, job_id])


CLAIM_LIMITED_SQL = f"""
UPDATE jobs_job SET status = 'running', attempt = attempt + 1, worker = %s,
       started_at = clock_timestamp(),
       lease_expires_at = clock_timestamp() + make_interval(secs => %s), updated_at = now(),
       finished_at = NULL, held = '', limit_key = COALESCE(limit_key, '')
 WHERE id = %s
RETURNING {_CLAIMED}
"""


def claim_limited(job_id: int, worker: str, lease_seconds: float) -> Claimed:
    """Claim a row locked by lock_limited whose limits let it start."""
    with prepared(CLAIMS) as cursor:
        cursor.execute(CLAIM_LIMITED_SQL, [worker, lease_seconds, job_id])
        return _claimed(cursor.fetchone())


LIMIT_KEY_SQL = "SELECT limit_key FROM jobs_job WHERE id = %s"


def limit_key(job_id: int) -> str | None:
    with prepared() as cursor:
        cursor.execute(LIMIT_KEY_SQL, [job_id])
        row = cursor.fetchone()
    return row[0] if row else None


_RELEASED = "j.id, j.queue, j.priority, j.type, j.chain_id, j.chain_index"
RELEASE_OF_TYPE_SQL = f"""
WITH next AS (SELECT id FROM jobs_job
               WHERE type = %s AND held = 'concurrency' AND {RUNNABLE}
               ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED)
UPDATE jobs_job j SET held = '', published_at = now(), updated_at = now() FROM next
 WHERE j.id = next.id
RETURNING {_RELEASED}
"""
RELEASE_OF_KEY_SQL = f"""
WITH next AS (SELECT id FROM jobs_job
               WHERE type = %s AND limit_key = %s AND held = 'key' AND {RUNNABLE}
               ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED)
UPDATE jobs_job j SET held = '', published_at = now(), updated_at = now() FROM next
 WHERE j.id = next.id
RETURNING {_RELEASED}
"""


def release_waiting(type_name: str, key: str | None, count: int) -> list[Message]:
    """Under the scope's lock: mark up to `count` of its oldest waiting rows published now (no
    longer held); return their messages, to publish after commit (their claims count again)."""
    with prepared() as cursor:
        if key is None:
            cursor.execute(RELEASE_OF_TYPE_SQL, [type_name, count])
        else:
            cursor.execute(RELEASE_OF_KEY_SQL, [type_name, key, count])
        return _messages(cursor)


# Scopes with rows waiting for a slot (the limits' sweep checks each: a release that never came).
WAITING_SCOPES_SQL = f"""
(SELECT DISTINCT type, NULL::text FROM jobs_job WHERE held = 'concurrency' AND {RUNNABLE} LIMIT %s)
UNION ALL
(SELECT DISTINCT type, limit_key FROM jobs_job WHERE held = 'key' AND {RUNNABLE} LIMIT %s)
"""


def waiting_scopes(limit: int) -> list[tuple[str, str | None]]:
    """(type, None) for types with rows waiting for a type slot; (type, key) for keys."""
    with connections["default"].cursor() as cursor:
        cursor.execute(WAITING_SCOPES_SQL, [limit, limit])
        return [(row[0], row[1]) for row in cursor.fetchall()]


# --- Pauses: a paused queue or type's rows are held, a resume publishes them ----------------------
#
# A claim skips a paused row (PAUSED in CLAIM_SQL and LIMITED_ROW_SQL); the runner then holds it
# (`hold_paused`): no message, out of the relay's indexes, until `release_paused` publishes it. The
# pause row is locked FOR SHARE while a row is held for it, so a resume's DELETE waits for that
# hold to commit, and its release (a statement after the DELETE's commit) sees the held row.

HOLD_PAUSED_SQL = f"""
UPDATE jobs_job SET held = 'paused', published_at = NULL, updated_at = now()
 WHERE id = (SELECT id FROM jobs_job
              WHERE id = %s AND {RUNNABLE_BY_ID} AND run_after <= now() AND held IN ('', 'rate')
                AND EXISTS (SELECT 1 FROM jobs_pause p
                             WHERE (p.kind = 'queue' AND p.name = jobs_job.queue)
                                OR (p.kind = 'type' AND p.name = jobs_job.type)
                               FOR SHARE)
              FOR UPDATE SKIP LOCKED)
RETURNING id
"""


def hold_paused(job_id: int) -> bool:
    """A row its claim skipped: if its queue or type is paused, hold it (True): it waits in the
    table with no message until a resume releases it."""
    with prepared(CLAIMS) as cursor:
        cursor.execute(HOLD_PAUSED_SQL, [job_id])
        return cursor.fetchone() is not None


# Held rows no pause holds any more (job_paused_idx): due now, marked published, their messages
# returned to publish after commit.
RELEASE_PAUSED_SQL = f"""
WITH next AS (SELECT id FROM jobs_job
               WHERE held = 'paused' AND {RUNNABLE} AND NOT {PAUSED}
               ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED)
UPDATE jobs_job j SET held = '', published_at = now(), run_after = LEAST(j.run_after, now()),
       updated_at = now() FROM next
 WHERE j.id = next.id
RETURNING {_RELEASED}
"""


def release_paused(batch: int) -> list[Message]:
    """Up to `batch` rows held for a pause that is gone: no longer held, published now (their
    messages returned, to send after commit)."""
    with prepared() as cursor:
        cursor.execute(RELEASE_PAUSED_SQL, [batch])
        return _messages(cursor)


PAUSE_SQL = """
INSERT INTO jobs_pause (kind, name, reason, paused_by, created_at) VALUES (%s, %s, %s, %s, now())
    ON CONFLICT (kind, name) DO UPDATE SET reason = EXCLUDED.reason, paused_by = EXCLUDED.paused_by
RETURNING created_at
"""
RESUME_SQL = "DELETE FROM jobs_pause WHERE kind = %s AND name = %s RETURNING id"


def pause(kind: str, name: str, reason: str, by: str) -> dt.datetime:
    """Pause a queue or a job type (again: its reason updated, its start kept); return since when."""
    with connections["default"].cursor() as cursor:
        cursor.execute(PAUSE_SQL, [kind, name, text(reason), by])
        return cursor.fetchone()[0]


def resume(kind: str, name: str) -> bool:
    """Remove a pause (False: it was not paused); its held rows are then `release_paused`'s."""
    with connections["default"].cursor() as cursor:
        cursor.execute(RESUME_SQL, [kind, name])
        return cursor.fetchone() is not None


class PauseRow(NamedTuple):
    kind: str
    name: str
    reason: str
    paused_by: str
    created_at: dt.datetime
    #: Rows held for it now (their claim found them paused).
    held: int


PAUSES_SQL = """
SELECT p.kind, p.name, p.reason, p.paused_by, p.created_at,
       (SELECT count(*) FROM jobs_job j WHERE j.held = 'paused' AND j.status IN ('pending', 'failed')
           AND NOT j.cancel_requested AND (CASE p.kind WHEN 'queue' THEN j.queue ELSE j.type END) = p.name)
  FROM jobs_pause p ORDER BY p.kind, p.name
"""


def pauses() -> list[PauseRow]:
    """Every pause, with how many rows are held for it."""
    with connections["default"].cursor() as cursor:
        cursor.execute(PAUSES_SQL)
        return [PauseRow._make(row) for row in cursor.fetchall()]


# --- Why a job waits: the facts jobs.engine.why gathers for decisions.why -------------------------

WHY_ROW_SQL = """
SELECT j.type, j.queue, j.status, j.attempt, j.held, j.run_after, j.published_at, j.cancel_requested,
       j.limit_key, j.priority, now(),
       COALESCE((SELECT json_agg(json_build_object('kind', p.kind, 'name', p.name, 'reason', p.reason,
                                                   'by', p.paused_by, 'since', p.created_at) ORDER BY p.kind)
                   FROM jobs_pause p
                  WHERE (p.kind = 'queue' AND p.name = j.queue) OR (p.kind = 'type' AND p.name = j.type)), '[]')
  FROM jobs_job j WHERE j.id = %s
"""


class WhyRow(NamedTuple):
    type: str
    queue: str
    status: str
    attempt: int
    held: str
    run_after: dt.datetime
    published_at: dt.datetime | None
    cancel_requested: bool
    limit_key: str | None
    priority: int
    now: dt.datetime
    pauses: list[dict[str, Any]]


def why_row(job_id: int) -> WhyRow | None:
    """A job's row as the why reads it, with PostgreSQL's now and its queue's and type's pauses."""
    with connections["default"].cursor() as cursor:
        cursor.execute(WHY_ROW_SQL, [job_id])
        row = cursor.fetchone()
    return None if row is None else WhyRow(*row[:-1], _json(row[-1]))


PAUSES_OF_SQL = """
SELECT now(), COALESCE((SELECT json_agg(json_build_object('kind', p.kind, 'name', p.name, 'reason', p.reason,
                                                     'by', p.paused_by, 'since', p.created_at) ORDER BY p.kind)
                          FROM jobs_pause p
                         WHERE (p.kind = 'queue' AND p.name = %s) OR (p.kind = 'type' AND p.name = %s)), '[]')
"""


def pauses_of(queue: str, type_name: str) -> tuple[dt.datetime, list[dict[str, Any]]]:
    """PostgreSQL's now, and the pauses of a queue and a job type (as why_row gives them)."""
    with connections["default"].cursor() as cursor:
        cursor.execute(PAUSES_OF_SQL, [queue, type_name])
        now, found = cursor.fetchone()
    return now, _json(found)


# Runnable rows with a message, due, that a worker takes before this one: a lower priority number,
# or the same one published earlier (Redis keeps each priority's list in publish order). Counted
# up to a bound: "behind 10000+ jobs" says enough.
AHEAD_SQL = f"""
SELECT count(*) FROM (
  SELECT 1 FROM jobs_job
   WHERE queue = %(queue)s AND {RUNNABLE} AND held = '' AND run_after <= now() AND published_at IS NOT NULL
     AND id <> %(id)s
     AND (priority < %(priority)s OR (priority = %(priority)s AND (published_at, id) < (%(published)s, %(id)s)))
   LIMIT %(bound)s) ahead
"""


def ahead(job_id: int, queue: str, priority: int, published_at: dt.datetime, bound: int = 10_000) -> int:
    """How many runnable, published rows of `queue` a worker takes before this one (at most `bound`)."""
    with connections["default"].cursor() as cursor:
        cursor.execute(AHEAD_SQL, {"queue": queue, "id": job_id, "priority": priority, "published": published_at,
                                   "bound": bound})
        return cursor.fetchone()[0]


HOLDERS_OF_TYPE_SQL = """
SELECT id FROM jobs_job WHERE type = %s AND status = 'running' AND limit_key IS NOT NULL ORDER BY id LIMIT %s
"""
HOLDERS_OF_KEY_SQL = """
SELECT id FROM jobs_job WHERE type = %s AND limit_key = %s AND status = 'running' ORDER BY id LIMIT %s
"""


def holders(type_name: str, key: str | None = None, limit: int = 50) -> list[int]:
    """The running jobs that hold a limited type's slots (or one key's), oldest first (job_running_idx)."""
    with connections["default"].cursor() as cursor:
        if key is None:
            cursor.execute(HOLDERS_OF_TYPE_SQL, [type_name, limit])
        else:
            cursor.execute(HOLDERS_OF_KEY_SQL, [type_name, key, limit])
        return [row[0] for row in cursor.fetchall()]


# Per queue: runnable rows due now (not held for a slot, a rate or a pause: they wait for a worker),
# and how long the oldest of them has been due (job_runnable_idx).
WAITING_QUEUES_SQL = f"""
SELECT queue, count(*), EXTRACT(EPOCH FROM now() - min(GREATEST(run_after, created_at)))::float8
  FROM jobs_job
 WHERE {RUNNABLE} AND run_after <= now() AND held = ''
 GROUP BY queue ORDER BY queue
"""


OLDEST_WAITING_SQL = f"""
SELECT DISTINCT ON (queue) queue, id FROM jobs_job
 WHERE {RUNNABLE} AND run_after <= now() AND held = ''
 ORDER BY queue, GREATEST(run_after, created_at), id
"""


def oldest_waiting() -> dict[str, int]:
    """{queue: the id of its job that has waited longest for a worker}."""
    with connections["default"].cursor() as cursor:
        cursor.execute(OLDEST_WAITING_SQL)
        return dict(cursor.fetchall())


def waiting_queues() -> dict[str, tuple[int, float]]:
    """{queue: (jobs due and waiting for a worker, seconds the oldest has waited)}."""
    with connections["default"].cursor() as cursor:
        cursor.execute(WAITING_QUEUES_SQL)
        return {row[0]: (row[1], row[2]) for row in cursor.fetchall()}


HELD_BY_PAUSE_SQL = f"""
SELECT queue, count(*) FROM jobs_job
 WHERE {RUNNABLE} AND held = 'paused'
 GROUP BY queue ORDER BY queue
"""


def held_by_pause() -> dict[str, int]:
    """{queue: jobs held because their queue or type is paused} (they wait in the database, and
    are not counted as waiting for a worker: no worker may take them)."""
    with connections["default"].cursor() as cursor:
        cursor.execute(HELD_BY_PAUSE_SQL)
        return dict(cursor.fetchall())


#: Per queue, what an autoscaler reads: the jobs due and waiting for a worker (as
#: WAITING_QUEUES_SQL counts them), the jobs running, and the oldest waiting one's wait, by
#: PostgreSQL's clock. Written as the two partial indexes' predicates (runnable, running), so it
#: reads them (a BitmapOr) whatever the size of the finished history.
QUEUE_LOAD_SQL = f"""
SELECT queue,
       count(*) FILTER (WHERE {RUNNABLE} AND run_after <= now() AND held = ''),
       count(*) FILTER (WHERE status = 'running'),
       EXTRACT(EPOCH FROM now() - min(GREATEST(run_after, created_at))
                     FILTER (WHERE {RUNNABLE} AND run_after <= now() AND held = ''))::float8
  FROM jobs_job
 WHERE status IN ('pending', 'failed') OR status = 'running'
 GROUP BY queue ORDER BY queue
"""


def queue_load() -> dict[str, tuple[int, int, float | None]]:
    """{queue: (jobs due and waiting for a worker, jobs running, seconds the oldest waiting one has
    waited or None)} for each queue with an unfinished job."""
    with connections["default"].cursor() as cursor:
        cursor.execute(QUEUE_LOAD_SQL)
        return {row[0]: (row[1], row[2], row[3]) for row in cursor.fetchall()}


# Fenced by attempt: a runner whose lease lapsed (and whose row another worker claimed since)
# extends nothing, and learns it lost the row.
HEARTBEAT_SQL = """
UPDATE jobs_job j SET lease_expires_at = now() + make_interval(secs => %s)
  FROM unnest(%s::bigint[], %s::int[]) AS h(id, attempt)
 WHERE j.id = h.id AND j.attempt = h.attempt AND (j.status = 'running') IS TRUE
RETURNING j.id, j.attempt, j.cancel_requested
"""


def heartbeat(runs: list[tuple[int, int]], lease_seconds: float) -> list[Beat]:
    """Extend the leases of these (job id, attempt) runs; a run missing from the answer has lost
    its row (reaped, handed back, or claimed again by another worker)."""
    with prepared(CLAIMS) as cursor:
        cursor.execute(HEARTBEAT_SQL, [lease_seconds, [r[0] for r in runs], [r[1] for r in runs]])
        return [Beat._make(row) for row in cursor.fetchall()]


PROGRESS_SQL = """
UPDATE jobs_job SET progress = %s, progress_message = %s, updated_at = now()
 WHERE id = %s AND (status = 'running') IS TRUE AND attempt = %s
"""


def progress(job_id: int, attempt: int, percent: int, message: str) -> None:
    percent = max(0, min(100, int(percent)))
    with connections[CLAIMS].cursor() as cursor:
        cursor.execute(PROGRESS_SQL, [percent, message[:500], job_id, attempt])


# An atomic run's transaction (runner._atomic), bounded in PostgreSQL for its duration only
# (`is_local`): a statement that waits, or the session idle in it, past `ms` ends it.
BOUND_TRANSACTION_SQL = """
SELECT set_config('statement_timeout', %s, true), set_config('idle_in_transaction_session_timeout', %s, true)
"""


def bound_transaction(ms: int) -> None:
    """In the caller's transaction on `default`: PostgreSQL ends it past `ms` milliseconds of one
    statement or of idleness (decisions.transaction_bound_ms)."""
    with prepared() as cursor:
        cursor.execute(BOUND_TRANSACTION_SQL, [str(ms), str(ms)])
        cursor.fetchone()


# A run that returns after a cancel was asked ends cancelled, its output kept.
SUCCEED_UPDATE = """
UPDATE jobs_job SET status = CASE WHEN cancel_requested THEN 'cancelled' ELSE 'succeeded' END,
       output = %s::jsonb, progress = 100, finished_at = now(), updated_at = now(),
       lease_expires_at = NULL, error = ''
 WHERE id = %s AND (status = 'running') IS TRUE AND attempt = %s
RETURNING id, type, status, chain_id, input
"""
SUCCEED_SQL = _notifying(SUCCEED_UPDATE)

# The plan is read only when asked for (`plan`): a group's member's outcome does without it (the
# last one reads what it needs, chain_step), so N members do not read a plan of N inputs N times.
SUCCEED_IN_CHAIN_SQL = f"""
WITH done AS ({SUCCEED_UPDATE.strip()}),
     chain AS (SELECT CASE WHEN %s THEN steps END AS steps, status FROM jobs_chain WHERE id = %s FOR UPDATE)
SELECT done.*, chain.steps, chain.status, {NOTIFY_JOB} FROM done, chain
"""


def succeed(
    job_id: int, attempt: int, output_json: str, chain_id: int | None = None, plan: bool = True
) -> Succeeded | None:
    """Record attempt `attempt`'s success, its output given as JSON text (None: the attempt lost
    its lease, nothing recorded). In a chain, the chain's row is locked in the same round trip
    and its status returned, with its plan unless `plan` is False (chain_steps None)."""
    with prepared() as cursor:
        if chain_id is None:
            cursor.execute(SUCCEED_SQL, [output_json, job_id, attempt])
        else:
            cursor.execute(SUCCEED_IN_CHAIN_SQL, [output_json, job_id, attempt, plan, chain_id])
        row = cursor.fetchone()
    if row is None:
        return None
    row = row[:-1]  # the NOTIFY's column
    if chain_id is None:
        row = (*row, None, None)
    done = Succeeded._make(row)
    return done._replace(input=_json(done.input), chain_steps=_json(done.chain_steps))


# A chain step's success and the insert of its next step, in ONE statement (jobs.engine.early:
# the outcome's one round trip before the next step's publish). SUCCEED_IN_CHAIN_SQL, then, when
# the row succeeded (fenced by its attempt, no cancel asked) and the chain, locked, still runs and
# plans one job of a known type next, that job is inserted, holding its early lock
# (decisions.early_lock_key) to the transaction's end, as INSERT_EARLY_SQL does. The next job's
# queue, priority and attempts are its type's (`@TYPES@`: the registry's table, (key, name,
# queue, priority, max_attempts) for each name and alias, written into the statement once per
# change of the registry), its input the plan's (validated when the chain was planned). A step
# whose type's queue is one of `local` (the worker may claim it in the outcome's transaction,
# jobs.engine.handoff), a group, the end of the plan, an unknown type (one an adapter declares
# lazily), a cancelled row or a chain no longer running: nothing inserted, and the row comes back
# as SUCCEED_IN_CHAIN_SQL's (with the plan when asked), for the general path to go on with in
# the same transaction. A fenced-out row (lost lease): no row back, nothing written.
# The next step is claimed in the statement, for the worker named (`here`), when its queue is one
# this worker takes itself (jobs.engine.handoff: the local handoff, decided as
# decisions.hands_off_here) and neither a limit (the claim is then jobs.engine.limits') nor a pause
# holds it: inserted running, its first attempt this worker's, as store.claim would have left it,
# and no message, no early lock (nothing can claim it before the commit). A step on such a queue
# that is limited or paused is not inserted here: the general path goes on with it.
SUCCEED_CONTINUING_SQL = f"""
WITH done AS ({SUCCEED_UPDATE.strip()}),
     chain AS (SELECT steps, status, steps -> (%s::int + 1) AS step FROM jobs_chain WHERE id = %s FOR UPDATE),
     here AS (SELECT %s::text[] AS queues, %s::text AS worker, %s::float8 AS lease),
     types (key, name, queue, priority, max_attempts, limited) AS (VALUES @TYPES@),
     following AS (
       SELECT types.name, types.queue, types.priority, types.max_attempts, chain.step -> 'input' AS input,
              types.queue = ANY(here.queues) AS claimed
         FROM done, chain, types, here
        WHERE done.status = 'succeeded' AND chain.status = 'running' AND jsonb_typeof(chain.step) = 'object'
          AND NOT chain.step ? 'group' AND types.key = chain.step ->> 'type'
          AND (types.queue <> ALL(here.queues)
               OR (NOT types.limited AND NOT EXISTS (
                     SELECT 1 FROM jobs_pause p
                      WHERE (p.kind = 'queue' AND p.name = types.queue) OR (p.kind = 'type' AND p.name = types.name))))),
     inserted AS (
       INSERT INTO jobs_job (type, queue, input, priority, max_attempts, chain_id, chain_index, parent_id,
                             run_after, published_at, status, attempt, worker, started_at, lease_expires_at,
                             progress, progress_message, cancel_requested, error, created_at, updated_at)
       SELECT f.name, f.queue, COALESCE(f.input, '{{}}'::jsonb), f.priority, f.max_attempts, done.chain_id,
              %s::int + 1, done.id, now(), now(),
              CASE WHEN f.claimed THEN 'running' ELSE 'pending' END, CASE WHEN f.claimed THEN 1 ELSE 0 END,
              CASE WHEN f.claimed THEN here.worker ELSE '' END, CASE WHEN f.claimed THEN now() END,
              CASE WHEN f.claimed THEN now() + make_interval(secs => here.lease) END,
              0, '', false, '', now(), now()
         FROM following f, done, here
       RETURNING id, queue, priority, type, chain_id, chain_index, status = 'running' AS claimed, input, attempt,
                 max_attempts, parent_id, idempotency_key, member, results_count, trace_context, created_at,
                 started_at, worker, errors)
SELECT done.id, done.type, done.status, done.chain_id, done.input,
       CASE WHEN inserted.id IS NULL AND %s THEN chain.steps END, chain.status,
       inserted.id, inserted.queue, inserted.priority, inserted.type, inserted.chain_id, inserted.chain_index,
       CASE WHEN inserted.id IS NOT NULL AND NOT inserted.claimed THEN
            pg_advisory_xact_lock({decisions.EARLY_LOCK_SPACE}, ((inserted.id %% 2147483647) - 1073741823)::int4) END,
       {NOTIFY_JOB},
       inserted.claimed, inserted.input, inserted.attempt, inserted.max_attempts, inserted.parent_id,
       inserted.idempotency_key, inserted.member, inserted.results_count, inserted.trace_context,
       inserted.created_at, inserted.started_at, inserted.worker, inserted.errors
  FROM done CROSS JOIN chain LEFT JOIN inserted ON true
"""


def succeed_continuing_sql(types: Sequence[tuple[str, str, str, int, int, bool]]) -> str:
    """SUCCEED_CONTINUING_SQL with the types' table written in: (key, name, queue, priority,
    max_attempts, limited) for each name and alias (at least one)."""
    def literal(value: str) -> str:  # a string constant; % doubled for the placeholders' syntax
        return "'" + value.replace("'", "''").replace("%", "%%") + "'"

    rows = ", ".join(f"({literal(key)}, {literal(name)}, {literal(queue)}, {int(priority)}, {int(attempts)}, {bool(limited)})"
                     for key, name, queue, priority, attempts, limited in types)
    return SUCCEED_CONTINUING_SQL.replace("@TYPES@", rows)


def succeed_continuing(
    sql: str, job_id: int, attempt: int, output_json: str, chain_id: int, index: int, local: Sequence[str],
    plan: bool = True, worker: str = "", lease_seconds: float = 0.0,
) -> tuple[Succeeded, Message | None, Claimed | None] | None:
    """Record the success of step `index` (one job) of chain `chain_id` and insert its next step
    in the same statement (`sql`: succeed_continuing_sql's), in the caller's transaction on
    `default`: (the row as `succeed` returns it, the next step's message, its early lock held to
    the end of the transaction, or, on one of the `local` queues, the next step claimed for
    `worker` with a lease of `lease_seconds`, as `claim` returns it); neither when nothing was
    inserted (the caller goes on as after `succeed`). None: the attempt lost its lease, nothing
    written."""
    with prepared() as cursor:
        cursor.execute(sql, [output_json, job_id, attempt, index, chain_id, list(local), worker, lease_seconds, index, plan])
        row = cursor.fetchone()
    if row is None:
        return None
    done = Succeeded._make(row[:7])
    done = done._replace(input=_json(done.input), chain_steps=_json(done.chain_steps))
    if row[7] is None:
        return done, None, None
    if not row[15]:
        return done, Message._make(row[7:13]), None
    # (id, type, input, attempt, max_attempts, chain_id, chain_index, parent_id, idempotency_key,
    #  queue, waited, member, results_count, trace_context, created_at, started_at, worker, errors)
    inserted_id, queue, _, job_type, chain, chain_index = row[7:13]
    input_, attempt_, max_attempts, parent_id, key, member, results_count, trace, created, started, by, errors = row[16:28]
    return done, None, _claimed((inserted_id, job_type, input_, attempt_, max_attempts, chain, chain_index, parent_id, key,
                                 queue, 0.0, member, results_count, trace, created, started, by, errors))


# `p.permanent`: the failure cannot change with a retry (jobs.Permanent): this attempt is the last.
_FAILED_LAST = f"({LAST} OR p.permanent)"
FAIL_SQL = _notifying(f"""
UPDATE jobs_job SET status = {ENDED.format(again="failed", last=_FAILED_LAST)},
       finished_at = CASE WHEN {ENDS.format(last=_FAILED_LAST)} THEN now() END,
       run_after = now() + make_interval(secs => %s), published_at = NULL,
       lease_expires_at = NULL, error = p.error, {_error_entry("p.error")}, updated_at = now()
  FROM (SELECT %s::text AS error, %s::bool AS permanent) p
 WHERE id = %s AND (status = 'running') IS TRUE AND attempt = %s
RETURNING id, type, status, chain_id, chain_index, member
""")


def fail(job_id: int, attempt: int, error: str, delay: float, permanent: bool = False) -> Ended | None:
    """Record a failed attempt: retried after `delay` seconds, dead, or cancelled (ENDED).
    `permanent`: no retry can change it (jobs.Permanent): dead now, whatever attempts are left."""
    with prepared() as cursor:
        cursor.execute(FAIL_SQL, [delay, text(error)[-10_000:], permanent, job_id, attempt])  # (p: error, permanent)
        row = cursor.fetchone()
    return None if row is None else Ended._make(row[:-1])


# --- Recovery: relay marks, the reaper, hand-back -------------------------------------------------

# Due rows never published (delayed jobs, retries after backoff, reaped rows, booked rate slots),
# through job_unpublished_idx; a row waiting for a concurrency slot is not due by time. A booked
# rate slot's message goes at priority 0, ahead of its queue's backlog: its row has waited its
# turn already, and a slot missed behind other messages is lost (jobs.engine.limits).
RELAY_DUE_SQL = f"""
WITH due AS (
  SELECT id FROM jobs_job
   WHERE {RUNNABLE} AND published_at IS NULL AND held IN ('', 'rate') AND run_after <= now()
   ORDER BY run_after LIMIT %s FOR UPDATE SKIP LOCKED)
UPDATE jobs_job j SET published_at = now() FROM due WHERE j.id = due.id
RETURNING j.id, j.queue, CASE WHEN j.held = 'rate' THEN 0 ELSE j.priority END, j.type, j.chain_id,
          j.chain_index
"""

# Rows published long ago and still not claimed: their message may be lost (Redis restarted,
# a crash between commit and publish). A duplicate message is harmless: it finds nothing to claim.
RELAY_STALE_SQL = f"""
WITH stale AS (
  SELECT id FROM jobs_job
   WHERE {RUNNABLE} AND published_at < now() - make_interval(secs => %s)
     AND run_after <= now()
     AND (queue <> ALL(%s) OR published_at < now() - make_interval(secs => %s))
   ORDER BY published_at LIMIT %s FOR UPDATE SKIP LOCKED)
UPDATE jobs_job j SET published_at = now() FROM stale WHERE j.id = stale.id
RETURNING j.id, j.queue, j.priority, j.type, j.chain_id, j.chain_index
"""


# Ids a worker gives back from a message it has not finished (jobs.tasks): those still to run,
# marked published again (the relay's clock starts anew) for the new message.
GIVE_BACK_SQL = f"""
UPDATE jobs_job SET published_at = now()
 WHERE id = ANY(%s) AND {RUNNABLE_BY_ID}
RETURNING id, queue, priority, type, chain_id, chain_index
"""


def give_back(ids: list[int]) -> list[Message]:
    """The messages of those of `ids` still to run, marked published now (jobs.tasks: a batch
    message's rest, for another worker)."""
    with connections[CLAIMS].cursor() as cursor:
        cursor.execute(GIVE_BACK_SQL, [ids])
        return sorted(_messages(cursor), key=lambda m: ids.index(m.job_id))


def mark_due(batch: int) -> list[Message]:
    """Mark due, never-published rows as published now; return their messages to send."""
    with connections[CLAIMS].cursor() as cursor:
        cursor.execute(RELAY_DUE_SQL, [batch])
        return _messages(cursor)


def mark_stale(stale_seconds: float, busy_queues: list[str], busy_seconds: float, batch: int) -> list[Message]:
    """Mark rows published over `stale_seconds` ago and still unclaimed as published again; in a
    queue whose Redis list still holds messages (`busy_queues`), over `busy_seconds` ago."""
    with connections[CLAIMS].cursor() as cursor:
        cursor.execute(RELAY_STALE_SQL, [stale_seconds, busy_queues, busy_seconds, batch])
        return _messages(cursor)


EXPIRED_SQL = """
SELECT id FROM jobs_job WHERE status = 'running' AND lease_expires_at < now()
 ORDER BY lease_expires_at LIMIT %s
"""

_REAPED = "'lease expired: the worker running attempt ' || attempt || ' (' || worker || ') was lost'"
# A running row whose lease expired: its worker died. Back to pending (or dead, or cancelled).
REAP_SQL = _notifying(f"""
UPDATE jobs_job SET status = {ENDED.format(again="pending", last=LAST)},
       finished_at = CASE WHEN {ENDS.format(last=LAST)} THEN now() END, crashes = crashes + 1,
       error = {_REAPED}, {_error_entry(_REAPED)},
       run_after = now(), published_at = NULL, lease_expires_at = NULL, updated_at = now()
 WHERE id = (SELECT id FROM jobs_job
              WHERE id = %s AND (status = 'running') IS TRUE AND lease_expires_at < now()
              FOR UPDATE SKIP LOCKED)
RETURNING id, type, status, chain_id, chain_index, member
""")


def expired(batch: int) -> list[int]:
    """Running rows whose lease expired, oldest first (read only: reap each with `reap`)."""
    with connections["default"].cursor() as cursor:
        cursor.execute(EXPIRED_SQL, [batch])
        return [row[0] for row in cursor.fetchall()]


def reap(job_id: int) -> Ended | None:
    """Settle one running row whose lease expired (ENDED); None if another reaper took it, or its
    worker renewed it meanwhile. The caller settles its chain in the same transaction."""
    with connections["default"].cursor() as cursor:
        cursor.execute(REAP_SQL, [job_id])
        row = cursor.fetchone()
    return None if row is None else Ended._make(row[:-1])


# Why a worker's running rows are handed back decides what their interrupted attempt costs:
# - `drained`: the supervisor stopped the worker on purpose (a shutdown or restart the operator
#   asked for, past its grace period): the attempt is not counted (one more is granted; its number
#   is not reused);
# - otherwise its process died by itself (a segfault, the OOM killer, a handler's os._exit): the
#   job may well be what killed it, so the attempt counts, as the reaper's would (ENDED), and the
#   crash too (`crashes`): after its last attempt it is dead, saying so, never crash-looping.
# Either way a row whose cancel was asked ends cancelled rather than waiting to run again.
_HANDED_BACK = """CASE WHEN p.drained THEN 'handed back: worker ' || p.node || ' was stopped before finishing'
                    ELSE 'worker process died while running this job (' || (crashes + 1)
                         || CASE WHEN crashes = 0 THEN ' time' ELSE ' times' END
                         || '; last: attempt ' || attempt || ' on ' || worker || ')' END"""
HAND_BACK_SQL = _notifying(f"""
UPDATE jobs_job SET status = CASE WHEN p.drained AND NOT cancel_requested THEN 'pending'
                                  ELSE {ENDED.format(again="pending", last=LAST)} END,
       finished_at = CASE WHEN cancel_requested OR (NOT p.drained AND {LAST}) THEN now() END,
       max_attempts = max_attempts + CASE WHEN p.drained THEN 1 ELSE 0 END,
       crashes = crashes + CASE WHEN p.drained THEN 0 ELSE 1 END,
       lease_expires_at = NULL, published_at = NULL, run_after = now(), updated_at = now(),
       error = {_HANDED_BACK}, {_error_entry(_HANDED_BACK)}
  FROM (SELECT %s::bool AS drained, %s::text AS node) p
 WHERE status = 'running' AND worker LIKE %s
RETURNING id, type, status, chain_id, chain_index, member
""")


def worker_name(node: str, pid: int, instance: str = "") -> str:
    """What a claim writes in `worker`: the Celery node, the process, and the supervisor's token
    for this start of the node (two starts with one node name are told apart by it)."""
    return f"{node}/{pid}/{instance}" if instance else f"{node}/{pid}"


def hand_back(node: str, instance: str = "", drained: bool = False) -> list[Ended]:
    """Return the running rows of `node` (of that start of it, given its instance token) to
    pending, or end them cancelled when a cancel was asked, or dead when the worker crashed
    (not `drained`) during their last attempt; the caller settles the ended ones."""
    like = node.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "/%"
    if instance:
        like += "/" + instance.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    with connections["default"].cursor() as cursor:
        cursor.execute(HAND_BACK_SQL, [drained, node, like])
        return [Ended._make(row[:-1]) for row in cursor.fetchall()]


# --- An operator's decisions: cancel and retry ----------------------------------------------------

CANCEL_WAITING_SQL = _notifying("""
UPDATE jobs_job SET status = 'cancelled', cancel_requested = true, finished_at = now(),
       updated_at = now()
 WHERE id = %s AND status IN ('pending', 'failed')
RETURNING id, type, status, chain_id, chain_index, member
""")

CANCEL_RUNNING_SQL = """
UPDATE jobs_job SET cancel_requested = true, updated_at = now()
 WHERE id = %s AND (status = 'running') IS TRUE
"""


def cancel(job_id: int) -> Ended | bool:
    """Cancel a waiting row at once (returned, for the caller to pass to ending.ended), or ask a running one
    to stop (True). False: the row had already finished."""
    with connections["default"].cursor() as cursor:
        cursor.execute(CANCEL_WAITING_SQL, [job_id])
        row = cursor.fetchone()
        if row is not None:
            return Ended._make(row[:-1])
        cursor.execute(CANCEL_RUNNING_SQL, [job_id])
        return cursor.rowcount > 0


# Due now, except a row cancelled before its time came: it keeps its later run_after.
RETRY_SQL = """
WITH old AS (SELECT id, CASE WHEN status = 'cancelled' THEN GREATEST(run_after, now())
                             ELSE now() END AS due
               FROM jobs_job WHERE id = %s AND status IN ('dead', 'failed', 'cancelled') FOR UPDATE)
UPDATE jobs_job j SET status = 'pending', cancel_requested = false, held = '',
       max_attempts = attempt + %s + 1, run_after = old.due,
       published_at = CASE WHEN old.due <= now() THEN now() END,
       finished_at = NULL, updated_at = now()
  FROM old WHERE j.id = old.id
RETURNING j.chain_id, j.chain_index, j.member
"""


def retry(job_id: int, retries: int) -> bool:
    """Give an ended (or failed) row `retries` more attempts; reopen its chain, unless it is a
    member of a group that has already handed its results on (one that collects failures): the
    chain went on without waiting for it, and its new run changes nothing there."""
    with connections["default"].cursor() as cursor:
        cursor.execute(RETRY_SQL, [job_id, retries])
        row = cursor.fetchone()
    if row is None:
        return False
    chain_id, index, member = row
    released = chain_id is not None and member is not None and step_released(chain_id, index + 1)
    if decisions.retry_reopens_chain(chain_id, member, released):
        with connections["default"].cursor() as cursor:
            cursor.execute(REOPEN_CHAIN_SQL, [chain_id])
    return True


REOPEN_CHAIN_SQL = "UPDATE jobs_chain SET status = 'running', finished_at = NULL WHERE id = %s"



# --- Chains -------------------------------------------------------------------------------------


FINISH_CHAIN_SQL = f"""
WITH done AS (UPDATE jobs_chain SET status = %s, finished_at = now() WHERE id = %s AND status = 'running'
              RETURNING id)
SELECT {NOTIFY_CHAIN} FROM done
"""


def finish_chain(chain_id: int, status: str) -> None:
    """End a running chain (a chain already ended keeps its first outcome)."""
    with connections["default"].cursor() as cursor:
        cursor.execute(FINISH_CHAIN_SQL, [status, chain_id])


def lock_chain(chain_id: int) -> tuple[list[dict[str, Any]], str] | None:
    """Lock the chain's row until the transaction ends; return its plan and status (None: gone).

    Every outcome of a chain's job takes this lock (succeed in its own statement, a member's end
    outside a run through chain_step, which reads only what the fan-in needs), so the ends of one
    group's members are recorded one after the other: the last to take the lock sees every other
    member's end, and releases the next step."""
    with prepared() as cursor:
        cursor.execute("SELECT steps, status FROM jobs_chain WHERE id = %s FOR UPDATE", [chain_id])
        row = cursor.fetchone()
    return None if row is None else (_json(row[0]), row[1])


class ChainStep(NamedTuple):
    """What a group's fan-in reads of its chain's plan, rather than the whole plan."""

    #: The group step's rule ("fail" or "collect").
    on_failure: str
    status: str
    #: How many steps the plan has.
    length: int
    #: The plan of the step after it (None past the last).
    next: dict[str, Any] | None


CHAIN_STEP_SQL = """
SELECT COALESCE(steps -> %s::int ->> 'on_failure', 'fail'), status, jsonb_array_length(steps),
       CASE WHEN %s THEN steps -> (%s::int + 1) END
  FROM jobs_chain WHERE id = %s
"""


def chain_step(chain_id: int, index: int, lock: bool = False, next_step: bool = True) -> ChainStep | None:
    """Step `index` of the chain's plan as a group's fan-in reads it (None: the chain is gone),
    with the plan of the step after it unless `next_step` is False; `lock` locks the chain's row
    until the transaction ends."""
    with prepared() as cursor:
        cursor.execute(CHAIN_STEP_SQL + (" FOR UPDATE" if lock else ""), [index, next_step, index, chain_id])
        row = cursor.fetchone()
    return None if row is None else ChainStep(row[0], row[1], row[2], _json(row[3]))


GROUP_OPEN_SQL = """
SELECT count(*) FILTER (WHERE status NOT IN ('succeeded', 'dead', 'cancelled')) FROM jobs_job
 WHERE chain_id = %s AND chain_index = %s AND member IS NOT NULL
"""
GROUP_ENDS_SQL = """
SELECT id, member, status, CASE WHEN status = 'succeeded' THEN '' ELSE error END FROM jobs_job
 WHERE chain_id = %s AND chain_index = %s AND member IS NOT NULL ORDER BY member
"""
STEP_RELEASED_SQL = "SELECT EXISTS (SELECT 1 FROM jobs_job WHERE chain_id = %s AND chain_index = %s)"


def group_ends(chain_id: int, index: int) -> list[Member] | None:
    """The members of group step `index`, in member order, once every one has ended (succeeded,
    dead or cancelled); None while one still may run. Read under the chain's lock (job_member_idx)."""
    with prepared() as cursor:
        cursor.execute(GROUP_OPEN_SQL, [chain_id, index])
        if cursor.fetchone()[0]:
            return None
        cursor.execute(GROUP_ENDS_SQL, [chain_id, index])
        return [Member._make(row) for row in cursor.fetchall()]


# The members' outputs are copied inside PostgreSQL (never through the worker), once for the step:
# every job of step `index + 1` reads them there. A member that did not succeed (in a group that
# collects failures) gets the entry the caller made for it.
HAND_ON_SQL = """
INSERT INTO jobs_stepresult (chain_id, step, member, value)
SELECT j.chain_id, j.chain_index + 1, j.member,
       CASE WHEN j.status = 'succeeded' THEN COALESCE(j.output, 'null'::jsonb) ELSE f.entry::jsonb END
  FROM jobs_job j LEFT JOIN unnest(%s::int[], %s::text[]) AS f(member, entry) ON f.member = j.member
 WHERE j.chain_id = %s AND j.chain_index = %s AND j.member IS NOT NULL
    ON CONFLICT DO NOTHING
"""


def hand_on(chain_id: int, index: int, failures: dict[int, Any]) -> int:
    """Store what group step `index` hands on to step `index + 1`: each member's output, in the
    members' place (`failures`: the entry of each member that did not succeed); return how many
    entries the step has. In the outcome transaction of the group's last member."""
    members = list(failures)
    with prepared() as cursor:
        cursor.execute(HAND_ON_SQL, [members, [json.dumps(failures[m]) for m in members], chain_id, index])
    return step_results_count(chain_id, index + 1)


def step_results_count(chain_id: int, step: int) -> int:
    with prepared() as cursor:
        cursor.execute("SELECT count(*) FROM jobs_stepresult WHERE chain_id = %s AND step = %s", [chain_id, step])
        return cursor.fetchone()[0]


STEP_RESULTS_SQL = """
SELECT value FROM jobs_stepresult WHERE chain_id = %s AND step = %s AND member >= %s ORDER BY member LIMIT %s
"""


def step_results(chain_id: int, step: int, offset: int = 0, limit: int | None = None) -> list[Any]:
    """What the group before step `step` handed on, in member order (from entry `offset`, at most
    `limit` of them; all by default)."""
    with prepared() as cursor:
        cursor.execute(STEP_RESULTS_SQL, [chain_id, step, offset, limit])
        return [_json(row[0]) for row in cursor.fetchall()]


def step_released(chain_id: int, index: int) -> bool:
    """Whether step `index` of the chain has a job already."""
    with prepared() as cursor:
        cursor.execute(STEP_RELEASED_SQL, [chain_id, index])
        return cursor.fetchone()[0]


SET_CHAIN_STEPS_SQL = "UPDATE jobs_chain SET steps = %s::jsonb WHERE id = %s"


def set_chain_steps(chain_id: int, steps: list[dict[str, Any]]) -> None:
    """Write a chain's plan (a handler's continuations spliced in: decisions.spliced)."""
    with connections["default"].cursor() as cursor:
        cursor.execute(SET_CHAIN_STEPS_SQL, [json.dumps(steps), chain_id])


def start_chain_from(job_id: int, steps: list[dict[str, Any]]) -> int:
    """A lone job that continued becomes step 0 of a new chain; return the chain's id."""
    chain_id = Chain.objects.create(steps=steps).pk
    Job.objects.filter(pk=job_id).update(chain_id=chain_id, chain_index=0)
    return chain_id


# --- Retention ----------------------------------------------------------------------------------
#
# A job outside a chain goes once it ended before the cutoff. A chain's jobs go only with their
# chain, once the chain has ended before the cutoff and none of its jobs may still run or ended
# after it (a member left to finish after the chain failed, a member retried after its group
# handed on): deleting a member of a chain that still runs would hand its group's next step short,
# misaligned results (the fan-in reads the members' rows), and a chain's page would lose steps.


def delete_finished(cutoff: dt.datetime, batch: int) -> int:
    """Delete one batch of rows outside any chain that ended before `cutoff`; return how many.

    The cleanup's statement before issue 29 (Django's delete(): every row loaded, the batch found
    again from the start of the table each time): `delete_finished_from` replaced it; kept as
    bench/history.py's "before"."""
    from jobs.models import FINISHED

    ended = Job.objects.filter(chain__isnull=True, status__in=FINISHED, finished_at__lt=cutoff)
    ids = list(ended.values_list("id", flat=True)[:batch])
    return Job.objects.filter(id__in=ids).delete()[0] if ids else 0


# Retention at the rate of the work (issue 29): one batch of the oldest finished rows outside any
# chain, by job_finished_idx from where the last batch stopped (`finished_at >= %s`: deleted index
# entries are not walked again, even while a long transaction keeps them from being cleaned), rows
# a concurrent statement holds skipped, not waited for.
OLD_FINISHED_SQL = """
SELECT id, finished_at FROM jobs_job
 WHERE finished_at >= %s AND finished_at < %s AND chain_id IS NULL
   AND status IN ('succeeded', 'dead', 'cancelled')
 ORDER BY finished_at LIMIT %s
   FOR UPDATE SKIP LOCKED
"""
DELETE_JOBS_SQL = "DELETE FROM jobs_job WHERE id = ANY(%s)"
#: Where the first batch of a cleanup run starts.
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def delete_finished_from(cutoff: dt.datetime, after: dt.datetime, batch: int) -> tuple[int, dt.datetime | None]:
    """Delete one batch of rows outside any chain that ended in [after, cutoff), oldest first;
    return (how many, the last one's finished_at: the next batch's `after`; None when none).

    Two statements and no rows loaded into Python (Django's delete() loads each row to delete it):
    the references to the rows a relation clears on delete (SET_NULL: a job's children, an event's
    deliveries) are cleared by one UPDATE each, then one DELETE. A relation that would cascade or
    protect falls back to Django's delete() for the batch."""
    from django.db import models, transaction

    with transaction.atomic():
        with connections["default"].cursor() as cursor:
            cursor.execute(OLD_FINISHED_SQL, [after, cutoff, batch])
            rows = cursor.fetchall()
        if not rows:
            return 0, None
        ids = [row[0] for row in rows]
        last = max(row[1] for row in rows)
        # Every relation to a job, hidden ones too (related_name="+"), as Django's delete() finds them.
        relations = [
            rel for rel in Job._meta.get_fields(include_hidden=True)
            if rel.auto_created and not rel.concrete and (rel.one_to_one or rel.one_to_many)
            and rel.on_delete is not models.DO_NOTHING
        ]
        if any(rel.on_delete is not models.SET_NULL for rel in relations):
            return Job.objects.filter(id__in=ids).delete()[0], last
        for rel in relations:
            # _base_manager: every row, as delete() updates them (a default manager may filter).
            referring = rel.related_model._base_manager.filter(**{f"{rel.field.name}__in": ids})  # noqa: SLF001
            if rel.related_model is Job:
                referring = referring.exclude(pk__in=ids)  # a child deleted in the same batch
            referring.update(**{rel.field.name: None})
        with connections["default"].cursor() as cursor:
            cursor.execute(DELETE_JOBS_SQL, [ids])
            return cursor.rowcount, last


ENDED_CHAINS_SQL = """
SELECT c.id FROM jobs_chain c
 WHERE c.status <> 'running' AND c.finished_at < %s
   AND NOT EXISTS (SELECT 1 FROM jobs_job j
                    WHERE j.chain_id = c.id
                      AND (j.status NOT IN ('succeeded', 'dead', 'cancelled')
                           OR j.finished_at IS NULL OR j.finished_at >= %s))
 ORDER BY c.finished_at LIMIT %s
"""


def delete_ended_chains(cutoff: dt.datetime, batch: int) -> tuple[int, int]:
    """Delete one batch of chains that ended before `cutoff`, every job of theirs ended before it
    too, with those jobs; return (chains, jobs) deleted."""
    with connections["default"].cursor() as cursor:
        cursor.execute(ENDED_CHAINS_SQL, [cutoff, cutoff, batch])
        ids = [row[0] for row in cursor.fetchall()]
    if not ids:
        return 0, 0
    _, deleted = Chain.objects.filter(id__in=ids).delete()  # its jobs with it (CASCADE)
    return deleted.get("jobs.Chain", 0), deleted.get("jobs.Job", 0)


# --- Tracing: an attempt no worker ended (jobs.engine.tracing; read only while tracing is on) -----

LOST_ATTEMPTS_SQL = """
SELECT id, type, queue, attempt, worker, started_at, trace_context
  FROM jobs_job WHERE id = ANY(%s::bigint[]) AND trace_context IS NOT NULL
"""


class LostAttempt(NamedTuple):
    id: int
    type: str
    queue: str
    attempt: int
    worker: str
    started_at: Any
    trace_context: dict[str, str]


def lost_attempts(job_ids: Sequence[int]) -> list[LostAttempt]:
    """The traced rows among `job_ids` (just reaped or handed back): the attempt a dead worker
    never ended, for its span (the recovery's, in its transaction)."""
    with connections["default"].cursor() as cursor:
        cursor.execute(LOST_ATTEMPTS_SQL, [list(job_ids)])
        return [LostAttempt(*row[:-1], _json(row[-1])) for row in cursor.fetchall()]


# --- A multi-id message: claims in chunks, outcomes together (jobs.engine.batchrun) ---------------
#
# A worker running a message of several ids claims the next few in one statement and commits the
# successes of the short jobs it ran meanwhile in the same round trip (one implicit transaction on
# `default`, durable), instead of a claim and an outcome per job. Fenced as the one-job statements
# are: an outcome only for the attempt that ran (`attempt = o.attempt`, the row still running); a
# claim only of runnable, due rows not locked by another claimer (SKIP LOCKED).

# Only the first id of a chunk (the one about to run) is claimed on its last attempt: an id claimed
# ahead of its run is charged an attempt by the reaper or a hand-back if this process dies before
# it starts, so it is claimed ahead only when that charge leaves it an attempt to run.
CLAIM_MANY_SQL = f"""
UPDATE jobs_job SET status = 'running', attempt = attempt + 1, worker = %s, started_at = now(),
       lease_expires_at = now() + make_interval(secs => %s), updated_at = now(), finished_at = NULL,
       held = ''
 WHERE id IN (SELECT id FROM jobs_job
               WHERE id = ANY(%s::bigint[]) AND {RUNNABLE_BY_ID} AND run_after <= now()
                 AND type <> ALL(%s::text[]) AND NOT {PAUSED} AND (id = %s OR attempt + 1 < max_attempts)
               FOR UPDATE SKIP LOCKED)
RETURNING {_CLAIMED}
"""

# SUCCEED_SQL for several runs at once (no chain: runner's one-statement success), each fenced by
# its attempt; a run that asked nothing else and whose row was cancelled meanwhile ends cancelled.
SUCCEED_MANY_SQL = _notifying("""
UPDATE jobs_job j SET status = CASE WHEN j.cancel_requested THEN 'cancelled' ELSE 'succeeded' END,
       output = o.output::jsonb, progress = 100, finished_at = now(), updated_at = now(),
       lease_expires_at = NULL, error = ''
  FROM unnest(%s::bigint[], %s::int[], %s::text[]) AS o(id, attempt, output)
 WHERE j.id = o.id AND (j.status = 'running') IS TRUE AND j.attempt = o.attempt
RETURNING j.id, j.type, j.status
""")


class Done(NamedTuple):
    """A success recorded by `succeed_many`: succeeded, or cancelled (asked while it ran)."""

    id: int
    type: str
    status: str


def _in_order(ids: Sequence[int], rows: list[Any]) -> list[Claimed]:
    place = {job_id: i for i, job_id in enumerate(ids)}
    return sorted((_claimed(row) for row in rows), key=lambda c: place[c.id])


def _claim_many_params(ids: Sequence[int], worker: str, lease_seconds: float, limited: Sequence[str]) -> list[Any]:
    return [worker, lease_seconds, list(ids), list(limited), ids[0]]


def _succeed_many_params(outcomes: Sequence[tuple[int, int, str]]) -> list[Any]:
    return [[o[0] for o in outcomes], [o[1] for o in outcomes], [o[2] for o in outcomes]]


def _done(rows: list[Any]) -> list[Done]:
    return [Done._make(row[:3]) for row in rows]


def claim_many(ids: Sequence[int], worker: str, lease_seconds: float, limited: Sequence[str] = ()) -> list[Claimed]:
    """Claim those of `ids` that are runnable, due, not locked, not paused and not of a `limited`
    type, in one statement on `claims`, in the order of `ids`; all but the first only when they
    have an attempt to spare (CLAIM_MANY_SQL). The rest are left as they are."""
    if not ids:
        return []
    with prepared(CLAIMS) as cursor:
        cursor.execute(CLAIM_MANY_SQL, _claim_many_params(ids, worker, lease_seconds, limited))
        return _in_order(ids, cursor.fetchall())


def succeed_many(outcomes: Sequence[tuple[int, int, str]]) -> list[Done]:
    """Record the successes of these (job id, attempt, output JSON) runs in one statement on
    `default` (durable); a run missing from the answer lost its row: nothing recorded for it."""
    if not outcomes:
        return []
    with prepared() as cursor:
        cursor.execute(SUCCEED_MANY_SQL, _succeed_many_params(outcomes))
        return _done(cursor.fetchall())


def succeed_many_and_claim(
    outcomes: Sequence[tuple[int, int, str]], ids: Sequence[int], worker: str, lease_seconds: float, limited: Sequence[str] = ()
) -> tuple[list[Done], list[Claimed]]:
    """`succeed_many` and `claim_many` in one round trip and one transaction on `default`: both
    statements pipelined with no Sync between them (an implicit transaction, committed durably
    at the Sync): the outcomes and the claim commit together or not at all. Outside autocommit,
    or with nothing prepared (a pooler), the two run one after the other."""
    conn = connections["default"]
    if not outcomes or not ids or not settings.DATABASE_PREPARED or conn.in_atomic_block:
        return succeed_many(outcomes), claim_many(ids, worker, lease_seconds, limited)
    conn.ensure_connection()
    conn.validate_no_broken_transaction()
    pg = conn.connection
    if pg.prepare_threshold is None:  # as `prepared`: on only when asked (prepare=True)
        pg.prepare_threshold = 2**31 - 1
    cursor_class = tracing.statement_cursor or psycopg.Cursor
    with conn.wrap_database_errors, cursor_class(pg) as done_cursor, cursor_class(pg) as claim_cursor:
        with pg.pipeline():
            done_cursor.execute(SUCCEED_MANY_SQL, _succeed_many_params(outcomes), prepare=True)
            claim_cursor.execute(CLAIM_MANY_SQL, _claim_many_params(ids, worker, lease_seconds, limited), prepare=True)
        return _done(done_cursor.fetchall()), _in_order(ids, claim_cursor.fetchall())


# Ids claimed ahead of their run and not started, handed back (the message gives its rest back,
# jobs.tasks): runnable again as they were, the attempt the claim counted given back, marked
# published for the new message. One whose cancel was asked meanwhile is kept (it runs here and
# ends cancelled, as a cancelled running job does).
RELEASE_CLAIMED_SQL = """
UPDATE jobs_job j SET status = CASE WHEN j.error <> '' THEN 'failed' ELSE 'pending' END,
       attempt = j.attempt - 1, started_at = NULL, lease_expires_at = NULL, published_at = now(),
       updated_at = now()
  FROM unnest(%s::bigint[], %s::int[]) AS r(id, attempt)
 WHERE j.id = r.id AND (j.status = 'running') IS TRUE AND j.attempt = r.attempt AND NOT j.cancel_requested
RETURNING j.id, j.queue, j.priority, j.type, j.chain_id, j.chain_index
"""


def release_claimed(runs: Sequence[tuple[int, int]]) -> list[Message]:
    """Hand back these (job id, attempt) claims not started; the messages of those released, in
    the order of `runs`."""
    if not runs:
        return []
    with prepared(CLAIMS) as cursor:
        cursor.execute(RELEASE_CLAIMED_SQL, [[r[0] for r in runs], [r[1] for r in runs]])
        order = {run[0]: i for i, run in enumerate(runs)}
        return sorted(_messages(cursor), key=lambda m: order[m.job_id])
