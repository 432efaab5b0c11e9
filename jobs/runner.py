"""The runner: claim -> run -> complete -> continue, plus the relay and the reaper.

A worker that receives a job id claims the row (SELECT ... FOR UPDATE SKIP LOCKED, runnable, due),
commits a lease, runs the handler outside any transaction while a heartbeat extends the lease,
then records the outcome and the chain's next step in one transaction, publishing after commit.
A completion names the attempt it belongs to: a run whose lease was taken over records nothing.

Claims, heartbeats and relay marks go through the `claims` connection, whose commits do not wait
for the WAL flush (synchronous_commit=off): losing one in a crash only means the job is claimed or
published again. Outcomes go through `default`, durable.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
import traceback
from typing import Any, Callable

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import connections, transaction
from django.utils import timezone
from psycopg.types.json import Jsonb

from jobs import registry
from jobs.context import Context
from jobs.models import Chain, ChainStatus, Job, Status
from jobs.publish import HARD_LIMIT_GRACE, Message, backlogged, publish, publish_on_commit

log = logging.getLogger("conveyor.runner")

CLAIMS = "claims"

CLAIM_SQL = """
UPDATE jobs_job SET status = 'running', attempt = attempt + 1, worker = %s, started_at = now(),
       lease_expires_at = now() + make_interval(secs => %s), updated_at = now(), finished_at = NULL
 WHERE id = (SELECT id FROM jobs_job
              WHERE id = %s AND status IN ('pending', 'failed') AND run_after <= now()
                AND NOT cancel_requested
              FOR UPDATE SKIP LOCKED)
RETURNING id, type, input, attempt, max_attempts, chain_id, chain_index, parent_id, idempotency_key
"""

SUCCEED_SQL = """
UPDATE jobs_job SET status = 'succeeded', output = %s, progress = 100, finished_at = now(),
       updated_at = now(), lease_expires_at = NULL, error = ''
 WHERE id = %s AND status = 'running' AND attempt = %s
RETURNING cancel_requested, input
"""

SUCCEED_IN_CHAIN_SQL = f"""
WITH done AS ({SUCCEED_SQL.strip()}),
     chain AS (SELECT steps, status FROM jobs_chain WHERE id = %s FOR UPDATE)
SELECT done.cancel_requested, done.input, chain.steps, chain.status FROM done, chain
"""

# A failed attempt: retried later, dead after the last attempt, cancelled if asked meanwhile.
FAIL_SQL = """
UPDATE jobs_job SET
       status = CASE WHEN cancel_requested THEN 'cancelled'
                     WHEN attempt < max_attempts THEN 'failed' ELSE 'dead' END,
       finished_at = CASE WHEN cancel_requested OR attempt >= max_attempts THEN now() END,
       run_after = now() + make_interval(secs => %s), published_at = NULL,
       lease_expires_at = NULL, error = %s, updated_at = now()
 WHERE id = %s AND status = 'running' AND attempt = %s
RETURNING status, chain_id
"""

HEARTBEAT_SQL = """
UPDATE jobs_job SET lease_expires_at = now() + make_interval(secs => %s)
 WHERE id = ANY(%s) AND status = 'running'
RETURNING id, attempt, cancel_requested
"""

PROGRESS_SQL = """
UPDATE jobs_job SET progress = %s, progress_message = %s, updated_at = now()
 WHERE id = %s AND status = 'running' AND attempt = %s
"""

# Due rows never published (delayed jobs, retries after backoff, reaped rows).
RELAY_DUE_SQL = """
WITH due AS (
  SELECT id FROM jobs_job
   WHERE status IN ('pending', 'failed') AND published_at IS NULL AND run_after <= now()
     AND NOT cancel_requested
   ORDER BY run_after LIMIT %s FOR UPDATE SKIP LOCKED)
