"""Calls and canvas as Conveyor jobs and chains.

- a task's `apply_async` is one job (`jobs.enqueue`), or, with `link=`, a chain of the task and
  its callbacks (`jobs.start_chain`);
- `chain`, `group` and `chord` (and `|` between signatures) become one chain planned up front
  with `Step` and `Group`: a chord is a group followed by its body, whose fan-in is the group's
  own (the last member's outcome releases the body, in its transaction: no `chord_unlock`).

Celery's argument passing is kept: a step whose signature is not immutable receives the previous
step's result as its first argument (a chord's body the list of its header's results); the
handler prepends it when it runs (`task.run`, the input's `celery.prev`).

Celery's canvas classes call their own `apply_async`; `install` wraps those of `chain`, `group`
and `chord` so that a canvas made only of durable tasks is planned here, and any other canvas
runs as plain Celery (tasks not converted keep working, side by side). A canvas mixing both is
refused, naming the tasks.
"""
from __future__ import annotations

import datetime as dt
from typing import Any

from celery import Celery
from celery import canvas as celery_canvas
from celery.app.base import _OMITTED
from celery.canvas import Signature, _basemap, _chain, _chord, group

from conveyor_celery import declarations as tasks
from conveyor_celery.errors import Unsupported

#: `app.send_task` options a durable task's call applies (the others are IGNORED below).
SEND_TASK_OPTIONS = {"countdown", "eta", "task_id", "expires", "link", "link_error", "priority", "queue", "ignore_result",
                     "serializer"}
#: Options of a call or a signature that the adapter applies; others are Celery's routing and
#: messaging details with no meaning for a row (exchange, routing_key, headers, retry_policy...).
IGNORED = {"exchange", "routing_key", "headers", "retry", "retry_policy", "connection", "publisher", "router",
           "add_to_parent", "reply_to", "time_limit", "soft_time_limit", "ignore_result", "compression",
           "immediate", "mandatory", "producer", "result_cls", "group_id", "group_index", "root_id", "parent_id",
           "chord", "stamped_headers", "stamps", "subtask_type", "serializer", "task_id", "use_link", "queue",
           "priority", "countdown", "eta", "expires", "link", "link_error"}


def _when(countdown: Any, eta: Any) -> dt.datetime | None:
    if eta is not None:
        if isinstance(eta, str):
            eta = dt.datetime.fromisoformat(eta)
        return eta if eta.tzinfo else eta.replace(tzinfo=dt.timezone.utc)
    if countdown is not None:
        return dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=float(countdown))
    return None


def _expires(expires: Any) -> str | None:
    if expires is None:
        return None
    if isinstance(expires, (int, float)):
        expires = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=float(expires))
    if isinstance(expires, str):
        expires = dt.datetime.fromisoformat(expires)
    if expires.tzinfo is None:
        expires = expires.replace(tzinfo=dt.timezone.utc)
    return expires.astimezone(dt.timezone.utc).isoformat()


def _check_queue(name: str, queue: Any) -> None:
    if queue is None:
        return
    queue = queue if isinstance(queue, str) else getattr(queue, "name", queue)
    declared = tasks.task_queue(name)
    if queue != declared:
        raise Unsupported(
            f"task {name!r}: queue={queue!r} at call time: a durable task runs on the queue it is declared with "
            f"({declared!r}); declare it with queue= or task_routes"
        )


def _serializable_sigs(sigs: Any, what: str) -> list[dict[str, Any]]:
    if sigs is None:
        return []
    found = sigs if isinstance(sigs, (list, tuple)) else [sigs]
    out = []
    for sig in found:
        sig = celery_canvas.maybe_signature(sig)
        if not isinstance(sig, Signature) or isinstance(sig, (_chain, group, _chord)) or sig.task not in tasks.declared:
            raise Unsupported(f"{what}={sig!r}: a durable task's {what} must be a signature of one durable task")
        entry = {"task": sig.task, "args": list(sig.args), "kwargs": dict(sig.kwargs), "immutable": bool(sig.immutable)}
        if what == "link_error" and _takes_request(sig):
            entry["request"] = True
        out.append(entry)
    return out


