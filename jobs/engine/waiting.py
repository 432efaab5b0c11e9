"""Waiting for a job or a chain to end, without polling: PostgreSQL's LISTEN/NOTIFY.

Celery users wait with `AsyncResult.get(timeout=...)`; here the row is the result, so a waiter
listens on the channel that every statement ending a job or a chain notifies at its commit
(`store.JOB_ENDED`, `store.CHAIN_ENDED`, payload: the id), on a connection of its own:

1. take a shared advisory lock on the id (`store.waiter_key`): the ending statement notifies only
   while a waiter holds it, and an end committing at that moment is waited for;
2. LISTEN (autocommit: it takes effect at once), then read the row once: it may have ended before
   (nothing would be heard then);
3. wait for notifications until one names the id or the time is up; then read the row (through
   Django: the answer). A retry that reopened it meanwhile makes `wait` listen again.

One connection per wait, closed when it ends: for sync callers (a worker's code, a script), which
wait one at a time. An HTTP server does not wait here: each of its processes waits for all its
requests on one listening connection (jobs/interfaces/listener.py), the same three steps per waiter.
"""
from __future__ import annotations

import math
import time
from contextlib import contextmanager
from typing import Callable, Iterator, TypeVar

import psycopg
import psycopg.errors
from project import pooler

from jobs.engine import store
from jobs.models import FINISHED, Chain, ChainStatus, Job

M = TypeVar("M", Job, Chain)

#: Per kind: the channel its end is notified on, and the query telling whether the row has ended
#: (no row: it does not exist, or the transaction that wrote it has not committed).
JOB = (store.JOB_ENDED, "SELECT status IN ('succeeded', 'dead', 'cancelled') FROM jobs_job WHERE id = %s")
CHAIN = (store.CHAIN_ENDED, "SELECT status <> 'running' FROM jobs_chain WHERE id = %s")


class WaitTimeout(TimeoutError):
    """The job or chain had not ended when the wait's time ran out (like Celery's
    `celery.exceptions.TimeoutError`, a `TimeoutError`). `row` is it as it was then: a `Job` for
    `wait`, a `Chain` for `wait_chain`."""

    def __init__(self, message: str, row: Job | Chain) -> None:
        super().__init__(message)
        self.row = row


def wait(job: Job | int, timeout: float) -> Job:
    """Block until the job has ended (succeeded, dead or cancelled) and return it, read again.

    A job that fails an attempt and will be retried has not ended: the wait goes on through its
    retries. Unlike Celery's `get()`, a dead job is returned, not raised: its `status` and `error`
    say what happened. Raises `WaitTimeout` (its `row` is the job as it is then) after `timeout`
    seconds, `Job.DoesNotExist` for an unknown id or for a job enqueued in a transaction not yet
    committed (wait after the commit: no worker can run it before).
    """
    job_id = job.pk if isinstance(job, Job) else int(job)
    return _until(JOB, Job, job_id, timeout, lambda row: row.status in FINISHED)


def wait_chain(chain: Chain | int, timeout: float) -> Chain:
    """Block until the chain has ended (succeeded; failed when a step died; cancelled) and return
    it, read again; the same rules as `wait`. A chain that fails ends when its failing step dies,
    in that step's outcome transaction: its steps are then read with `jobs.interfaces.http.chain_view` or
    `chain.jobs`."""
    chain_id = chain.pk if isinstance(chain, Chain) else int(chain)
    return _until(CHAIN, Chain, chain_id, timeout, lambda row: row.status != ChainStatus.RUNNING)


def _until(kind: tuple[str, str], model: type[M], row_id: int, timeout: float, is_over: Callable[[M], bool]) -> M:
    deadline = time.monotonic() + _seconds(timeout)
    while True:
        heard = ended(kind, row_id, max(0.0, deadline - time.monotonic()))
        row = model.objects.get(pk=row_id)
        if is_over(row):
            return row
        if not heard or time.monotonic() >= deadline:  # (heard, yet reopened since: a retry)
            name = model.__name__.lower()
            raise WaitTimeout(f"{name} {row_id} is still {row.status} after {timeout:g}s", row)


def ended(kind: tuple[str, str], row_id: int, timeout: float) -> bool:
    """Whether the row ended within `timeout` seconds (0: look once): True as soon as it is seen
    ended or its end's commit is heard (the caller reads the row). Raises the model's
    `DoesNotExist` when there is no such (committed) row."""
    channel, check = kind
    model = Job if kind is JOB else Chain
    deadline = time.monotonic() + _seconds(timeout)
    payload = str(row_id)
    key = store.waiter_key("job" if kind is JOB else "chain", row_id)
    with _listening(channel, key, deadline) as pg:
        if pg is None:  # an end still committing at our deadline (or the caller's own)
            return False
        row = pg.execute(check, [row_id]).fetchone()
        if row is None:
            raise model.DoesNotExist(f"{model.__name__.lower()} {row_id} does not exist (or is not committed yet)")
        if row[0]:
            return True
        # Every ended job of the deployment is heard here: skip the others' ids.
        notes = pg.notifies(timeout=max(0.0, deadline - time.monotonic()))
        try:
            for note in notes:
                if note.payload == payload:
                    return True
        finally:
            notes.close()
        return False


def _seconds(timeout: float) -> float:
    if isinstance(timeout, bool) or not (isinstance(timeout, (int, float)) and math.isfinite(timeout) and timeout >= 0):
        raise ValueError(f"timeout must be a finite number of seconds, 0 or more (got {timeout!r})")
    return float(timeout)


@contextmanager
def _listening(channel: str, key: int, deadline: float) -> Iterator[psycopg.Connection | None]:
    """A new autocommit connection to the default database, holding advisory lock `key` shared
    and listening on `channel`; closed on leaving, whatever happens (which releases the lock).

    Only the transaction of an end being committed holds `key` exclusively: waiting for it is
    bounded by the deadline (then None is yielded), which also ends the wait of a caller whose
    own open transaction ended the row."""
    # The direct connection (DATABASE_DIRECT_URL): LISTEN and a session lock need a session of
    # their own, which a transaction-mode pooler does not keep (project/pooler.py).
    with psycopg.connect(**pooler.params(pooler.DIRECT), autocommit=True) as pg:
        lock_ms = max(1, int((deadline - time.monotonic()) * 1000))  # 0 would mean no limit
        pg.execute(f"SET lock_timeout = {lock_ms}")  # this connection's own session: it ends with it
        try:
            pg.execute("SELECT pg_advisory_lock_shared(%s)", [key])
        except psycopg.errors.LockNotAvailable:
            yield None
            return
        pg.execute(f"LISTEN {channel}")
        yield pg
