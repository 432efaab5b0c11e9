"""The runner: claim -> run -> record the outcome -> continue the chain.

A worker that receives a job id claims the row (store.claim: SKIP LOCKED, runnable, due), which
commits a lease; it runs the handler outside any transaction while the heartbeat extends the
lease, then records the outcome and the chain's next step in one transaction, publishing after
commit. An outcome names the attempt it belongs to: a run whose lease was taken over records
nothing. An atomic type's handler runs inside its outcome's transaction instead (`_atomic`), so
that its database writes share that fate. Every statement is the job store's (jobs.engine.store).
"""
from __future__ import annotations

import ctypes
import dataclasses
import json
import logging
import os
import signal
import threading
import time
import traceback
from typing import Callable

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import InterfaceError, OperationalError, connections, transaction

from jobs.engine import continuing, cpu_policy, decisions, early, grouped, handoff, limits, registry, store, telemetry, tracing
from jobs.engine.deadlines import deadlines
from jobs.engine.context import Context
from jobs.engine.ending import How, Success, ended
from jobs.models import Held, Status
from jobs.engine.publish import HARD_LIMIT_GRACE

log = logging.getLogger("conveyor.runner")

#: True in a prefork pool process (set by jobs.interfaces.signals on worker_process_init): Celery enforces
#: the time limits there. The threads and solo pools ignore them, so the runner enforces them.
POOL_ENFORCES_TIME_LIMITS = False


def lease_seconds() -> int:
    return int(settings.CONVEYOR["LEASE_SECONDS"])


class ClaimFailed(Exception):
    """The claim itself failed (PostgreSQL away, or the time limit hit it): no handler ran for
    this delivery, so the message may be kept and the claim tried again (jobs.tasks)."""


class Outcome(str):
    """What `execute` returns: the status ("succeeded", "failed", "dead", "cancelled", "lost",
    "skipped", or "held" by its type's limits or a pause, the reason as `error`), a str as ever, with the
    attempt it belongs to and a failure's error, for what a
    monitor shows (jobs.interfaces.monitoring) without reading the row again."""

    attempt: int | None
    max_attempts: int | None
    error: str
    #: The chain's next step this run's outcome claimed to run here next (jobs.engine.handoff).
    handed: store.Claimed | None = None

    def __new__(cls, status: str, attempt: int | None = None, max_attempts: int | None = None, error: str = "") -> Outcome:
        outcome = super().__new__(cls, status)
        outcome.attempt, outcome.max_attempts, outcome.error = attempt, max_attempts, error
        return outcome


def execute(job_id: int, worker: str, own_time_limit: bool = False, published_early: bool = False) -> Outcome:
    """Claim and run one job; return what happened (for logs, monitors and tests).

    `own_time_limit`: the runner enforces the job's time limit even where the pool would (a batch
    message carries none for Celery to enforce). `published_early`: the message was sent before
    its row's transaction committed (jobs.engine.early): the claim waits for that transaction to
    end first (store.claim_after_commit)."""
    claim_started = tracing.now_ns() if tracing.on else 0
    try:
        limited = registry.limited()
        if published_early:  # its row may not be committed yet: wait for it, then claim (one round trip)
            claimed = store.claim_after_commit(job_id, worker, lease_seconds(), limited, early.AWAIT_MS)
        else:
            claimed = store.claim(job_id, worker, lease_seconds(), limited)
        if claimed is None and limited:  # perhaps a type with limits: its claim is theirs
            claimed = limits.claim(job_id, worker, lease_seconds())
        # Not claimed: perhaps its queue or type is paused. Held then, with no message, until a
        # resume publishes it (jobs.engine.pauses); one more statement, for skipped claims only.
        if claimed is None and store.hold_paused(job_id):
            return Outcome("held", error=Held.PAUSED.value)
    except (OperationalError, InterfaceError, SoftTimeLimitExceeded) as exc:
        raise ClaimFailed(f"{type(exc).__name__}: {exc}".strip()) from exc
    if claimed is None:
        return Outcome("skipped")  # a duplicate or stale message: locked, finished or not yet due
    if isinstance(claimed, str):
        return Outcome("held", error=claimed)  # its limits hold it in the table; the message goes
    return run_claimed(claimed, worker, own_time_limit, claim_started)


