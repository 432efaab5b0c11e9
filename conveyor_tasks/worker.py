"""The job type handler every task shares: in a worker, run the task its type names.

The row as its claim returned it is the run's TaskResult (the one a task taking context receives,
and the signals' argument: attempts, errors so far, workers): no statement reads it again
(`results.from_claim`; a Context made by hand, without its claim, reads the row). `task_started` goes before the call,
`task_finished` after it (SUCCESSFUL, or on an exception FAILED when it was the last attempt and
READY when another will run), both before the outcome's commit, which the runner makes once the
handler returns or raises. An `async def` task runs on an event loop of the worker's thread.
"""
from __future__ import annotations

import dataclasses
import json
import traceback
from typing import Any

from django.utils import timezone

from conveyor_tasks import compat, results, types
from jobs.engine.context import Context
from jobs.models import Job


def handler(ctx: Context, data: dict[str, Any]) -> Any:
    task = types.load(ctx.type)
    if task is None:  # a row of a task removed from the code: fails, then dies after its attempts
        raise LookupError(f"{ctx.type} is no longer a @task function")
    backend = types.backend_of(task)
    sender = type(backend) if backend is not None else compat.BaseTaskBackend
    claimed = ctx.claimed
    if claimed is not None and claimed.id == ctx.job_id and claimed.created_at is not None:
        running = results.from_claim(claimed, task)
    else:
        running = results.from_row(Job.objects.get(pk=ctx.job_id), task)
    compat.task_started.send(sender=sender, task_result=running)
    args, kwargs = list(data.get("args", [])), dict(data.get("kwargs", {}))
    try:
        if task.takes_context:
            value = task.call(compat.TaskContext(task_result=running), *args, **kwargs)
        else:
            value = task.call(*args, **kwargs)
        value = json.loads(json.dumps(value, allow_nan=False))
    except Exception as exc:
        last = ctx.attempt >= ctx.max_attempts
        error = compat.TaskError(
            exception_class_path=f"{type(exc).__module__}.{type(exc).__qualname__}", traceback=traceback.format_exc()
        )
        ended = dataclasses.replace(
            running,
            status=compat.TaskResultStatus.FAILED if last else compat.TaskResultStatus.READY,
            errors=[*running.errors, error],
            finished_at=timezone.now() if last else None,
        )
        compat.task_finished.send(sender=sender, task_result=ended)
        raise
    done = dataclasses.replace(running, status=compat.TaskResultStatus.SUCCESSFUL, finished_at=timezone.now())
    object.__setattr__(done, "_return_value", value)
    compat.task_finished.send(sender=sender, task_result=done)
    return value
