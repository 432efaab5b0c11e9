"""Jobs and chains: rows in PostgreSQL, claimed with SKIP LOCKED, carried by Celery messages.

Application code uses `job_type`, `enqueue`, `enqueue_many` and `start_chain` from here.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["job_type", "enqueue", "enqueue_many", "start_chain", "Step", "Context", "InvalidJob"]

if TYPE_CHECKING:  # pragma: no cover
    from jobs.api_python import Step, enqueue, enqueue_many, start_chain
    from jobs.context import Context
    from jobs.registry import InvalidJob, job_type


def __getattr__(name: str) -> Any:
    # Lazy: importing `jobs` must not import models before Django's app registry is ready.
    if name in ("enqueue", "enqueue_many", "start_chain", "Step"):
        from jobs import api_python

        return getattr(api_python, name)
    if name == "Context":
        from jobs.context import Context

        return Context
    if name in ("job_type", "InvalidJob"):
        from jobs import registry

        return getattr(registry, name)
    raise AttributeError(name)