def run_claimed(claimed: store.Claimed, worker: str, own_time_limit: bool = True, claim_started: int = 0) -> Outcome:
    """Run a job this worker has claimed (`execute`, or a multi-id message's chunk claim:
    jobs.engine.batchrun), then the chain steps its outcome hands on."""
    # Where Celery enforces this message's time limit, the next step must not run under it.
    runner_keeps_limits = own_time_limit or not POOL_ENFORCES_TIME_LIMITS
    outcome = _execute(claimed, worker, own_time_limit, runner_keeps_limits, 0, claim_started)
    # The chain's next step, claimed here in the outcome's transaction (jobs.engine.handoff): run
    # now, no message sent; each under the runner's own time limit.
    handed, steps = outcome.handed, 0
    while handed is not None:
        steps += 1
        handed = _execute(handed, worker, True, True, steps, tracing.now_ns() if tracing.on else 0).handed
    return outcome


def _execute(
    claimed: store.Claimed, worker: str, own_time_limit: bool, runner_keeps_limits: bool, steps: int, claim_started: int
) -> Outcome:
    """Run one claimed job and record its outcome."""
    ctx = Context(
        job_id=claimed.id,
        type=claimed.type,
        attempt=claimed.attempt,
        max_attempts=claimed.max_attempts,
        chain_id=claimed.chain_id,
        chain_index=claimed.chain_index,
        parent_id=claimed.parent_id,
        idempotency_key=claimed.idempotency_key or f"conveyor-job-{claimed.id}",
        member=claimed.member,
        results_count=claimed.results_count,
        claimed=claimed,
    )
    if handoff.LOCAL_QUEUES:  # a worker: its chain steps (continuations too) may go on here
        ctx.offer = handoff.Offer(worker, lease_seconds(), runner_keeps_limits, steps)
    if tracing.on:
        outcome = _traced(ctx, claimed, worker, own_time_limit, claim_started)
    else:
        # The run's ids on every log line written meanwhile; its metrics after the outcome's commit.
        with telemetry.running(claimed, worker) as run:
            status, error = _run(ctx, claimed, own_time_limit)
            run.done(status)
        outcome = Outcome(status, ctx.attempt, ctx.max_attempts, error)
    outcome.handed = ctx.handed if outcome == Status.SUCCEEDED else None
    return outcome


def _traced(ctx: Context, claimed: store.Claimed, worker: str, own_time_limit: bool, claim_started: int) -> Outcome:
    """`execute`'s run under its row's trace (jobs.engine.tracing): the queue wait and the claim
    as spans with their own times, then the attempt as `conveyor.run`, current while the handler
    and the outcome run (so a chain's next step, and every log line, are its children)."""
    parent = tracing.parent(claimed.trace_context)
    claimed_at = tracing.now_ns()
    attributes = {
        "conveyor.job.id": claimed.id, "conveyor.job.type": claimed.type, "conveyor.queue": claimed.queue,
        "conveyor.attempt": claimed.attempt, "conveyor.max_attempts": claimed.max_attempts,
        "conveyor.worker": worker, "conveyor.chain.id": claimed.chain_id, "conveyor.chain.step": claimed.chain_index,
        "conveyor.member": claimed.member,
    }
    tracing.past("conveyor.wait", claimed_at - int(max(0.0, claimed.waited) * 1e9), claimed_at, attributes, parent)
    tracing.past("conveyor.claim", claim_started, claimed_at, attributes, parent)
    with tracing.span("conveyor.run", attributes, context=parent, kind=tracing.trace.SpanKind.CONSUMER) as span:
        with telemetry.running(claimed, worker) as run:
            status, error = _run(ctx, claimed, own_time_limit)
            run.done(status)
        span.set_attribute("conveyor.outcome", status)
        if status in ("failed", "dead"):
            # The error's last line (the exception), as a viewer shows a status.
            span.set_status(tracing.trace.Status(tracing.trace.StatusCode.ERROR, (error.strip().splitlines() or [status])[-1][:500]))
    return Outcome(status, ctx.attempt, ctx.max_attempts, error)