def _takes_request(sig: Signature) -> bool:
    """Whether Celery would call this errback `errback(request, exc, traceback)` (the form of
    Celery's calling guide) rather than `errback(task_id)`: its function takes more than one
    argument besides those the signature holds, and it is not `bind=True`
    (celery.backends.base.Backend._call_task_errbacks)."""
    from functools import partial

    from celery.utils.functional import arity_greater

    if sig.immutable:
        return False
    header = getattr(sig.type, "__header__", None)
    if header is None or isinstance(header, partial):
        return False
    try:
        return arity_greater(partial(header, *sig.args, **sig.kwargs) if (sig.args or sig.kwargs) else header, 1)
    except (TypeError, ValueError):
        return arity_greater(header, 1)


def apply_task(task: Any, args: Any, kwargs: Any, *, task_id: str | None = None, link: Any = None,
               link_error: Any = None, **options: Any) -> Any:
    """One call of a durable task: its job row (or, with `link=`, a chain of it and its callbacks)."""
    from jobs import Group, Step, enqueue, start_chain

    from conveyor_celery.result import AsyncResult

    name = task.name
    serializer = options.get("serializer")
    if serializer in tasks.REFUSED_SERIALIZERS:
        raise Unsupported(f"task {name!r}: serializer {serializer!r} is refused: arguments are stored as JSON")
    _check_queue(name, options.get("queue"))
    header = getattr(task, "__header__", None)
    if task.typing and header is not None:  # Celery's check of the arguments against the signature
        try:
            header(*(args or ()), **(kwargs or {}))
        except TypeError as exc:
            raise TypeError(f"{exc}") from None
    extra: dict[str, Any] = {}
    if (expires := _expires(options.get("expires") if options.get("expires") is not None else task.expires)) is not None:
        extra["expires"] = expires
    if errbacks := _serializable_sigs(link_error, "link_error"):
        extra["link_error"] = errbacks
    if options.get("ignore_result") is not None:  # the call's, over the task's
        extra["ignore_result"] = bool(options["ignore_result"])
    data = tasks.encode(name, args, kwargs, extra)
    priority = options.get("priority")
    priority = None if priority is None else min(9, max(0, int(priority)))
    key = f"celery:{task_id}" if task_id else None
    run_after = _when(options.get("countdown"), options.get("eta"))
    if link is None:
        job = enqueue(name, data, idempotency_key=key, run_after=run_after, priority=priority)
        return AsyncResult(str(job.pk))
    callbacks: list[Any] = [_step(sig, prev=not sig["immutable"]) for sig in _serializable_sigs(link, "link")]
    if len(callbacks) > 1:  # link=[a.s(), b.s()]: each gets the task's result (Celery's), side by side
        callbacks = [Group(callbacks)]
    chain = start_chain([Step(name, data, idempotency_key=key, run_after=run_after, priority=priority), *callbacks])
    return AsyncResult(str(chain.jobs.get(chain_index=0).pk))


def _step(sig: dict[str, Any], prev: bool) -> Any:
    from jobs import Step

    return Step(sig["task"], tasks.encode(sig["task"], sig["args"], sig["kwargs"], {"prev": True} if prev else {}))


def enqueue_callback(sig: dict[str, Any], task_id: str, idempotency_key: str | None = None) -> None:
    """A `link_error` callback of a dead job, enqueued in its outcome's transaction."""
    from jobs import enqueue

    if sig.get("request"):  # errback(request, exc, traceback): built from the failed row when it runs
        data = tasks.encode(sig["task"], sig["args"], sig["kwargs"], {"errback_of": int(task_id)})
    else:
        args = sig["args"] if sig["immutable"] else [task_id, *sig["args"]]
        data = tasks.encode(sig["task"], args, sig["kwargs"])
    enqueue(sig["task"], data, idempotency_key=idempotency_key)


