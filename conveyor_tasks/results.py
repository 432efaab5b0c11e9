"""A job row as a `TaskResult`, every field read from the row (the row is the truth).

Status: pending -> READY; failed (an attempt failed, another will run at run_after) -> READY;
running -> RUNNING; succeeded -> SUCCESSFUL; dead (its last attempt failed) -> FAILED; cancelled ->
FAILED (the framework has no cancelled state; the row's own status says `cancelled`).
"""
from __future__ import annotations

import builtins
import dataclasses
import datetime as dt
import re
from types import SimpleNamespace
from typing import Any

from conveyor_tasks import compat
from jobs.models import Job, Status

STATUS = {
    Status.PENDING: compat.TaskResultStatus.READY,
    Status.FAILED: compat.TaskResultStatus.READY,
    Status.RUNNING: compat.TaskResultStatus.RUNNING,
    Status.SUCCEEDED: compat.TaskResultStatus.SUCCESSFUL,
    Status.DEAD: compat.TaskResultStatus.FAILED,
    Status.CANCELLED: compat.TaskResultStatus.FAILED,
}

#: The class path of an attempt that ended without a Python exception of the task's: its worker
#: was lost (killed, its lease lapsed, handed back) or the platform failed it (a time limit).
WORKER_LOST = "conveyor_tasks.errors.WorkerLost"
ATTEMPT_FAILED = "conveyor_tasks.errors.AttemptFailed"
_LAST_LINE = re.compile(r"^([A-Za-z_][\w.]*)(?::|$)")


def exception_class_path(error: str) -> str:
    """The exception class path of a stored error: a traceback's last line names it
    (`ValueError: ...` -> builtins.ValueError; `pkg.mod.Error: ...`); a platform message its kind."""
    if error.startswith("Traceback"):
        lines = [line for line in error.strip().splitlines() if line and not line.startswith(" ")]
        match = _LAST_LINE.match(lines[-1]) if lines else None
        if match:
            name = match[1]
            if "." not in name:
                return f"builtins.{name}" if isinstance(getattr(builtins, name, None), type) else name
            return name
    if error.startswith(("lease expired", "worker process died", "handed back")):
        return WORKER_LOST
    if error.startswith("timeout"):
        return "builtins.TimeoutError"
    return ATTEMPT_FAILED


def errors(job: Job) -> list[compat.TaskError]:
    return [
        compat.TaskError(exception_class_path=exception_class_path(entry.get("error", "")), traceback=entry.get("error", ""))
        for entry in job.errors or []
    ]


def worker_ids(job: Job) -> list[str]:
    """One entry per attempt run: each failed attempt's worker, then the last attempt's when it did
    not fail (running, succeeded, or ended cancelled by returning)."""
    ids = [entry.get("worker", "") for entry in job.errors or []]
    last = (job.errors or [{}])[-1].get("attempt") if job.errors else None
    if job.attempt > 0 and job.worker and last != job.attempt and job.status in (Status.RUNNING, Status.SUCCEEDED, Status.CANCELLED):
        ids.append(job.worker)
    return ids


def _parse(value: Any) -> dt.datetime | None:
    return dt.datetime.fromisoformat(value) if isinstance(value, str) else None


def from_row(job: Job, task: compat.Task) -> compat.TaskResult:
    """The TaskResult of `job` for `task` (the row's queue, priority and run_after on it)."""
    data = job.input or {}
    changes: dict[str, Any] = {"queue_name": job.queue}
    if isinstance(data.get("priority"), int):
        changes["priority"] = data["priority"]
    if run_after := _parse(data.get("run_after")):
        changes["run_after"] = run_after
    # `using` copies and validates the task again (the backend's checks): only when the row says
    # otherwise than the task as declared (a `task.using(...)` at enqueue), not for every result.
    if any(getattr(task, name) != value for name, value in changes.items()):
        try:
            task = task.using(**changes)
        except compat.InvalidTask:  # settings changed since (a queue no longer listed): as declared
            pass
    errs = errors(job)
    started = _parse(job.errors[0].get("started_at")) if job.errors else None
    fields = {
        "task": task,
        "id": str(job.pk),
        "status": STATUS[job.status],
        "enqueued_at": job.created_at,
        "started_at": started or job.started_at,
        "last_attempted_at": job.started_at,
        "finished_at": job.finished_at if job.status in (Status.SUCCEEDED, Status.DEAD, Status.CANCELLED) else None,
        "args": list(data.get("args", [])),
        "kwargs": dict(data.get("kwargs", {})),
        "backend": data.get("backend", task.backend),
        "errors": errs,
        "worker_ids": worker_ids(job),
    }
    result = compat.TaskResult(**{k: v for k, v in fields.items() if k in _INIT_FIELDS})
    if job.status == Status.SUCCEEDED:
        object.__setattr__(result, "_return_value", job.output)
    return result


#: The TaskResult fields its constructor takes (the backport's and Django 6's differ a little).
_INIT_FIELDS = frozenset(f.name for f in dataclasses.fields(compat.TaskResult) if f.init)


def from_claim(claimed: Any, task: compat.Task) -> compat.TaskResult:
    """The TaskResult of a row its claim just took (RUNNING), from what the claim returned
    (jobs.engine.store.Claimed): the same as `from_row` of the row read again after the claim, with
    no statement. A worker's run builds its TaskResult so (conveyor_tasks.worker)."""
    row = SimpleNamespace(
        pk=claimed.id, input=claimed.input, queue=claimed.queue, status=Status.RUNNING, created_at=claimed.created_at,
        started_at=claimed.started_at, finished_at=None, errors=list(claimed.errors), attempt=claimed.attempt,
        worker=claimed.worker, output=None,
    )
    return from_row(row, task)  # type: ignore[arg-type]