def _run(ctx: Context, claimed: store.Claimed, own_time_limit: bool = False) -> tuple[str, str]:
    """Run the handler and record its outcome: (the status, the error of a failure)."""
    try:
        jt: registry.JobType | None = registry.get(claimed.type)
    except registry.InvalidJob:
        jt = None  # a row of a type removed from the code: it fails, and dies after its attempts
    if jt is not None:
        ctx.lease_deadline = time.monotonic() + jt.timeout + HARD_LIMIT_GRACE
    heartbeat.track(ctx)
    enforced_by_pool = POOL_ENFORCES_TIME_LIMITS and not own_time_limit
    limit = None if enforced_by_pool or jt is None else TimeLimit(ctx, jt.timeout, jt)
    try:
        if jt is None:
            raise registry.InvalidJob(f"unknown job type {claimed.type!r}")
        if jt.atomic:
            # The heartbeat goes on (untracked below) until the transaction has ended.
            return _atomic(ctx, claimed, jt, limit)
        output = _handle(ctx, claimed, jt, limit)
    except SoftTimeLimitExceeded:
        error = f"timeout: the run took longer than {jt.timeout}s"
        return _record(ctx, lambda: _fail(ctx, error, jt)), error
    except _RolledBack as rolled_back:  # an atomic run's output that cannot be stored: writes undone
        error = rolled_back.error
        return _record(ctx, lambda: _fail(ctx, error, jt)), error
    except Exception as exc:
        error = traceback.format_exc(limit=20)
        permanent = isinstance(exc, registry.Permanent)  # no retry can change it: its last attempt
        return _record(ctx, lambda: _fail(ctx, error, jt, permanent)), error
    finally:
        heartbeat.untrack(ctx)
    encoded, error = _encoded(output)
    if error:
        return _record(ctx, lambda: _fail(ctx, error, jt)), error
    return _record(ctx, lambda: _succeed(ctx, encoded, jt)), ""


def _handle(ctx: Context, claimed: store.Claimed, jt: registry.JobType, limit: TimeLimit | None) -> object:
    """Call the handler; its output as JSON-ready values."""
    try:
        output = jt.handler(ctx, jt.parse(claimed.input))
    finally:
        if limit is not None:
            limit.stop()
    return output.model_dump(mode="json") if hasattr(output, "model_dump") else output


def _encoded(output: object) -> tuple[str, str]:
    """(the output as JSON text, ""), or ("", why it cannot be stored)."""
    try:
        encoded = json.dumps(output, allow_nan=False)
    except (TypeError, ValueError) as exc:
        return "", f"the handler's output cannot be stored as JSON: {exc}"
    if "\\u0000" in encoded:
        return "", "the handler's output holds a NUL character, which PostgreSQL's JSON cannot store"
    if len(encoded) > registry.max_output_bytes():
        return "", (f"the handler's output is {len(encoded)} bytes of JSON, over the limit of "
                    f"{registry.max_output_bytes()} (CONVEYOR_MAX_OUTPUT_BYTES)")
    return encoded, ""


class _RolledBack(Exception):
    """Raised inside an atomic run's transaction to roll its writes back (decisions.AtomicEnd)."""

    def __init__(self, end: decisions.AtomicEnd, error: str = "") -> None:
        super().__init__(end.value)
        self.end, self.error = end, error


