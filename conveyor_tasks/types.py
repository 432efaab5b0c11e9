"""Each `@task` function is a Conveyor job type named by its module path
(`examples.djtasks.tasks.send_email`), declared the first time a process meets it: at enqueue
(`declare`), and in a worker through the registry's resolver (`resolve`: the name is imported).

What the framework has no words for (retries and backoff, time limit, rate and concurrency limits,
a cron schedule) is stated per task in the backend's `OPTIONS["TASKS"]`, keyed by the task's path:
settings, so a task module imports nothing but the tasks framework, and the enqueuing process and
every worker read the same declaration.
"""
from __future__ import annotations

import json
import threading
from typing import Any

from django.utils.module_loading import import_string

from conveyor_tasks import compat
from jobs.engine import registry
from jobs.engine.registry import Backoff

_lock = threading.Lock()

#: Per-task option names (OPTIONS["TASKS"][path]) and backend-wide defaults (OPTIONS).
TASK_OPTIONS = {"retries", "backoff", "backoff_cap", "timeout", "rate_limit", "concurrency", "schedule", "atomic"}


def priority(task_priority: int) -> int:
    """django.tasks' priority (-100..100, higher first, 0 by default) on Conveyor's (0..9, lower
    first): ten bands of about 20, 100..80 -> 0, 0 (the default) -> 4, -81..-100 -> 9."""
    return (100 - int(task_priority)) * 10 // 201


def backend_of(task: compat.Task) -> Any | None:
    """The task's backend when it is a Conveyor one (None otherwise: not ours to run)."""
    from conveyor_tasks.backend import ConveyorBackend

    try:
        backend = compat.task_backends[task.backend]
    except Exception:  # an alias no longer configured
        return None
    return backend if isinstance(backend, ConveyorBackend) else None


def options(task: compat.Task, backend: Any) -> dict[str, Any]:
    """The task's declaration: the backend's defaults overlaid with OPTIONS["TASKS"][path]."""
    base = backend.options
    own = dict(base.get("TASKS", {}).get(task.module_path, {}))
    unknown = set(own) - TASK_OPTIONS
    if unknown:
        raise registry.ImproperlyDeclared(f"TASKS OPTIONS for {task.module_path!r}: unknown option {sorted(unknown)[0]!r}")
    return {
        "retries": own.get("retries", base.get("RETRIES", 3)),
        "backoff": own.get("backoff", base.get("BACKOFF", 1.0)),
        "backoff_cap": own.get("backoff_cap", base.get("BACKOFF_CAP", 300.0)),
        "timeout": own.get("timeout", base.get("TIMEOUT", 300)),
        "rate_limit": own.get("rate_limit"),
        "concurrency": own.get("concurrency"),
        "schedule": own.get("schedule"),
        "atomic": own.get("atomic", False),
    }


def declare(task: compat.Task, backend: Any) -> registry.JobType:
    """The task's job type, declared now if this process has not yet (safe from any thread)."""
    name = task.module_path
    if (known := registry.find(name)) is not None:
        return known
    with _lock:
        if (known := registry.find(name)) is not None:
            return known
        opts = options(task, backend)
        schedule = None
        if opts["schedule"]:
            from jobs.engine.schedules import Schedule

            when = dict(opts["schedule"])
            inputs = {"args": when.pop("args", []), "kwargs": when.pop("kwargs", {}), "backend": backend.alias}
            schedule = Schedule(**when, input=inputs)
        from conveyor_tasks.worker import handler

        registry.job_type(
            name,
            queue=task.queue_name,
            retries=opts["retries"],
            backoff=Backoff(float(opts["backoff"]), float(opts["backoff_cap"])),
            timeout=opts["timeout"],
            priority=priority(task.priority),
            schedule=schedule,
            rate_limit=opts["rate_limit"],
            concurrency=opts["concurrency"],
            atomic=opts["atomic"],
        )(handler)
        return registry.find(name)  # type: ignore[return-value]


