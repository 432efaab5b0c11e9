"""Celery tasks as Conveyor job types: `DurableTask`, and `shared_task` that makes one.

A converted task is a job type named by its Celery task name. Calling it (`.delay()`,
`.apply_async()`) writes a job row in the caller's transaction instead of sending a Celery
message; a Conveyor worker runs the row through `handler`, which calls the task's own function
with the row's args and kwargs and a Celery `self.request`. The row's input is
`{"args": [...], "kwargs": {...}, "celery": {...}}` (`celery`: what the call asked besides the
arguments: `expires`, `link_error`, and `prev` for a chain step that receives the previous
result as its first argument).
"""
from __future__ import annotations

import ctypes
import fnmatch
import datetime as dt
import logging
import socket
import threading
from dataclasses import dataclass
from typing import Any, Callable

import celery
import celery.states
from billiard.einfo import ExceptionInfo
from celery import Task
from celery.exceptions import Ignore, Reject, Retry, TaskRevokedError
from celery.utils.imports import gen_task_name

from conveyor_celery.declarations import REFUSED_SERIALIZERS, STATE_MARK, declared, task_queue
from conveyor_celery.errors import Unsupported

log = logging.getLogger("conveyor.celery")

#: Celery's default when a task says nothing (`Task.max_retries`); None there means "forever".
UNLIMITED_RETRIES = 1_000_000

#: Task objects seen by name (DurableTask.bind): the handler runs these.
_tasks: dict[str, Task] = {}
#: The countdown a failed attempt asked for (self.retry / autoretry_for), read by the job type's
#: backoff in the same thread when the runner records the failure.
_retry = threading.local()


@dataclass(frozen=True)
class RetryDelay:
    """The job type's backoff (duck-typed as jobs.engine.registry.Backoff): the countdown the task's
    own `retry()` asked for, or `default_retry_delay` (a time limit, a lost worker)."""

    default: float

    def delay(self, attempt: int) -> float:
        asked = getattr(_retry, "countdown", None)
        _retry.countdown = None
        return max(0.0, float(asked if asked is not None else self.default))


def _conf(name: str, default: Any = None) -> Any:
    return celery.current_app.conf.get(name, default)


def _route(name: str, options: dict[str, Any]) -> str:
    """The queue of a task: its `queue=` option, else `task_routes` (a dict by name or glob, or a
    list of such dicts), else the app's `task_default_queue`. Router functions are refused."""
    if options.get("queue"):
        queue = options["queue"]
        return queue if isinstance(queue, str) else queue.name
    routes = _conf("task_routes") or {}
    for table in routes if isinstance(routes, (list, tuple)) else [routes]:
        if not isinstance(table, dict):
            raise Unsupported(f"task {name!r}: task_routes must be a dict of task names for durable tasks (got a router function)")
        route = table.get(name)
        if route is None:  # Celery's glob keys ('feed.tasks.*'), first match in order
            globs = ((pattern, r) for pattern, r in table.items() if any(c in pattern for c in "*?["))
            route = next((r for pattern, r in globs if fnmatch.fnmatchcase(name, pattern)), None)
        if route is not None:
            queue = route.get("queue") if isinstance(route, dict) else route
            if queue:
                return queue if isinstance(queue, str) else queue.name
    return _conf("task_default_queue") or "default"


def _check_options(name: str, options: dict[str, Any]) -> None:
    serializer = options.get("serializer") or _conf("task_serializer")
    if serializer in REFUSED_SERIALIZERS:
        raise Unsupported(
            f"task {name!r}: serializer {serializer!r} is refused: a durable task's arguments are stored as JSON "
            "(use serializer='json' and pass ids instead of objects)"
        )


def rate_of(name: str, rate: Any) -> str | None:
    """Celery's rate limit as Conveyor's: `"10/s"`, `"10/m"`, `"10/h"`, or a number per second."""
    if rate in (None, "", 0):
        return None
    if isinstance(rate, (int, float)) and float(rate).is_integer():
        return f"{int(rate)}/s"
    if isinstance(rate, str) and rate.strip().isdigit():
        return f"{int(rate)}/s"
    if isinstance(rate, str):
        return rate.strip()
    raise Unsupported(f"task {name!r}: rate_limit {rate!r}: a whole number of starts per second, minute or hour ('10/s', '10/m', '10/h')")