def _atomic(ctx: Context, claimed: store.Claimed, jt: registry.JobType, limit: TimeLimit | None) -> tuple[str, str]:
    """An atomic type's run (JobType.atomic): the handler and its success in one transaction on
    `default`, so the handler's writes commit with the outcome or not at all.

    The fence is the success's own statement (`store.succeed`: `WHERE status = 'running' AND
    attempt = %s`), run last, in the same transaction: a run whose row was reaped, handed back
    or claimed again finds nothing and rolls back. The job's row is not locked before that
    statement, so the heartbeat (another thread, the `claims` connection) and `ctx.progress`
    (`claims`, committed at once) never wait for the handler; they wait only for the outcome's
    commit, as after any run. A killed process's transaction is rolled back by PostgreSQL;
    one whose worker froze or was cut off is ended by PostgreSQL past the type's timeout
    (`store.bound_transaction`). A handler that raises has its writes rolled back (the
    exception leaves the transaction), then its failure is recorded by `_run` as any other:
    the retry starts from a clean slate. A run whose cancel was asked meanwhile (the success's
    statement ends it cancelled) is rolled back too and ends cancelled through `store.fail`:
    a cancelled atomic job has no effect. A database error at commit is recorded as a failure
    too; were the commit in fact made, that failure's fenced statement records nothing.
    """
    try:
        with transaction.atomic(durable=True):
            store.bound_transaction(decisions.transaction_bound_ms(jt.timeout, HARD_LIMIT_GRACE))
            encoded, error = _encoded(_handle(ctx, claimed, jt, limit))
            done = None if error else store.succeed(ctx.job_id, ctx.attempt, encoded, ctx.chain_id, plan=ctx.member is None)
            end = decisions.atomic_end(error, recorded=done.status if done is not None else "")
            if end is decisions.AtomicEnd.CANCEL:
                error = "cancelled while it ran: its writes were rolled back"
            elif end is decisions.AtomicEnd.LOST:
                _lost(ctx)
            if end is not decisions.AtomicEnd.COMMIT:
                raise _RolledBack(end, error)
            status = _succeeded(ctx, done, jt)
    except _RolledBack as rolled_back:
        if rolled_back.end is decisions.AtomicEnd.LOST:
            return "lost", ""
        # FAIL, CANCEL: `_run` records the attempt failed (`store.fail`, which ends it cancelled
        # when a cancel was asked), the transaction rolled back
        raise
    return status, ""


def _record(ctx: Context, write: Callable[[], str]) -> str:
    """Run an outcome transaction until PostgreSQL takes it (grouped.retried: fenced by its
    attempt, a write again after an unknown commit records nothing)."""
    return grouped.retried(write, f"job {ctx.job_id} attempt {ctx.attempt}")


def _succeed(ctx: Context, output_json: str, jt: registry.JobType) -> str:
    """store.succeed, then ending.ended (the chain's next step, the slots, the hook)."""
    hook = ctx.finish_hook_needed and jt.on_finish is not None
    if not (ctx.chain_id is not None or ctx.continuations or hook or jt.holds_slots):
        # The common case: one statement in autocommit, and nothing follows its end. In a
        # multi-id message, committed with others and the next claim (jobs.engine.grouped).
        if grouped.defer(ctx.job_id, ctx.attempt, output_json, in_chain=False, continued=False, hook=hook,
                         holds_slots=jt.holds_slots, atomic=jt.atomic):
            return Status.SUCCEEDED
        done = store.succeed(ctx.job_id, ctx.attempt, output_json)
        if done is None:
            return _lost(ctx)
        if done.status == Status.CANCELLED:  # cancelled while it ran: its type's hook runs
            ended([store.Ended(done.id, done.type, done.status, None)], How.RAN, hook=hook)
        return done.status
    with transaction.atomic(durable=True):
        # What the outcome inserts (the chain's next step) is published while its COMMIT is in
        # flight: COMMIT sent, the messages published, then the COMMIT's result read, so that the
        # message's trip overlaps the WAL flush (jobs.engine.early: a claim that arrives first
        # waits for the commit). A failed publish is the relay's, as after commit; a failed
        # COMMIT raises here, as it would at the block's end, and leaves messages that claim nothing.
        with early.collecting() as messages:
            status = _succeed_in(ctx, output_json, jt)
        if messages:
            committed = store.send_commit()
            early.send(messages)
            committed()
        return status