# -- canvas -> plan ---------------------------------------------------------------------------


def leaves(sig: Any) -> list[Signature]:
    """Every task signature of a canvas, depth first."""
    sig = _unchunk(celery_canvas.maybe_signature(sig))
    if isinstance(sig, _chord):
        header = sig.tasks if isinstance(sig.tasks, group) else group(list(sig.tasks))
        return [*leaves(header), *(leaves(sig.body) if sig.body is not None else [])]
    if isinstance(sig, (_chain, group)):
        return [leaf for t in sig.tasks for leaf in leaves(t)]
    if (mapped := _mapped(sig)) is not None:
        return [mapped[0]]
    return [sig]


def _unchunk(sig: Any) -> Any:
    """`task.chunks(it, n)` inside a canvas is what Celery sends for it: its group of starmaps."""
    if isinstance(sig, Signature) and sig.task == "celery.chunks" and "task" in sig.kwargs:
        return celery_canvas.chunks(sig.kwargs["task"], sig.kwargs["it"], sig.kwargs["n"], app=sig.app).group()
    return sig


#: Celery's built-in tasks behind `task.map()` / `task.starmap()` (`xmap`, `xstarmap`; a
#: `chunks` is a group of `xstarmap`): whether each item is spread as the arguments.
MAP_TASKS = {"celery.map": False, "celery.starmap": True}


def _mapped(sig: Any) -> tuple[Signature, bool, list[Any]] | None:
    """A `map` / `starmap` signature's task signature, whether it is a starmap, and its items
    (the iterator read now, as Celery reads it when the message is sent); None for another."""
    if not isinstance(sig, Signature) or sig.task not in MAP_TASKS or "task" not in sig.kwargs:
        return None
    inner = celery_canvas.maybe_signature(sig.kwargs["task"])
    items = sig.kwargs.get("it") or []
    items = items if isinstance(items, list) else list(items)
    sig.kwargs["it"] = items  # an iterator is read once: keep what was read
    return inner, MAP_TASKS[sig.task], items


def _map_step(sig: Signature, mapped: tuple[Signature, bool, list[Any]], run_after: Any, priority: Any) -> Any:
    """A `map` / `starmap` as one job of the mapped task (Celery: one `celery.map` message run by
    one worker, calling the task's function per item in order). The job runs on the task's queue,
    under its limits; its result is the list of the calls' results (docs/from-celery.md)."""
    from jobs import Step

    inner, star, items = mapped
    name = inner.task
    if inner.args or inner.kwargs:
        raise Unsupported(f"task {name!r}: map/starmap of a signature with arguments ({inner!r}): map task.s() itself")
    if star and not all(isinstance(item, (list, tuple)) for item in items):
        raise Unsupported(f"task {name!r}: starmap items must be sequences of arguments (got {items[:3]!r}...)")
    extra = {"map": {"star": star, "items": [list(i) if star else i for i in items]}}
    return Step(name, tasks.encode(name, [], {}, extra), run_after=run_after,
                priority=None if priority is None else min(9, max(0, int(priority))))


def start_map(sig: Signature, **options: Any) -> Any:
    """`task.map(it).apply_async()` / `task.starmap(it)`, alone: one job; its AsyncResult."""
    from jobs import enqueue

    from conveyor_celery.result import AsyncResult

    mapped = _mapped(sig)
    assert mapped is not None
    merged = {**sig.options, **{k: v for k, v in options.items() if v is not None}}
    _check_queue(mapped[0].task, merged.get("queue"))
    if merged.get("link") or merged.get("link_error"):
        raise Unsupported(
            f"task {mapped[0].task!r}: link=/link_error= on a map/starmap: chain the callback instead (task.map(it) | callback)"
        )
    step = _map_step(sig, mapped, _when(merged.get("countdown"), merged.get("eta")), merged.get("priority"))
    job = enqueue(step.type, step.input, run_after=step.run_after, priority=step.priority)
    return AsyncResult(str(job.pk))


