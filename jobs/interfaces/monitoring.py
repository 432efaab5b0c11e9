"""What monitors (Flower) see of a job's run: its state in Celery's terms, after the row has it.

The runner records every outcome in PostgreSQL (the record) and returns a status; this wrapper of
the task then ends the Celery task in the state a monitor understands, and names the job and its
attempt in what the monitor shows:

- succeeded: SUCCESS, the result "job 12 attempt 1/4 succeeded";
- failed (retried later) and dead: FAILURE, the exception `JobFailed("job 12 attempt 4/4 dead:
  RuntimeError: ...")`, raised after the outcome is committed. The task is declared to throw it
  (Celery then logs one INFO line, no traceback) and acks on failure, so the message is acked as
  after a success: nothing is redelivered, nothing runs twice. The one ERROR line is this module's;
- cancelled: REVOKED (a `task-revoked` event, as Celery's own revoke sends), then `Ignore`, which
  Celery acks without a further event;
- skipped (a duplicate or stale message, or the message of a job cancelled before it ran: nothing
  claimed): SKIPPED, never SUCCESS (Flower's "Succeeded" counts `task-succeeded` events: 1,887
  "succeeded" cancelled jobs once read as work done). A `task-skipped` event (Celery's event state
  takes an unknown event type as a state of that name, shown grey, counted in no column), then
  `Ignore`, which Celery acks without a further event; no query;
- held by its type's limits (jobs.engine.limits: it waits in the database): SUCCESS, result "job 12 held
  by its type's limits (rate)";
- lost (the run's lease lapsed; its outcome did not count): FAILURE, `JobFailed("job 12: ...
  lost its lease")`, logged by the runner;
- a batch message (several jobs, jobs.engine.publish): SUCCESS, the result one line per job, e.g. "job
  12 attempt 1/4 succeeded; job 13 skipped"; each job's failure is in its row and the log; a
  batch whose every job was skipped: SKIPPED.

A FAILURE shows its run time as a SUCCESS does: Celery's `task-failed` event carries none (the
worker's main process drops the pool's run time on a failure), so the task's Request class
(`Request`, below) adds it.

The attempt and a failure's error come with the runner's Outcome: no second read of the row.
"""
from __future__ import annotations

import functools
import logging
import time
from typing import Any, Callable

from celery import Task
from celery.exceptions import Ignore
from celery.utils.saferepr import saferepr
from celery.worker.request import Request as CeleryRequest

log = logging.getLogger("conveyor.tasks")


class JobFailed(Exception):
    """Celery's FAILURE for a dead job, or a run that lost its row.

    Raised after the outcome is in PostgreSQL: the row is the record, this is only what a monitor
    shows."""


class JobRetried(JobFailed):
    """A job's attempt that failed and runs again later: the worker's `task-failed` event for it
    goes out as `task-retried` (Celery's RETRY), so that a monitor, which knows every run of a job
    by the job's id, shows the next run's states after it (a FAILURE would stay until the next
    run's end)."""


def reported(run: Callable[..., str]) -> Callable[..., str]:
    """Decorate the bound task `run(self, job_id)`, which returns runner.execute's status."""

    @functools.wraps(run)
    def task(self: Task, job_id: int, *more_ids: int) -> str:
        outcome = run(self, job_id, *more_ids)
        if not more_ids:
            return report(self, int(job_id), outcome)
        summary = "; ".join(describe(int(one), status) for one, status in zip((job_id, *more_ids), outcome, strict=True))
        if all(status == "skipped" for status in outcome):
            skipped(self, summary)
        return summary

    return task


def describe(job_id: int, status: str) -> str:
    """One job's line in a batch message's result."""
    if status == "skipped":
        return f"job {job_id} skipped"
    if status == "held":
        return _held(job_id, status)
    attempt_no, max_attempts = getattr(status, "attempt", None), getattr(status, "max_attempts", None)
    attempt = f" attempt {attempt_no}/{max_attempts}" if attempt_no is not None else ""
    if status in ("failed", "dead"):
        log.error("job %s%s %s%s", job_id, attempt, status, f": {_last_line(getattr(status, 'error', ''))}")
    return f"job {job_id}{attempt} {status}"


def report(task: Task, job_id: int, status: str) -> str:
    """Return the task's result for a success; raise what makes the task FAILURE, REVOKED or SKIPPED."""
    if status == "skipped":
        skipped(task, f"job {job_id} skipped: not runnable now (a duplicate message, or cancelled, ended or not yet due)")
    if status == "held":
        return _held(job_id, status)
    if status == "lost":
        raise JobFailed(f"job {job_id}: this run lost its lease and the row; its outcome was not recorded")
    attempt_no, max_attempts = getattr(status, "attempt", None), getattr(status, "max_attempts", None)
    attempt = f" attempt {attempt_no}/{max_attempts}" if attempt_no is not None else ""
    if status in ("failed", "dead"):
        message = f"job {job_id}{attempt} {status}" + (" (retried later)" if status == "failed" else "")
        reason = _last_line(getattr(status, "error", ""))
        if reason:
            message += f": {reason}"
        log.error("%s", message)
        raise (JobRetried if status == "failed" else JobFailed)(message)
    if status == "cancelled":
        revoked(task, f"job {job_id}{attempt} cancelled")
        raise Ignore()
    return f"job {job_id}{attempt} {status}"