def _succeed_in(ctx: Context, output_json: str, jt: registry.JobType) -> str:
    """The success in the caller's transaction: the row, then what follows its end; "lost" when
    the row is no longer this attempt's (nothing written)."""
    ctx.handed = None  # a claim of an earlier try of this outcome was rolled back with it
    if continuing.applies(ctx, ctx.finish_hook_needed and jt.on_finish is not None, jt.holds_slots):
        # One statement: the success and the chain's next step (jobs.engine.continuing); when it
        # left the step to the general path, that goes on from the row in the same transaction.
        continued = continuing.succeed(ctx, output_json)
        if continued is None:
            return _lost(ctx)
        done, inserted = continued
        if not inserted:
            return _succeeded(ctx, done, jt)
        # The chain's step is done (its next step inserted by the statement): what else follows
        # an end still passes through `ended`, with no `success` to continue the chain again.
        ended([store.Ended(done.id, done.type, done.status, done.chain_id, ctx.chain_index, ctx.member)], How.RAN, hook=False)
        return done.status
    done = store.succeed(ctx.job_id, ctx.attempt, output_json, ctx.chain_id, plan=ctx.member is None)
    if done is None:
        return _lost(ctx)
    return _succeeded(ctx, done, jt)


def _succeeded(ctx: Context, done: store.Succeeded, jt: registry.JobType) -> str:
    """What follows a success's row, in its transaction (ending.ended: the chain, the slots, the hook)."""
    hook = ctx.finish_hook_needed and jt.on_finish is not None
    row = store.Ended(done.id, done.type, done.status, done.chain_id, ctx.chain_index, ctx.member)
    offer = None if ctx.offer is None else dataclasses.replace(ctx.offer)  # a fresh one per try
    with handoff.offered(offer):
        ended([row], How.RAN, success=Success(done, ctx.chain_index, ctx.member, ctx.continuations), hook=hook)
    ctx.handed = None if offer is None else offer.claimed
    return done.status


def _lost(ctx: Context) -> str:
    log.warning("job %s attempt %s lost its lease before completing", ctx.job_id, ctx.attempt)
    return "lost"


def _fail(ctx: Context, error: str, jt: registry.JobType | None, permanent: bool = False) -> str:
    """Record a failed attempt; `permanent` (jobs.Permanent): dead now, whatever attempts are left."""
    delay = jt.backoff.delay(ctx.attempt) if jt is not None else 0.0
    ctx.handed = None  # an atomic success whose commit failed: its claim was rolled back with it
    with transaction.atomic(durable=True):
        row = store.fail(ctx.job_id, ctx.attempt, error, delay, permanent)
        if row is None:
            log.warning("job %s attempt %s lost its lease before failing", ctx.job_id, ctx.attempt)
            return "lost"
        ended([row], How.RAN)
    log.info("job %s attempt %s/%s %s", ctx.job_id, ctx.attempt, ctx.max_attempts, row.status)
    return row.status


# --- Time limits where the pool has none (threads, solo) ------------------------------------------


