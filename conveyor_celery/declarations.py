"""What the other modules share about converted tasks: which there are, and their input's form."""
from __future__ import annotations

import json
from typing import Any

from kombu.exceptions import EncodeError

#: Serializers whose arguments are not JSON: refused where they are named (a job's input is JSON).
REFUSED_SERIALIZERS = ("pickle", "yaml", "msgpack")
#: What a task's `update_state` keeps in its running row's progress message (500 characters at
#: most), read back by `AsyncResult.state` / `.info`.
STATE_MARK = "celery-state:"
#: Converted tasks by name: their options as declared (their job types are registered from these).
declared: dict[str, dict[str, Any]] = {}


def encode(name: str, args: Any, kwargs: Any, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """A call's job input; arguments JSON cannot hold are refused as Celery's JSON serializer
    refuses them (kombu's EncodeError), naming the task."""
    data = {"args": list(args or ()), "kwargs": dict(kwargs or {}), "celery": extra or {}}
    try:
        return json.loads(json.dumps(data, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise EncodeError(f"task {name!r}: its arguments must be JSON (a durable task's arguments are stored as JSON): {exc}") from None


def task_queue(name: str) -> str:
    from jobs.engine import registry

    return registry.get(name).queue