def durable(sig: Any) -> bool | None:
    """True when every task of the canvas is durable, False when none is; refused when mixed."""
    found = leaves(sig)
    converted = [s.task for s in found if s.task in tasks.declared]
    if not converted:
        return False
    if len(converted) != len(found):
        plain = sorted({s.task for s in found if s.task not in tasks.declared})
        raise Unsupported(
            f"a canvas mixes durable tasks with plain Celery tasks ({', '.join(plain)}): convert them too, or keep the canvas plain"
        )
    return True


def plan(sig: Any, args: tuple = (), kwargs: dict | None = None, first: bool = True) -> list[Any]:
    """A canvas as a chain's steps (`Step` / `Group`). `args` are the partial arguments given to
    the call (prepended to the first step's, or each member's of a first group)."""
    from jobs import Group

    sig = _unchunk(celery_canvas.maybe_signature(sig))
    if isinstance(sig, _chord):
        header = sig.tasks.tasks if isinstance(sig.tasks, group) else sig.tasks
        body = kwargs.pop("body", None) if kwargs else None
        return [*plan(group(list(header)), args, kwargs, first), *plan(body or sig.body, first=False)]
    if isinstance(sig, _chain):
        steps: list[Any] = []
        for index, part in enumerate(sig.tasks):
            steps += plan(part, args if index == 0 else (), kwargs if index == 0 else None, first and index == 0)
        return steps
    if isinstance(sig, group):
        members = []
        for member in [m for t in sig.tasks for m in _members(t)]:
            if isinstance(member, (_chain, group, _chord)):
                kind = type(member).__name__
                raise Unsupported(f"a group's member is one task here, not {kind} ({member!r}): a chain inside a group is not supported")
            members.append(_one(member, args, kwargs, first))
        return [Group(members)]
    return [_one(sig, args, kwargs, first)]


def _members(sig: Any) -> list[Any]:
    """A group's member as members: a chunks' starmaps, else itself."""
    sig = celery_canvas.maybe_signature(sig)
    unchunked = _unchunk(sig)
    return list(unchunked.tasks) if unchunked is not sig else [sig]


def _one(sig: Signature, args: tuple, kwargs: dict | None, first: bool) -> Any:
    from jobs import Step

    options = dict(sig.options)
    if (mapped := _mapped(sig)) is not None:  # immutable, as Celery's: it takes no previous result
        run_after = _when(options.get("countdown"), options.get("eta"))
        if run_after is not None and not first:
            raise Unsupported(f"task {mapped[0].task!r}: countdown/eta on a map/starmap after the first step of a canvas")
        _check_queue(mapped[0].task, options.get("queue"))
        return _map_step(sig, mapped, run_after, options.get("priority"))
    _check_queue(sig.task, options.get("queue"))
    extra: dict[str, Any] = {}
    if not first and not sig.immutable:
        extra["prev"] = True
    if (expires := _expires(options.get("expires"))) is not None:
        extra["expires"] = expires
    if errbacks := _serializable_sigs(options.get("link_error"), "link_error"):
        extra["link_error"] = errbacks
    if options.get("link"):
        raise Unsupported(f"task {sig.task!r}: link= on a signature inside a canvas: chain the callback instead (a | b)")
    full_args = tuple(args) + tuple(sig.args) if (args and not sig.immutable) else tuple(sig.args)
    full_kwargs = {**(kwargs or {}), **sig.kwargs} if not sig.immutable else dict(sig.kwargs)
    run_after = _when(options.get("countdown"), options.get("eta"))
    if run_after is not None and not first:
        raise Unsupported(
            f"task {sig.task!r}: countdown/eta on a step after the first of a canvas (delay the whole canvas with apply_async(countdown=))"
        )
    priority = options.get("priority")
    return Step(sig.task, tasks.encode(sig.task, full_args, full_kwargs, extra), run_after=run_after,
                priority=None if priority is None else min(9, max(0, int(priority))))