def job_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """The job type a task's options make: queue, retries, backoff, time limit, priority, rate,
    and Conveyor's `atomic=True` (the task's database writes commit with its outcome, or not at all:
    docs/atomic.md)."""
    _check_options(name, options)
    max_retries = options.get("max_retries", Task.max_retries)
    # autoretry_for's retry_kwargs={'max_retries': 5} (the tasks guide's form) is what its retry()
    # calls ask: the row must allow that many attempts, above the task's own max_retries.
    asked = (options.get("retry_kwargs") or {}).get("max_retries", max_retries)
    if max_retries is not None:
        max_retries = None if asked is None else max(int(max_retries), int(asked))
    soft = options.get("soft_time_limit") or _conf("task_soft_time_limit")
    hard = options.get("time_limit") or _conf("task_time_limit")
    timeout = int(soft or hard or 300)
    priority = options.get("priority")
    if priority is None:
        priority = _conf("task_default_priority")
    if priority is None:
        priority = 5
    return {
        "queue": _route(name, options),
        "retries": UNLIMITED_RETRIES if max_retries is None else int(max_retries),
        "backoff": RetryDelay(float(options.get("default_retry_delay", Task.default_retry_delay))),
        "timeout": max(1, timeout),
        "priority": min(9, max(0, int(priority))),
        "rate_limit": rate_of(name, options.get("rate_limit")),
        "atomic": options.get("atomic", False),
    }


def declare(name: str, options: dict[str, Any]) -> None:
    """Register the job type of a converted task (once per name and process)."""
    from jobs.engine import registry

    if name in declared:
        return
    made = job_options(name, options)
    try:
        registry.add(registry.JobType(name=name, handler=_handler_for(name), on_finish=_on_finish, **made))
    except registry.ImproperlyDeclared as exc:
        raise Unsupported(f"task {name!r}: {exc}") from None
    declared[name] = options


def shared_task(*args: Any, **options: Any) -> Any:
    """`celery.shared_task` making a durable task: `from conveyor_celery import shared_task`.

    The same forms as Celery's: `@shared_task`, `@shared_task(bind=True, ...)`. The job type is
    registered now (every process that imports the module knows it); the task object is Celery's,
    made by each app when it is finalized, with `DurableTask` as its base."""
    def make(fun: Callable[..., Any]) -> Any:
        options["base"] = durable_base(options.get("base"), fun.__qualname__)
        name = options.get("name") or gen_task_name(celery.current_app, fun.__name__, fun.__module__)
        declare(name, {**_class_options(options["base"]), **options})
        return celery.shared_task(**options)(fun)

    if len(args) == 1 and callable(args[0]):
        return make(args[0])
    if args:
        raise TypeError("shared_task takes the function, or keyword options only")
    return make


#: DurableTask made from a project's own Celery task class (`base=MyTask`), one per class.
_bases: dict[type, type] = {}


def durable_base(base: Any, what: str) -> type:
    """The task class of a durable task: DurableTask, a subclass of it, or, for a project's own
    `celery.Task` subclass (Celery's `class MyTask(Task): def on_failure(...)` with
    `@shared_task(base=MyTask)`), DurableTask mixed in before it (its handlers and attributes kept)."""
    if base is None:
        return DurableTask
    if not (isinstance(base, type) and issubclass(base, Task)):
        raise Unsupported(f"task {what}: base={base!r} must be a Celery Task class")
    if issubclass(base, DurableTask):
        return base
    if base not in _bases:
        _bases[base] = type(base.__name__, (DurableTask, base), {"__module__": base.__module__, "__qualname__": base.__qualname__})
    return _bases[base]


def _class_options(cls: type) -> dict[str, Any]:
    """Options a task class sets as class attributes (a base class's retry policy), its own or its
    bases' (not Celery's or DurableTask's defaults)."""
    names = ("max_retries", "default_retry_delay", "rate_limit", "time_limit", "soft_time_limit", "priority",
             "queue", "serializer", "ignore_result", "autoretry_for", "retry_backoff", "retry_kwargs")
    found: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        if klass is DurableTask or not issubclass(klass, Task) or klass.__module__.startswith("celery."):
            continue
        found.update({n: vars(klass)[n] for n in names if vars(klass).get(n) is not None})
    return found