def revoked(task: Task, summary: str) -> None:
    """Send the task's `task-revoked` event (a monitor's REVOKED), as Celery's revoke does.

    Sent whether or not the worker sends task events now (Flower may have turned them on in the
    main process, which this pool process cannot see); cancellations are rare and an event nobody
    listens to costs Redis one PUBLISH. A broker that is away loses the event, not the job (it is
    in the row already): logged, not raised."""
    if not task.send_events:
        return
    try:
        task.send_event("task-revoked", retry=False, terminated=False, signum=None, expired=False, result=summary,
                        **shown(task.request))
    except Exception as exc:  # display only: the outcome is committed
        log.warning("%s; the task-revoked event was not sent: %s", summary, exc)
    log.info("%s", summary)


def skipped(task: Task, summary: str) -> None:
    """End the task SKIPPED for a monitor: a `task-skipped` event, then Ignore (acked, no other
    event). Nothing was claimed, so nothing is lost: the row is the record either way.

    The event carries no `result`: a monitor knows every run of a job by the job's id, and a
    duplicate message's skip after the job's run would replace that run's result (Celery's event
    state keeps the ended state but takes the later event's fields). Why it was skipped is in the
    worker's log line (`Task ... ignored`, with `summary`)."""
    if task.send_events:
        try:
            task.send_event("task-skipped", retry=False, **shown(task.request))
        except Exception as exc:  # display only
            log.warning("%s; the task-skipped event was not sent: %s", summary, exc)
    raise Ignore(summary)


def shown(request: Any) -> dict[str, str]:
    """The task's name (its job type: the `shadow` header) and arguments as `task-received` shows
    them, sent again with `task-skipped` and `task-revoked`: a monitor that missed the task's
    receipt (its events turned on after the worker took the message; Flower started later) showed
    these tasks named `null`, with no arguments."""
    fields: dict[str, str] = {}
    if name := getattr(request, "shadow", None):
        fields["name"] = str(name)
    args, kwargs = getattr(request, "argsrepr", None), getattr(request, "kwargsrepr", None)
    if args is None and getattr(request, "args", None) is not None:
        args = saferepr(tuple(request.args))
    if kwargs is None and getattr(request, "kwargs", None) is not None:
        kwargs = saferepr(dict(request.kwargs))
    fields.update({key: value for key, value in (("args", args), ("kwargs", kwargs)) if value is not None})
    return fields


class Request(CeleryRequest):
    """The worker's request of `conveyor.run`: its `task-failed` event carries the run time, as
    `task-succeeded` does (Celery sends none with a failure: Flower's FAILURE rows had no runtime);
    every event of the run carries its job type and arguments (`shown`, for the worker's events).

    The time from the pool's acceptance of the task to its end, measured in the worker's main
    process (the pool's own measure is not passed on for a failure)."""

    def revoked(self) -> bool:
        """Celery's check that this message's task id was revoked (Flower's Revoke): the message is
        acked unrun, as Celery does, and the id forgotten, so that the job's next message (the relay
        publishes the row again: its id is the job's id) runs. Revoking a message never cancels
        its job (the admin and the API do)."""
        gone = super().revoked()
        if gone:
            from celery.worker.state import revoked as revoked_ids

            revoked_ids.discard(self.id)
        return gone

    def send_event(self, type: str, **fields: Any) -> None:  # noqa: A002 - Celery's name
        if type == "task-failed" and str(fields.get("exception", "")).startswith(f"{JobRetried.__name__}("):
            type = "task-retried"  # noqa: A001 - Celery's RETRY: the job runs again (JobRetried)
        if type in ("task-failed", "task-retried") and "runtime" not in fields and self.time_start:
            fields["runtime"] = max(0.0, time.time() - self.time_start)
        if type in NAMED_EVENTS:
            # The job type and arguments with every event of the run, not only task-received: a
            # monitor that missed the receipt (events turned on, or Flower started, after the
            # worker took the message) showed the run named None, without arguments.
            for key, value in (("name", self.name), ("args", self.argsrepr), ("kwargs", self.kwargsrepr)):
                if value:
                    fields.setdefault(key, value)
        super().send_event(type, **fields)


#: The worker's events of a run that Celery sends without its name and arguments.
NAMED_EVENTS = frozenset({"task-started", "task-succeeded", "task-failed", "task-retried"})


def _held(job_id: int, status: str) -> str:
    reason = getattr(status, "error", "")
    if reason == "paused":
        return f"job {job_id} held: its queue or type is paused; it waits in the database until resumed"
    return f"job {job_id} held by its type's limits ({reason}): it waits in the database"


def _last_line(error: str) -> str:
    """The error's last line (a traceback's exception line), at most 300 characters."""
    lines = [line.strip() for line in (error or "").splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""
