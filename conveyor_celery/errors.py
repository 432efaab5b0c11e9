"""What the adapter refuses, and how a stored failure becomes a Celery-style exception again."""
from __future__ import annotations

import builtins
import sys


class Unsupported(Exception):
    """A Celery feature the adapter cannot run durably: raised where it is declared or called
    (at import for a task's options), naming the feature and what to do instead."""


#: How the handler marks a failure Celery would not retry (a plain exception): the runner sees
#: `jobs.Permanent`, the row's error ends with this text, which `exception_from` reads back.
PERMANENT_PREFIX = "jobs.engine.registry.Permanent: "
#: The same mark in rows failed before the engine moved to jobs/engine/ (jobs.registry then).
PERMANENT_PREFIXES = (PERMANENT_PREFIX, "jobs.registry.Permanent: ")


def exception_from(error: str) -> BaseException:
    """The exception a failed job's stored traceback ends with, rebuilt as Celery's result backend
    does (`celery.backends.base.exception_to_python`): the builtin or already-imported class of that
    name with its message; an exception class unknown here becomes a new class of the same name."""
    lines = [line for line in error.strip().splitlines() if line.strip()]
    last = lines[-1] if lines else "Exception: unknown error"
    for prefix in PERMANENT_PREFIXES:
        if last.startswith(prefix):
            last = last[len(prefix):]
            break
    name, _, message = last.partition(": ")
    if " " in name or not name:
        name, message = "Exception", last
    module, _, qualname = name.rpartition(".")
    cls: object = None
    if not module:
        cls = getattr(builtins, qualname, None)
    elif module in sys.modules:  # only classes of modules already imported: no import from a row's text
        cls = getattr(sys.modules[module], qualname, None)
    if not (isinstance(cls, type) and issubclass(cls, BaseException)):
        cls = type(qualname or "Exception", (Exception,), {"__module__": module or "builtins"})
    try:
        return cls(message)  # type: ignore[operator]
    except Exception:  # an exception class whose constructor wants other arguments
        return type(qualname, (Exception,), {"__module__": module or "builtins"})(message)