class DurableTask(Task):
    """A Celery task whose calls are Conveyor jobs (rows in PostgreSQL), run by Conveyor's workers."""

    # Celery's own defaults are kept: 3 retries, a 3-minute default_retry_delay.

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # `@app.task(base=DurableTask)` and Celery's task classes: the class Celery makes from the
        # function carries its name and options; register it then (shared_task did already).
        super().__init_subclass__(**kwargs)
        name = vars(cls).get("name")
        if name and "run" in vars(cls):
            options = {k: v for k, v in vars(cls).items() if not k.startswith("_")}
            declare(name, {**_class_options(cls), **options})

    def bind(self, app: Any) -> Any:
        bound = super().bind(app)
        if self.name:
            _tasks[self.name] = self
        return bound

    # -- calls --------------------------------------------------------------------------------

    # chunks / map / starmap are Celery's own (`Task.chunks`, `.map`, `.starmap`): their
    # signatures run durably through canvas.install (a map is one job of this task).

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """A direct call runs the function here, as Celery's does. A Celery message of this task
        run by a worker (`app.send_task(name)` from a process that does not know the task is
        durable, or sent before it was) becomes its job instead, keyed by the message's id (a
        redelivered message finds the same job; `AsyncResult(id)` finds it by that id), and the
        message is acked once the row is written: the call is durable from there on."""
        request = self.request_stack.top
        if request is not None and request.called_directly is False and not request.is_eager \
                and not getattr(request, "conveyor_job", None) and request.id:
            self.apply_async(args, kwargs, task_id=request.id)
            log.info("task %s[%s]: a Celery message of a durable task, made its job", self.name, request.id)
            return None
        return super().__call__(*args, **kwargs)

    def replace(self, sig: Any) -> Any:
        """Refused: Celery's `self.replace(sig)` hands this task's place in its canvas (and its
        result) to a new canvas sent from inside the run; a job's outcome and its chain's next step
        are fixed when the job ends, so the replacement's result could not become this job's."""
        raise Unsupported(
            f"task {self.name!r}: self.replace() is not supported on durable tasks: return a value and chain the "
            "rest (task.s() | next.s()), or start the new canvas and return its id"
        )

    def update_state(self, task_id: str | None = None, state: str | None = None, meta: Any = None, **kwargs: Any) -> None:
        """Celery's `update_state` (a custom state such as PROGRESS, with its meta) on the running
        job's row: `AsyncResult.state` and `.info` show them while it runs (the row's progress
        message holds them as JSON, its percent `meta`'s current/total when it has them). A
        `state=SUCCESS` before `raise Ignore()` is the job's result."""
        request = self.request
        if not getattr(request, "conveyor_job", None) or (task_id is not None and str(task_id) != request.id):
            return super().update_state(task_id, state, meta, **kwargs)
        report_state(self.name, request.conveyor_ctx, state, meta)

    def delay(self, *args: Any, **kwargs: Any) -> Any:
        return self.apply_async(args, kwargs)

    def apply_async(self, args: Any = None, kwargs: Any = None, task_id: str | None = None, producer: Any = None,
                    link: Any = None, link_error: Any = None, shadow: Any = None, **options: Any) -> Any:
        """Write the job row (in the caller's transaction); its message goes after commit. Under
        `task_always_eager` (a project's test settings), Celery's: run here, now, no row."""
        from conveyor_celery import canvas

        if self.app.conf.task_always_eager:
            return super().apply_async(args, kwargs, task_id=task_id, link=link, link_error=link_error, **options)

        return canvas.apply_task(self, args, kwargs, task_id=task_id, link=link, link_error=link_error, **options)

    def retry(self, args: Any = None, kwargs: Any = None, exc: BaseException | None = None, throw: bool = True,
              eta: dt.datetime | None = None, countdown: float | None = None, max_retries: int | None = None,
              **options: Any) -> Any:
        """Celery's `retry`: the job's next attempt runs after `countdown` (or at `eta`, or after
        `default_retry_delay`), the same job row, its attempt counted. Past `max_retries` the
        exception (or MaxRetriesExceededError) is raised: the job is dead."""
        request = self.request
        if not getattr(request, "conveyor_job", None):
            return super().retry(args, kwargs, exc, throw, eta, countdown, max_retries, **options)
        if args is not None or kwargs is not None:
            raise Unsupported(f"task {self.name!r}: retry() with other args/kwargs (the job's input is fixed: retry with the same ones)")
        limit = self.max_retries if max_retries is None else max_retries
        if limit is not None and request.retries >= limit:
            if exc is not None:
                raise exc
            raise self.MaxRetriesExceededError(f"Can't retry {self.name}[{request.id}] args:{request.args} kwargs:{request.kwargs}")
        if eta is not None:
            when: Any = eta
            countdown = max(0.0, (eta - dt.datetime.now(dt.timezone.utc)).total_seconds())
        else:
            countdown = self.default_retry_delay if countdown is None else countdown
            when = countdown
        ret = Retry(exc=exc, when=when)
        ret.countdown = countdown  # type: ignore[attr-defined]
        if throw:
            raise ret
        return ret