class TimeLimit:
    """The soft and hard time limits of one run, for pools that ignore Celery's.

    At the soft limit SoftTimeLimitExceeded is raised in the handler's thread (at its next Python
    instruction: a call blocked in C finishes first). Past the hard limit (HARD_LIMIT_GRACE
    later) a handler still running has its attempt recorded as failed and its process ended, as
    Celery's prefork pool kills its process: the supervisor restarts the worker, and no second
    copy of the job can start beside the stuck one.
    """

    def __init__(self, ctx: Context, seconds: float, jt: registry.JobType) -> None:
        self.ctx, self.seconds, self.jt = ctx, seconds, jt
        self.thread_id = threading.get_ident()
        self._lock = threading.Lock()
        self._done = False
        self._fired = False
        # The process's deadlines' thread, not a thread per run (jobs.engine.deadlines).
        self._deadline = deadlines.after(seconds, self._soft)

    def stop(self) -> None:
        with self._lock:
            self._done = True
            deadlines.cancel(self._deadline)
            if self._fired:  # raised too late to matter: drop it if it is still pending
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self.thread_id), None)

    def _soft(self) -> None:
        with self._lock:
            if self._done:
                return
            log.warning("job %s attempt %s passed its time limit (%ss)", self.ctx.job_id, self.ctx.attempt, self.seconds)
            self._fired = True
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self.thread_id), ctypes.py_object(SoftTimeLimitExceeded))
            self._deadline = deadlines.after(HARD_LIMIT_GRACE, self._hard)

    def _hard(self) -> None:
        with self._lock:
            if self._done:
                return
            log.error("job %s attempt %s still runs %ss past its time limit: ending worker process %s",
                      self.ctx.job_id, self.ctx.attempt, HARD_LIMIT_GRACE, os.getpid())
            try:
                error = f"timeout: the run took longer than {self.seconds}s and did not stop; its worker process was ended"
                _fail(self.ctx, error, self.jt)
            finally:
                os.kill(os.getpid(), signal.SIGKILL)


# --- The heartbeat: one thread per process extends the leases of its running jobs --------------


class Heartbeat:
    """Runs are keyed by (job id, attempt), never by the job id alone: a run that lost its row
    may still be running in this process beside the job's next attempt (a threads pool), and
    its end must not stop the heartbeat of that live re-run."""

    def __init__(self) -> None:
        self._running: dict[tuple[int, int], Context] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = 0

    def track(self, ctx: Context) -> None:
        with self._lock:
            self._running[(ctx.job_id, ctx.attempt)] = ctx
            self._ensure_thread()

    def start(self) -> None:
        """Start this process's heartbeat thread now, before its job threads lower their CPU
        policy (WORKER_CPU_POLICY=idle, jobs.engine.cpu_policy): a thread inherits its creator's."""
        with self._lock:
            self._ensure_thread()

    def _ensure_thread(self) -> None:
        # After a fork the parent's thread is gone: start one in this process.
        if self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
            self._pid = os.getpid()
            self._thread = threading.Thread(target=self._loop, name="conveyor-heartbeat", daemon=True)
            self._thread.start()

    def untrack(self, ctx: Context) -> None:
        with self._lock:
            self._running.pop((ctx.job_id, ctx.attempt), None)

    def running(self) -> list[Context]:
        with self._lock:
            return list(self._running.values())

    def _loop(self) -> None:
        # The leases must not starve with the jobs: this thread runs at the normal policy even
        # where the jobs' threads are SCHED_IDLE (WORKER_CPU_POLICY=idle).
        cpu_policy.keep_normal("heartbeat")
        interval = max(0.5, lease_seconds() / 3)
        stop = threading.Event()
        while not stop.wait(interval):
            self.beat()

    def beat(self) -> None:
        """Extend the leases of the runs still within their deadline; tell each run that lost
        its row, or whose cancel was asked."""
        now = time.monotonic()
        contexts = {(ctx.job_id, ctx.attempt): ctx for ctx in self.running() if ctx.lease_deadline > now}
        if not contexts:
            return
        try:
            beats = store.heartbeat(list(contexts), lease_seconds())
            held = {(beat.id, beat.attempt): beat for beat in beats}
            for run, ctx in contexts.items():
                beat = held.get(run)
                if beat is None:  # reaped or handed back: this run's outcome will be refused
                    ctx.lost = ctx.cancelled = True
                elif beat.cancel_requested:
                    ctx.cancelled = True
        except Exception as exc:  # the database is away: keep trying, the lease may lapse
            log.warning("heartbeat failed: %s", exc)
            connections[store.CLAIMS].close()


heartbeat = Heartbeat()
