"""Jobs and chains: rows in PostgreSQL, claimed with SKIP LOCKED, carried by Celery messages.

Application code uses `job_type`, `enqueue`, `enqueue_many` and `start_chain` (with `Step` and
`Group`) from here, and `wait` / `wait_chain` to block until a job or chain has ended
(`WaitTimeout` past the timeout). A bad input raises `InvalidJob` (`InputTooLarge` past
CONVEYOR_MAX_INPUT_BYTES); a handler raises `Permanent` for a failure no retry can change; the
event bus and the schedules make their jobs with `new_job` and `submit`, like everything else.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = [
    "job_type", "enqueue", "enqueue_many", "start_chain", "new_job", "submit", "Step", "Group", "Context", "InvalidJob",
    "InputTooLarge", "Permanent",
    "wait", "wait_chain", "WaitTimeout",
]

if TYPE_CHECKING:  # pragma: no cover
    from jobs.engine.context import Context
    from jobs.engine.creation import Group, Step, enqueue, enqueue_many, new_job, start_chain, submit
    from jobs.engine.registry import InputTooLarge, InvalidJob, Permanent, job_type
    from jobs.engine.waiting import WaitTimeout, wait, wait_chain


def __getattr__(name: str) -> Any:
    # Lazy: importing `jobs` must not import models before Django's app registry is ready.
    if name in ("enqueue", "enqueue_many", "start_chain", "new_job", "submit", "Step", "Group"):
        from jobs.engine import creation

        return getattr(creation, name)
    if name == "Context":
        from jobs.engine.context import Context

        return Context
    if name in ("wait", "wait_chain", "WaitTimeout"):
        from jobs.engine import waiting

        return getattr(waiting, name)
    if name in ("job_type", "InvalidJob", "InputTooLarge", "Permanent"):
        from jobs.engine import registry

        return getattr(registry, name)
    raise AttributeError(name)