def report_state(name: str, ctx: Any, state: Any, meta: Any) -> None:
    """A custom state of the running job, on its row (the job's `ctx.progress`)."""
    import json

    state = state or celery.states.PENDING
    try:
        text = STATE_MARK + json.dumps({"state": str(state), "meta": meta}, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise Unsupported(f"task {name!r}: update_state(meta=...) must be JSON here: {exc}") from None
    if len(text) > 500:
        raise Unsupported(f"task {name!r}: update_state(meta=...) is {len(text)} characters as JSON; at most 500 "
                          "are kept on a running job (report progress, return the data)")
    percent = 0
    if isinstance(meta, dict) and isinstance(meta.get("current"), (int, float)) and isinstance(meta.get("total"), (int, float)) \
            and meta["total"] > 0:
        percent = int(100 * meta["current"] / meta["total"])
    ctx.progress(percent, text)
    _retry.reported = (str(state), meta)


def task_named(name: str) -> Task:
    task = _tasks.get(name)
    if task is None:
        task = celery.current_app.tasks[name]  # finalizes the app: shared tasks are made now
    return task


# -- running --------------------------------------------------------------------------------


def _handler_for(name: str) -> Callable[[Any, dict[str, Any]], Any]:
    def handler(ctx: Any, data: dict[str, Any]) -> Any:
        return run(name, ctx, data)

    handler.__qualname__ = handler.__name__ = f"celery_task[{name}]"
    return handler


def run(name: str, ctx: Any, data: dict[str, Any]) -> Any:
    """Run a converted task's function for one job: Celery's argument passing, request and retry."""
    from jobs import Permanent

    _retry.countdown = None
    _retry.reported = None
    # The type's on_finish (`_on_finish`) acts on a dead end only (which runs it whatever this
    # says): a success's outcome is then one statement in autocommit, no BEGIN ... COMMIT around it.
    ctx.finish_hook_needed = False
    task = task_named(name)
    extra = data.get("celery") or {}
    args, kwargs = list(data.get("args") or ()), dict(data.get("kwargs") or {})
    expires = extra.get("expires")
    if expires and dt.datetime.fromisoformat(expires) <= dt.datetime.now(dt.timezone.utc):
        _expire(ctx.job_id)
        log.info("task %s[%s] expired at %s: not run (REVOKED)", name, ctx.job_id, expires)
        return None
    if extra.get("prev"):
        args.insert(0, _previous(ctx))
    if extra.get("errback_of"):  # Celery's errback(request, exc, traceback), of the failed job's row
        args[:0] = _failure_of(int(extra["errback_of"]))
    mapping = extra.get("map")
    request = {
        "id": str(ctx.job_id), "retries": ctx.attempt - 1, "args": args, "kwargs": kwargs,
        "is_eager": False, "called_directly": False, "conveyor_job": ctx.job_id, "conveyor_ctx": ctx, "task": name,
        "delivery_info": {"routing_key": task_queue(name), "priority": None, "redelivered": ctx.attempt > 1},
        "root_id": extra.get("root_id") or str(ctx.job_id), "parent_id": str(ctx.parent_id) if ctx.parent_id else None,
        "group": f"group:{ctx.chain_id}" if ctx.member is not None else None, "expires": expires,
        "hostname": socket.gethostname(),
        "ignore_result": bool(declared.get(name, {}).get("ignore_result")), "headers": {}, "reply_to": None,
        "correlation_id": str(ctx.job_id),
        "timelimit": (task.time_limit, task.soft_time_limit),
    }
    task.push_request(**request)
    stopper = Revoked(ctx)
    # Celery's handlers of the task's class (before_start, on_success, on_retry, on_failure,
    # after_return), called as Celery's tracer calls them; a map's calls are the function's only.
    handlers = not mapping
    job_id = str(ctx.job_id)
    try:
        if handlers:
            task.before_start(job_id, args, kwargs)
        if mapping:  # Celery's xmap / xstarmap: the function per item, in order, in this one job
            star = mapping.get("star")
            result = [task.run(*item) if star else task.run(item) for item in mapping.get("items") or ()]
        else:
            result = task.run(*args, **kwargs)
    except Ignore:
        # Celery's Ignore: the worker records nothing; the row must end, and ends SUCCESS with what
        # the task reported as its success (update_state(state=SUCCESS, meta=...)), else None.
        reported = getattr(_retry, "reported", None)
        result = reported[1] if reported and reported[0] == celery.states.SUCCESS else None
    except Reject as reject:
        if reject.requeue:  # delivered again: the same row's next attempt, at once (counted)
            _retry.countdown = 0
            raise RuntimeError(f"Reject(requeue=True): {reject.reason!r}") from None
        raise Permanent(f"celery.exceptions.Reject: {reject.reason!r}") from None
    except Retry as retry:
        _retry.countdown = getattr(retry, "countdown", None)
        if handlers:
            _handle(task, "on_retry", retry.exc, job_id, args, kwargs, ExceptionInfo())
            _handle(task, "after_return", celery.states.RETRY, retry, job_id, args, kwargs, ExceptionInfo())
        if isinstance(retry.exc, BaseException):
            raise retry.exc from None
        raise
    except Exception as exc:
        # Celery does not retry a task that raised (only retry() and autoretry_for do): its last attempt.
        if handlers and not isinstance(exc, TaskRevokedError):
            einfo = ExceptionInfo()
            _handle(task, "on_failure", exc, job_id, args, kwargs, einfo)
            _handle(task, "after_return", celery.states.FAILURE, exc, job_id, args, kwargs, einfo)
        kind = type(exc)
        qualified = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
        raise Permanent(f"{qualified}: {exc}") from exc
    else:
        if handlers:
            _handle(task, "on_success", result, job_id, args, kwargs)
            _handle(task, "after_return", celery.states.SUCCESS, result, job_id, args, kwargs, None)
    finally:
        stopper.stop()
        task.pop_request()
    # ignore_result as the call (else the task) asks (Conveyor's app sets task_ignore_result: no
    # Celery result backend; the row is the result).
    ignore = extra.get("ignore_result", declared.get(name, {}).get("ignore_result"))
    if ignore and ctx.chain_id is None:
        return None
    return result


def _handle(task: Task, handler: str, *args: Any) -> None:
    """One of the task class's handlers; an exception from it is logged, as Celery's tracer logs
    it, and does not change the outcome."""
    try:
        getattr(task, handler)(*args)
    except Exception:
        log.exception("task %s: its %s handler raised", task.name, handler)


def _failure_of(job_id: int) -> list[Any]:
    """What Celery passes an errback of the form `errback(request, exc, traceback)`: the failed
    task's request (its id, name, args, kwargs), its exception (rebuilt from the stored traceback,
    as `AsyncResult.result` is) and its traceback text."""
    from celery.app.task import Context

    from conveyor_celery.errors import exception_from
    from jobs.models import Job

    failed = Job.objects.values("type", "input", "error", "chain_id", "parent_id").get(pk=job_id)
    data = failed["input"] or {}
    request = Context(id=str(job_id), task=failed["type"], args=list(data.get("args") or ()),
                      kwargs=dict(data.get("kwargs") or {}), root_id=(data.get("celery") or {}).get("root_id") or str(job_id),
                      parent_id=str(failed["parent_id"]) if failed["parent_id"] else None,
                      group=None, is_eager=False, called_directly=False)
    return [request, exception_from(failed["error"]), failed["error"]]


class Revoked:
    """Stops a run whose job was revoked (cancelled) while it runs, as Celery's
    `revoke(terminate=True)` does, without killing the process: the heartbeat sets `ctx.cancelled`
    (within a third of the lease), and this raises TaskRevokedError in the task's thread at its
    next Python instruction (a call blocked in C finishes first). The row ends REVOKED.

    The check runs every POLL_SECONDS on the process's deadlines thread (jobs.engine.deadlines),
    not on a thread of its own: a thread started per run cost more CPU than a no-op task's whole
    run (issue 28); a run shorter than POLL_SECONDS schedules one check and cancels it."""

    POLL_SECONDS = 0.2

    def __init__(self, ctx: Any) -> None:
        from jobs.engine.deadlines import deadlines

        self.ctx, self.thread_id = ctx, threading.get_ident()
        self._lock, self._done, self._fired = threading.Lock(), False, False
        self._deadlines = deadlines
        self._next = deadlines.after(self.POLL_SECONDS, self._check)

    def _check(self) -> None:
        with self._lock:
            if self._done:
                return
            if self.ctx.cancelled and not self.ctx.lost:
                self._fired = True
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self.thread_id), ctypes.py_object(TaskRevokedError))
                return
            self._next = self._deadlines.after(self.POLL_SECONDS, self._check)

    def stop(self) -> None:
        with self._lock:
            self._done = True
            self._deadlines.cancel(self._next)
            if self._fired:  # raised after the task returned: drop it if still pending
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self.thread_id), None)


