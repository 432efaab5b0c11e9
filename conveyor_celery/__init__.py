"""Celery tasks made durable by Conveyor, with one line: `from conveyor_celery import shared_task`.

The task's function and its callers stay as they are: `.delay()`, `.apply_async()`, signatures,
`chain` / `group` / `chord`, `AsyncResult(id).get()`, beat entries. A converted task is a Conveyor
job type named by its Celery task name; each call is a row in PostgreSQL. See docs/from-celery.md.
"""
from __future__ import annotations

from conveyor_celery.canvas import install as _install
from conveyor_celery.errors import Unsupported
from conveyor_celery.result import AsyncResult, GroupResult
from conveyor_celery.task import DurableTask, shared_task
from celery import chunks, xmap, xstarmap  # durable for durable tasks (canvas.install)

starmap = xstarmap

__all__ = ["shared_task", "DurableTask", "AsyncResult", "GroupResult", "Unsupported", "chunks", "starmap", "xmap", "xstarmap"]

_install()