UPDATE jobs_job j SET published_at = now() FROM due WHERE j.id = due.id
RETURNING j.id, j.queue, j.priority, j.type
"""

# Rows published long ago and still not claimed: their message may be lost (Redis restarted,
# a crash between commit and publish). A duplicate message is harmless: it finds nothing to claim.
RELAY_STALE_SQL = """
WITH stale AS (
  SELECT id FROM jobs_job
   WHERE status IN ('pending', 'failed') AND published_at < now() - make_interval(secs => %s)
     AND run_after <= now() AND NOT cancel_requested AND queue <> ALL(%s)
   ORDER BY published_at LIMIT %s FOR UPDATE SKIP LOCKED)
UPDATE jobs_job j SET published_at = now() FROM stale WHERE j.id = stale.id
RETURNING j.id, j.queue, j.priority, j.type
"""

# Running rows whose lease expired: their worker died. Back to pending (or dead, or cancelled).
REAP_SQL = """
UPDATE jobs_job SET
       status = CASE WHEN cancel_requested THEN 'cancelled'
                     WHEN attempt < max_attempts THEN 'pending' ELSE 'dead' END,
       finished_at = CASE WHEN cancel_requested OR attempt >= max_attempts THEN now() END,
       error = 'lease expired: the worker running attempt ' || attempt || ' (' || worker || ') was lost',
       run_after = now(), published_at = NULL, lease_expires_at = NULL, updated_at = now()
 WHERE id IN (SELECT id FROM jobs_job
               WHERE status = 'running' AND lease_expires_at < now()
               ORDER BY lease_expires_at LIMIT %s FOR UPDATE SKIP LOCKED)
