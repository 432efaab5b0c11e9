"""Celery primitives a durable task refuses, each with what to write instead.

`task.chunks(...)`, `task.map(...)`, `task.starmap(...)` (and `celery.chunks`, `xmap`,
`xstarmap`) run many calls inside one task message; Conveyor runs one job per call. They are
refused where they are made, on a durable task, naming the alternative.
"""
from __future__ import annotations

from typing import Any

from conveyor_celery.errors import Unsupported

ADVICE = "use a group of signatures instead: group(task.s(*args) for args in items)"


def _refuse(what: str) -> Any:
    raise Unsupported(f"{what} is not supported on durable tasks: {ADVICE}")


def chunks(*args: Any, **kwargs: Any) -> Any:
    return _refuse("chunks")


def starmap(*args: Any, **kwargs: Any) -> Any:
    return _refuse("starmap")


def xmap(*args: Any, **kwargs: Any) -> Any:
    return _refuse("map (xmap)")


def xstarmap(*args: Any, **kwargs: Any) -> Any:
    return _refuse("starmap (xstarmap)")
