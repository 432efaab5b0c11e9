"""A call by name of a job type or a durable task, through Celery's `app.send_task`: its job.

Celery's `send_task(name, args, kwargs)` sends a message for a task the caller need not import;
what calls it by name: Flower's `POST /api/task/send-task/<name>`, `celery call <name>`, a
project's own `app.send_task`. Celery knows no Conveyor job type (`examples.echo` is a row type
run by `conveyor.run`), so such a message was unregistered on every worker and discarded: nothing
durable, nothing run. Here, a name that is a job type (and not a Celery task) makes the job, with
`kwargs` as its input; a durable task (conveyor_celery) is called as `apply_async` calls it; any
name that is neither (nor one of Celery's own, `celery.*`) is refused: every worker would discard
its message as unregistered. What is returned is a result over the row (`AsyncResult`, the job's
id as its id): Flower's answer's `task-id` is the job's id, and its state is the row's.
"""
from __future__ import annotations

import datetime as dt
from typing import Any

from conveyor_celery.result import AsyncResult, django_ready

#: The options of a call by name that a job honours; others given a value (a queue, an exchange,
#: ...) are refused rather than silently dropped: a job type's queue is its own. (`celery call`
#: passes every option it has, most of them None.)
JOB_OPTIONS = frozenset({"countdown", "eta", "priority", "task_id"})
#: Options Celery itself adds to a call by name, with nothing to say for a job.
IGNORED = frozenset({"producer", "connection", "router", "result_cls", "add_to_parent", "retries", "reply_to",
                     "publisher", "route_name", "shadow", "replaced_task_nesting", "retry", "retry_policy"})


class RefusedCall(ValueError):
    """A call by name of a job type that cannot make its job (its message says why)."""


def job_call(name: str, args: Any, kwargs: Any, options: dict[str, Any]) -> Any:
    """The job a call by name of `name` makes, as an `AsyncResult`; None when `name` is no job type
    (Celery sends the call itself)."""
    django_ready()
    from jobs.engine import registry

    if registry.find(name) is None:
        if name.startswith("celery."):
            return None  # Celery's own tasks
        # Neither a Celery task this app knows nor a job type: every Conveyor worker would discard
        # the message as unregistered (an ERROR in its log), the call lost.
        raise RefusedCall(f"no job type or task named {name!r} (GET /api/types lists the job types)")
    if args:
        if len(args) == 1 and isinstance(args[0], dict) and not kwargs:
            kwargs = args[0]
        else:
            raise RefusedCall(f"{name}: a job type takes its input as keyword arguments (kwargs), "
                              f"or one object in args, not {len(args)} positional argument(s)")
    unknown = sorted(key for key, value in options.items()
                     if value is not None and key not in JOB_OPTIONS | IGNORED and (key, value) != ("serializer", "json"))
    if unknown:
        raise RefusedCall(f"{name}: option(s) {', '.join(unknown)} not supported for a job "
                          f"(supported: {', '.join(sorted(JOB_OPTIONS))})")
    from jobs import enqueue

    run_after = _when(options.get("countdown"), options.get("eta"))
    task_id = options.get("task_id")
    try:
        job = enqueue(name, dict(kwargs or {}), run_after=run_after, priority=options.get("priority"),
                      idempotency_key=f"celery:{task_id}" if task_id else None)
    except registry.InvalidJob as exc:  # name the fields at fault, as the HTTP API's 400 does
        errors = getattr(exc, "errors", None) or {}
        raise RefusedCall(f"{name}: {exc}" + "".join(f"; {field}: {message}" for field, message in errors.items())) from None
    return AsyncResult(str(job.pk))


def _when(countdown: Any, eta: Any) -> dt.datetime | None:
    if eta is not None:
        if isinstance(eta, str):  # Flower's send-task passes its body's "eta" as it came
            try:
                eta = dt.datetime.fromisoformat(eta)
            except ValueError:
                raise RefusedCall(f"eta {eta!r} is not an ISO 8601 date and time") from None
        return eta if eta.tzinfo else eta.replace(tzinfo=dt.timezone.utc)
    if countdown is not None:
        try:
            countdown = float(countdown)
        except (TypeError, ValueError):
            raise RefusedCall(f"countdown {countdown!r} is not a number of seconds") from None
        return dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=float(countdown))
    return None