RETURNING id, status, chain_id, type
"""


def _lease_seconds() -> int:
    return int(settings.CONVEYOR["LEASE_SECONDS"])


# --- Running one job --------------------------------------------------------------------------


def execute(job_id: int, worker: str) -> str:
    """Claim and run one job; return what happened (for logs and tests)."""
    with connections[CLAIMS].cursor() as cursor:
        cursor.execute(CLAIM_SQL, [worker, _lease_seconds(), job_id])
        row = cursor.fetchone()
    if row is None:
        return "skipped"  # a duplicate or stale message: locked, finished or not yet due
    (job_id, type_name, data, attempt, max_attempts, chain_id, chain_index, parent_id, key) = row
    data = _json(data)
    ctx = Context(
        job_id=job_id,
        type=type_name,
        attempt=attempt,
        max_attempts=max_attempts,
        chain_id=chain_id,
        chain_index=chain_index,
        parent_id=parent_id,
        idempotency_key=key or f"conveyor-job-{job_id}",
    )
    try:
        jt: registry.JobType | None = registry.get(type_name)
    except registry.InvalidJob:
        jt = None  # a row of a type removed from the code: it fails, and dies after its attempts
    if jt is not None:
        ctx.lease_deadline = time.monotonic() + jt.timeout + HARD_LIMIT_GRACE
    heartbeat.track(ctx)
    try:
        if jt is None:
            raise registry.InvalidJob(f"unknown job type {type_name!r}")
        output = jt.handler(ctx, jt.parse(data))
        output = output.model_dump(mode="json") if hasattr(output, "model_dump") else output
    except SoftTimeLimitExceeded:
        return _fail(ctx, f"timeout: the run took longer than {jt.timeout}s", jt)
    except Exception:
        return _fail(ctx, traceback.format_exc(limit=20), jt)
    finally:
        heartbeat.untrack(ctx)
    return _succeed(ctx, output, jt)


def _succeed(ctx: Context, output: Any, jt: registry.JobType) -> str:
    hook = jt.on_finish
    in_chain = ctx.chain_id is not None
    if not (in_chain or ctx.continuations or hook):
        # The common case: one statement in autocommit.
        with connections["default"].cursor() as cursor:
            cursor.execute(SUCCEED_SQL, [Jsonb(output), ctx.job_id, ctx.attempt])
            if cursor.fetchone() is None:
                return _lost(ctx)
        return "succeeded"
    with transaction.atomic(durable=True):
        with connections["default"].cursor() as cursor:
            if in_chain:
                # The outcome and the chain's lock in one round trip.
                cursor.execute(SUCCEED_IN_CHAIN_SQL, [Jsonb(output), ctx.job_id, ctx.attempt, ctx.chain_id])
            else:
                cursor.execute(SUCCEED_SQL, [Jsonb(output), ctx.job_id, ctx.attempt])
            row = cursor.fetchone()
        if row is None:
            return _lost(ctx)
        if in_chain or ctx.continuations:
            cancelled, data = row[0], _json(row[1])
            steps, status = (_json(row[2]), row[3]) if in_chain else (None, None)
            _continue_chain(ctx, data, cancelled, steps, status)
        if hook:
            hook(ctx.job_id, Status.SUCCEEDED)
    return "succeeded"


def _lost(ctx: Context) -> str:
    log.warning("job %s attempt %s lost its lease before completing", ctx.job_id, ctx.attempt)
    return "lost"


def _continue_chain(ctx: Context, data: dict[str, Any], cancelled: bool, steps: list | None, status: str | None) -> None:
    """Inside the completion's transaction: insert the chain's next step, or finish the chain.

    `steps` and `status` are the chain's, read under its row lock (None for a lone job that
    continued: it becomes step 0 of a new chain).
    """
    if ctx.chain_id is None:
        steps = [{"type": ctx.type, "input": data}, *ctx.continuations]
        chain_id = Chain.objects.create(steps=steps).pk
        Job.objects.filter(pk=ctx.job_id).update(chain_id=chain_id, chain_index=0)
        index, status = 0, ChainStatus.RUNNING
    else:
        chain_id, index = ctx.chain_id, ctx.chain_index or 0
        if ctx.continuations:
            steps[index + 1 : index + 1] = ctx.continuations
            Chain.objects.filter(pk=chain_id).update(steps=steps)
    if cancelled or status != ChainStatus.RUNNING:
        _finish_chain(chain_id, ChainStatus.CANCELLED if cancelled else status)
        return
    if index + 1 >= len(steps):
        _finish_chain(chain_id, ChainStatus.SUCCEEDED)
        return
    step = steps[index + 1]
    jt = registry.get(step["type"])
    job = Job.objects.create(
        type=jt.name,
        queue=jt.queue,
        input=step["input"],
        priority=jt.priority,
        max_attempts=jt.retries + 1,
        chain_id=chain_id,
        chain_index=index + 1,
        parent_id=ctx.job_id,
        published_at=timezone.now(),
    )
    publish_on_commit([Message(job.pk, job.queue, job.priority, job.type)])


def _finish_chain(chain_id: int, status: str) -> None:
    Chain.objects.filter(pk=chain_id, status=ChainStatus.RUNNING).update(status=status, finished_at=timezone.now())


def _fail(ctx: Context, error: str, jt: registry.JobType | None) -> str:
    delay = jt.backoff.delay(ctx.attempt) if jt is not None else 0.0
    with transaction.atomic(durable=True):
        with connections["default"].cursor() as cursor:
            cursor.execute(FAIL_SQL, [delay, error[-10_000:], ctx.job_id, ctx.attempt])
            row = cursor.fetchone()
        if row is None:
            log.warning("job %s attempt %s lost its lease before failing", ctx.job_id, ctx.attempt)
            return "lost"
        status, chain_id = row
        settle(ctx.job_id, ctx.type, status, chain_id)
    log.info("job %s attempt %s/%s %s", ctx.job_id, ctx.attempt, ctx.max_attempts, status)
    return status


def settle(job_id: int, type_name: str, job_status: str, chain_id: int | None) -> None:
    """Inside the outcome's transaction: a job that ended without success ends its chain the
    same way, and its type's on_finish hook (event deliveries: the next one of the key) runs."""
    if job_status not in (Status.DEAD, Status.CANCELLED):
        return
    if chain_id is not None:
        _finish_chain(chain_id, ChainStatus.FAILED if job_status == Status.DEAD else ChainStatus.CANCELLED)
    hook = _on_finish(type_name)
    if hook:
        hook(job_id, job_status)


