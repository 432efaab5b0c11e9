"""A job's attempts as a history, and its waiting times as they are true, for the admin's job page.

Every attempt that ended badly is an entry of `Job.errors` (written by the statements that end an
attempt: jobs.engine.store.fail, reap, hand_back): its number, error, worker, start and end (`at`).
The attempt that succeeded, is running, or was cancelled while it ran has no entry: it is the
row's own `attempt`, `worker`, `started_at` and `finished_at`. Together they are every attempt,
without a column more (rows from before the entries were kept, migration 0010, show their last
attempt only).

Pure functions of a row (no query): unit-tested in tests/unit/test_attempts.py.
"""
from __future__ import annotations

import datetime as dt
from typing import Any, NamedTuple

from jobs.models import FINISHED, Held, Job, Status

STAMP = "%Y-%m-%d %H:%M:%S UTC"


class Attempt(NamedTuple):
    number: int
    worker: str
    started_at: dt.datetime | None
    ended_at: dt.datetime | None
    #: How long it ran (its start to its end); None while it runs.
    seconds: float | None
    #: succeeded, running, failed (retried), dead, lost (its worker died or its lease lapsed),
    #: handed back (its worker was stopped), cancelled, or "failed, then cancelled".
    outcome: str
    error: str


def last_line(error: str) -> str:
    """A traceback's last line (the exception and its message): what a list has room for."""
    lines = [line for line in (error or "").strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def short_worker(worker: str) -> str:
    """A worker as a list has room for: its Celery node and process (`node/pid`), without the
    supervisor's start token that follows them (a job's page shows the whole name)."""
    return "/".join(worker.split("/")[:2]) if worker else "-"


def _when(value: Any) -> dt.datetime | None:
    """An entry's timestamp (PostgreSQL's JSON text of a timestamptz) as an aware datetime."""
    if not value:
        return None
    if isinstance(value, dt.datetime):
        return value
    try:
        return dt.datetime.fromisoformat(str(value))
    except ValueError:
        return None


def _outcome_of_entry(error: str) -> str:
    """How an attempt with an entry ended, from the words the statement wrote (store._REAPED,
    store._HANDED_BACK); anything else is the handler's own failure."""
    if error.startswith("handed back:"):
        return "handed back"
    if error.startswith("lease expired") or error.startswith("worker process died"):
        return "lost"
    return "failed"


def _seconds(started: dt.datetime | None, ended: dt.datetime | None) -> float | None:
    return (ended - started).total_seconds() if started and ended else None


def history(job: Job) -> list[Attempt]:
    """Every attempt of `job`, oldest first."""
    attempts: list[Attempt] = []
    entries = [e for e in (job.errors or []) if isinstance(e, dict)]
    for n, entry in enumerate(entries):
        error = str(entry.get("error") or "")
        started, ended = _when(entry.get("started_at")), _when(entry.get("at"))
        outcome = _outcome_of_entry(error)
        is_last = n == len(entries) - 1 and entry.get("attempt") == job.attempt
        if is_last and job.status == Status.DEAD:
            outcome = "dead" if outcome == "failed" else f"{outcome}, then dead"
        elif is_last and job.status == Status.CANCELLED:
            outcome = f"{outcome}, then cancelled"
        attempts.append(Attempt(int(entry.get("attempt") or n + 1), str(entry.get("worker") or ""), started, ended,
                                _seconds(started, ended), outcome, error))
    recorded = {a.number for a in attempts}
    if job.attempt and job.started_at and job.attempt not in recorded:
        # The row's own attempt: it succeeded, runs, was cancelled while running, or (a row from
        # before the history was kept) ended as the row says.
        ended = job.finished_at if job.status != Status.RUNNING else None
        outcome = {Status.PENDING: "lost"}.get(job.status, str(job.status))
        error = job.error if job.status in (Status.FAILED, Status.DEAD) else ""
        attempts.append(Attempt(job.attempt, job.worker, job.started_at, ended, _seconds(job.started_at, ended), outcome, error))
    return attempts


def _stamp(value: dt.datetime) -> str:
    return value.astimezone(dt.timezone.utc).strftime(STAMP)


def run_after_text(job: Job) -> str:
    """When the job is due: for a job that ended, only a time it was due before it ended (a dead
    job's row keeps the backoff of a retry that never comes, later than its end: not shown)."""
    if job.status in FINISHED:
        if job.finished_at and job.run_after and job.run_after <= job.finished_at:
            return _stamp(job.run_after)
        return f"- ({job.status}: no run is due)"
    if job.status == Status.RUNNING:
        return _stamp(job.run_after) if job.run_after else "-"
    if job.held in (Held.CONCURRENCY, Held.KEY):
        return "- (waits for a slot of its type's limits, not for a time)"
    return _stamp(job.run_after) if job.run_after else "-"


def published_text(job: Job) -> str:
    """When its message was sent to its queue, or why there is none."""
    if job.published_at:
        return _stamp(job.published_at)
    if job.status in FINISHED:
        return f"- ({job.status}: no message waits for it)"
    if job.status == Status.RUNNING:
        return "-"
    if job.held:
        return "- (held by its type's limits: published when its slot comes)"
    return "- (the relay publishes it when it is due)"