def _previous(ctx: Any) -> Any:
    """The previous step's result (Celery's chain passing): a group's results as a list, else
    the output of the job before (the row's parent)."""
    from jobs.models import Job

    if ctx.results_count is not None:
        return ctx.results
    if ctx.parent_id is None:
        return None
    return Job.objects.values_list("output", flat=True).get(pk=ctx.parent_id)


def _expire(job_id: int) -> None:
    """A job past its `expires` ends REVOKED (cancelled) without running: the cancel asked here
    makes the runner record this run's end as cancelled."""
    from jobs.engine import control
    from jobs.models import Job

    control.cancel(Job.objects.get(pk=job_id))


def _on_finish(job_id: int, status: str) -> None:
    """In the transaction recording a job's final outcome: a dead job's `link_error` callbacks are
    enqueued (in that transaction: they exist if and only if the failure is recorded), each called
    as Celery calls it (`errback(task_id)`, or `errback(request, exc, traceback)`); and when this
    end failed a chord (a header member died), the body's own `link_error` callbacks, once (the
    canvas guide's `group(...) | tsum.s().on_error(on_chord_error.s())`)."""
    if status != "dead":
        return
    from jobs.models import Job

    from conveyor_celery import canvas

    job = Job.objects.values("input", "chain_id", "chain_index", "member").get(pk=job_id)
    data = job["input"] or {}
    for sig in (data.get("celery") or {}).get("link_error") or []:
        canvas.enqueue_callback(sig, str(job_id))
    if job["member"] is not None and job["chain_id"] is not None:
        _chord_errbacks(job_id, job["chain_id"], job["chain_index"])


def _chord_errbacks(job_id: int, chain_id: int, index: int) -> None:
    """A chord's body never runs once a header member died: its errbacks are enqueued by the end
    that failed the chain (the chain's row, locked by every end of its jobs, was finished in this
    transaction), each once (its key), called with the failed member's id (Celery: the body's)."""
    from django.db import connection

    from jobs.models import Job

    from conveyor_celery import canvas

    with connection.cursor() as cursor:
        cursor.execute("SELECT steps FROM jobs_chain WHERE id = %s AND status = 'failed' AND finished_at = now()", [chain_id])
        row = cursor.fetchone()
    if row is None:
        return
    steps = row[0] if isinstance(row[0], list) else __import__("json").loads(row[0])
    body = steps[index + 1] if index + 1 < len(steps) else None
    if not body or "group" in body:
        return
    for n, sig in enumerate(((body.get("input") or {}).get("celery") or {}).get("link_error") or []):
        key = f"celery:chord-errback:{chain_id}:{n}"
        if not Job.objects.filter(idempotency_key=key).exists():
            canvas.enqueue_callback(sig, str(job_id), idempotency_key=key)