def _on_finish(type_name: str) -> Callable[[int, str], None] | None:
    try:
        return registry.get(type_name).on_finish
    except registry.InvalidJob:
        return None


def record_progress(job_id: int, attempt: int, percent: int, message: str) -> None:
    percent = max(0, min(100, int(percent)))
    with connections[CLAIMS].cursor() as cursor:
        cursor.execute(PROGRESS_SQL, [percent, message[:500], job_id, attempt])


def _json(value: Any) -> Any:
    # Django has psycopg hand jsonb over as text (its JSONField decodes it); raw SQL decodes here.
    return json.loads(value) if isinstance(value, (str, bytes)) else value


# --- The heartbeat: one thread per process extends the leases of its running jobs --------------


class Heartbeat:
    def __init__(self) -> None:
        self._running: dict[int, Context] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = 0

    def track(self, ctx: Context) -> None:
        with self._lock:
            self._running[ctx.job_id] = ctx
            # After a fork the parent's thread is gone: start one in this process.
            if self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
                self._pid = os.getpid()
                self._thread = threading.Thread(target=self._loop, name="conveyor-heartbeat", daemon=True)
                self._thread.start()

    def untrack(self, ctx: Context) -> None:
        with self._lock:
            self._running.pop(ctx.job_id, None)

    def running(self) -> list[Context]:
        with self._lock:
            return list(self._running.values())

    def _loop(self) -> None:
        interval = max(0.5, _lease_seconds() / 3)
        stop = threading.Event()
        while not stop.wait(interval):
            now = time.monotonic()
            contexts = {ctx.job_id: ctx for ctx in self.running() if ctx.lease_deadline > now}
            if not contexts:
                continue
            try:
                with connections[CLAIMS].cursor() as cursor:
                    cursor.execute(HEARTBEAT_SQL, [_lease_seconds(), list(contexts)])
                    for job_id, attempt, cancel_requested in cursor.fetchall():
                        ctx = contexts.get(job_id)
                        if ctx is not None and ctx.attempt == attempt and cancel_requested:
                            ctx.cancelled = True
            except Exception as exc:  # the database is away: keep trying, the lease may lapse
                log.warning("heartbeat failed: %s", exc)
                connections[CLAIMS].close()


heartbeat = Heartbeat()


# --- Recovery: the relay and the reaper (safe in any number of copies) --------------------------


def relay(batch: int = 500) -> int:
    """Publish due rows that were never published, and stale ones whose message may be lost."""
    stale = int(settings.CONVEYOR["RELAY_STALE_SECONDS"])
    messages: list[Message] = []
    with connections[CLAIMS].cursor() as cursor:
        cursor.execute(RELAY_DUE_SQL, [batch])
        messages += [Message(*row) for row in cursor.fetchall()]
        try:
            busy = sorted(backlogged(registry.queues()))
        except Exception as exc:  # Redis away: publishing fails too; try again next pass
            log.warning("relay cannot read queue lengths: %s", exc)
            busy = []
        cursor.execute(RELAY_STALE_SQL, [stale, busy, batch])
        messages += [Message(*row) for row in cursor.fetchall()]
    if messages:
        publish(messages)
    return len(messages)


def reap(batch: int = 100) -> int:
    """Return running rows whose lease expired (their worker died) to pending, dead or cancelled."""
    with transaction.atomic():
        with connections["default"].cursor() as cursor:
            cursor.execute(REAP_SQL, [batch])
            rows = cursor.fetchall()
        for job_id, status, chain_id, type_name in rows:
            log.warning("reaped job %s: lease expired, now %s", job_id, status)
            settle(job_id, type_name, status, chain_id)
    return len(rows)


def recover_once() -> tuple[int, int]:
    """One pass of the reaper then the relay (the relay publishes what the reaper returned)."""
    reaped = reap()
    relayed = relay()
    return reaped, relayed