def importable(path: str) -> bool:
    """Whether `path` is a dotted path of identifiers (`module.function`), the only names worth
    importing: the name comes from a request too (`POST /api/types/{name}/pause`), and a leading
    dot (`.x`) or `..` made `import_module` raise ValueError or TypeError, not ImportError (a 500)."""
    parts = path.split(".")
    return len(parts) >= 2 and all(part.isidentifier() for part in parts)


def ours(path: str) -> bool:
    """Whether `path` lies in a package a task may live in: an installed app's, or the project's
    own source tree (outside the virtualenv and the Python installation). Whatever else is
    importable (the standard library, any installed distribution) is never imported because a
    name said so: `POST /api/types/this.x/pause` imported `this` in the server, which printed the
    Zen of Python into its log."""
    import importlib.util
    import site
    import sys
    from pathlib import Path

    from django.apps import apps
    from django.conf import settings

    top = path.split(".", 1)[0]
    if any(app.name.split(".", 1)[0] == top for app in apps.get_app_configs()):
        return True
    try:
        spec = importlib.util.find_spec(top)  # a top-level name: finds it, imports nothing
    except (ImportError, ValueError):
        return False
    if spec is None:
        return False
    # A file's path ("frozen" and "built-in" are origins too: the standard library's, not ours)
    places = [Path(place).resolve() for place in [spec.origin, *(spec.submodule_search_locations or [])]
              if place and Path(place).is_absolute()]
    installed = [Path(place).resolve() for place in {sys.prefix, sys.base_prefix, sys.exec_prefix, *site.getsitepackages()}]
    base = Path(settings.BASE_DIR).resolve()
    return any(place.is_relative_to(base) and not any(place.is_relative_to(other) for other in installed) for place in places)


def load(path: str) -> compat.Task | None:
    """The task at `path` (a module-level `@task` function), or None."""
    if not importable(path) or not ours(path):
        return None
    try:
        found = import_string(path)
    except ImportError:
        return None
    return found if isinstance(found, compat.Task) else None


def resolve(name: str) -> None:
    """The registry's resolver: declare `name` when it is a task of a Conveyor backend."""
    task = load(name)
    if task is not None and (backend := backend_of(task)) is not None:
        declare(task, backend)


def declare_configured() -> None:
    """Declare at start-up every task named in a Conveyor backend's OPTIONS["TASKS"]: their
    schedules must be known to `manage.py sync_schedules` before any job of them exists."""
    from django.conf import settings

    from conveyor_tasks.backend import ConveyorBackend

    for alias, params in getattr(settings, "TASKS", {}).items():
        backend_path = params.get("BACKEND", "")
        if not backend_path.endswith("ConveyorBackend"):
            continue
        try:
            backend = compat.task_backends[alias]
        except Exception:
            continue
        if not isinstance(backend, ConveyorBackend):
            continue
        for path in backend.options.get("TASKS", {}):
            task = load(path)
            if task is None:
                raise registry.ImproperlyDeclared(f"TASKS[{alias!r}] OPTIONS names {path!r}, which is not a @task function")
            declare(task, backend)


def plain(value: Any, field: str) -> Any:
    """`value` as JSON gives it back (tuples become lists), or TypeError / ValueError naming
    `field` when it would not come back the same (a set, a date, a dict with int keys, NaN)."""
    try:
        stored = json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{field} must be JSON: {exc}") from None
    if stored != _lists(value):
        raise ValueError(f"{field} does not survive a JSON round trip unchanged (a dict with non-string keys?)")
    return stored


def _lists(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_lists(v) for v in value]
    if isinstance(value, dict):
        return {k: _lists(v) for k, v in value.items()}
    return value


def configured_queues() -> set[str]:
    """Every queue a Conveyor tasks backend lists in QUEUES (workers consume them by default)."""
    from django.conf import settings

    return {
        queue
        for params in getattr(settings, "TASKS", {}).values()
        if str(params.get("BACKEND", "")).endswith("ConveyorBackend")
        for queue in params.get("QUEUES", [])
    }
