"""Demo tasks: plain django.tasks functions (nothing here knows it runs on Conveyor)."""
from __future__ import annotations

import asyncio
import os
import time
from typing import Any

try:  # Django 6.0+
    from django.tasks import task
except ImportError:  # Django < 6: the backport
    from django_tasks import task

from django.core.mail import send_mail


def _ran(context: Any, name: str) -> None:
    from examples.djtasks.models import Run

    Run.objects.create(task=name, result_id=context.task_result.id, attempt=context.attempt, pid=os.getpid())


@task(takes_context=True)
def send_welcome_email(context: Any, address: str, name: str) -> int:
    """Sends one e-mail; returns how many were sent."""
    _ran(context, "send_welcome_email")
    return send_mail(subject=f"Welcome {name}", message="Thanks for joining.", from_email=None, recipient_list=[address])


@task(takes_context=True)
def slow_count(context: Any, seconds: float = 0.0) -> dict[str, int]:
    """Records its run, sleeps, records again: a worker killed meanwhile leaves one half-run."""
    _ran(context, "slow_count:start")
    time.sleep(seconds)
    _ran(context, "slow_count")
    return {"attempt": context.attempt, "pid": os.getpid()}


@task(takes_context=True)
def flaky(context: Any, failures: int) -> dict[str, int]:
    """Fails its first `failures` attempts, then returns the attempt that succeeded."""
    _ran(context, "flaky")
    if context.attempt <= failures:
        raise RuntimeError(f"attempt {context.attempt} fails on purpose")
    return {"attempt": context.attempt}


@task(priority=50)
def add(a: int, b: int) -> int:
    return a + b


@task()
async def async_add(a: int, b: int) -> int:
    """An async def task: runs on an event loop of the worker's thread."""
    await asyncio.sleep(0.01)
    return a + b


@task(takes_context=True)
def stamp(context: Any) -> dict[str, int]:
    """Records when it ran (a deferred task's test reads the row)."""
    _ran(context, "stamp")
    return {"attempt": context.attempt}