def start(sig: Any, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
    """Start a durable canvas: one chain row, its first step's jobs in the caller's transaction."""
    from dataclasses import replace

    from jobs import Group, start_chain

    from conveyor_celery.result import result_of

    kwargs = dict(kwargs or {})
    steps = plan(sig, tuple(args or ()), kwargs)
    if options.get("link") or options.get("link_error"):
        extra_links = _serializable_sigs(options.get("link_error"), "link_error")
        if options.get("link"):
            raise Unsupported("link= on a canvas: chain the callback instead (canvas | callback)")
        steps = [_with_errbacks(step, extra_links) for step in steps]
    run_after = _when(options.get("countdown"), options.get("eta"))
    if run_after is not None:
        if isinstance(steps[0], Group):
            raise Unsupported("countdown/eta on a canvas that starts with a group: start it with a task, or delay each member")
        steps[0] = replace(steps[0], run_after=run_after)
    return result_of(start_chain(steps), steps)


def _with_errbacks(step: Any, errbacks: list[dict[str, Any]]) -> Any:
    from dataclasses import replace

    from jobs import Group

    if isinstance(step, Group):
        return Group([_with_errbacks(m, errbacks) for m in step.members], step.on_failure)
    data = dict(step.input)
    data["celery"] = {**data.get("celery", {}), "link_error": [*data.get("celery", {}).get("link_error", []), *errbacks]}
    return replace(step, input=data)


# -- Celery's canvas classes, wrapped -----------------------------------------------------------

_originals: dict[type, Any] = {}


def install() -> None:
    """Wrap `apply_async` of chain, group and chord (once): a canvas of durable tasks is started
    here, any other runs as Celery runs it."""
    if Celery not in _originals:  # app.send_task(name) of a durable task: its job, as task.apply_async
        _originals[Celery] = send_original = Celery.send_task

        def send_task(self: Any, name: str, args: Any = None, kwargs: Any = None, *rest: Any,
                      __original: Any = send_original, **options: Any) -> Any:
            if rest or name not in tasks.declared:
                return __original(self, name, args, kwargs, *rest, **options)
            asked = {k: v for k, v in options.items() if k in SEND_TASK_OPTIONS and v is not None and v is not _OMITTED}
            return self.tasks[name].apply_async(args, kwargs, **asked)

        send_task.__doc__ = send_original.__doc__
        Celery.send_task = send_task
    if _basemap not in _originals:  # task.map(it) / task.starmap(it) (a chunks is a group of starmaps)
        _originals[_basemap] = map_original = _basemap.apply_async

        def map_apply_async(self: Any, args: Any = None, kwargs: Any = None, __original: Any = map_original, **options: Any) -> Any:
            if not self.app.conf.task_always_eager and durable(self):
                return start_map(self, **options)
            return __original(self, args, kwargs, **options)

        map_apply_async.__doc__ = map_original.__doc__
        _basemap.apply_async = map_apply_async
    for cls in (_chain, group, _chord):
        if cls in _originals:
            continue
        _originals[cls] = original = cls.apply_async

        def apply_async(self: Any, args: Any = None, kwargs: Any = None, *rest: Any, __original: Any = original, **options: Any) -> Any:
            body = kwargs.get("body") if isinstance(self, _chord) and isinstance(kwargs, dict) else None
            if not rest and not self.app.conf.task_always_eager \
                    and durable(self if body is None else group([*leaves(self), *leaves(body)])):
                if isinstance(self, _chord) and "task_id" in options:
                    options.pop("task_id")
                merged = {**self.options, **options}
                return start(self, args, kwargs, **{k: v for k, v in merged.items() if k in ("countdown", "eta", "link", "link_error")})
            return __original(self, args, kwargs, *rest, **options)

        apply_async.__doc__ = original.__doc__
        cls.apply_async = apply_async
