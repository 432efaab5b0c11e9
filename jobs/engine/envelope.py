"""The Redis list entry of a `conveyor.run` message, built without kombu's per-publish machinery.

`app.send_task` costs the publishing process about 0.5 ms of CPU per message (measured, issue 28):
Celery's option routing and configuration lookups, kombu's producer, entity copies and declare
cache, and, in kombu's Redis transport, a new redis-py client object for every message (its
response-callback table rebuilt each time). For one job per transaction, the path of `.delay()`
and django.tasks' `enqueue()`, that was more than the job's row. What ends up in Redis is one
JSON document LPUSHed to the queue's priority list; this module builds that document, the same
one `send_task` writes (tests/integration/test_envelope.py compares the two field by field), so
that jobs.engine.publish can push every message of a transaction in one pipelined round trip.

What the entry holds (Celery's task protocol 2 in kombu's virtual-transport envelope):
- `body`: base64 of the JSON `[args, {}, embed]`, args being the job ids;
- `headers`: the task name, its id (the job's id for a message of one job; also `root_id`, and `correlation_id` in the properties),
  `shadow` and `kwargsrepr` for monitors (Flower), `timelimit` [hard, soft] (null for a batch:
  the runner enforces each job's own), `parent_id`/`root_id` from the worker's current task when
  a worker publishes (a chain's next step), as Celery sets them;
- `properties`: the priority (which also names the list: `queue` for 0, `queue<sep><n>` else),
  `delivery_info` (the anonymous exchange, routing key = queue), a delivery tag.

Pure: no Redis, no Celery; the caller passes the process's `origin` and `reply_to`.
"""
from __future__ import annotations

import base64
import json
import uuid
from typing import Any, Sequence

TASK = "conveyor.run"
_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def queue_key(queue: str, priority: int, steps: Sequence[int], sep: str) -> str:
    """The Redis list of `queue` a message of `priority` goes to, as kombu's Redis transport
    names it: the highest priority step at or below the priority; step 0 is the bare name."""
    step = steps[0]
    for candidate in steps:
        if candidate <= priority:
            step = candidate
    return f"{queue}{sep}{step}" if step else queue


def entry(
    job_ids: Sequence[int],
    *,
    queue: str,
    priority: int,
    shadow: str,
    kwargsrepr: str,
    timelimit: tuple[int | None, int | None],
    origin: str,
    reply_to: str,
    parent_id: str | None = None,
    root_id: str | None = None,
    headers: dict[str, Any] | None = None,
) -> str:
    """The JSON document `app.send_task("conveyor.run", job_ids, ..., task_id=...)` would push to
    Redis; `headers`: more headers (a worker reads each as an attribute of its task's request).

    The task id of a message of one job is the job's id (`"12"`), the id the API, the admin and
    conveyor_celery's `AsyncResult` know it by: a monitor (Flower's `/api/task/info/12`, `celery
    inspect query_task 12`) finds the job by it, and shows its runs as one task, as Celery shows a
    task's retries. A message of several jobs has a fresh uuid."""
    task_id = str(job_ids[0]) if len(job_ids) == 1 else str(uuid.uuid4())
    args = list(job_ids)
    body = json.dumps([args, {}, _EMBED]).encode()
    message = {
        "body": base64.b64encode(body).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {
            "lang": "py",
            "task": TASK,
            "id": task_id,
            "shadow": shadow,
            "eta": None,
            "expires": None,
            "group": None,
            "group_index": None,
            "retries": 0,
            "timelimit": list(timelimit),
            "root_id": root_id or task_id,
            "parent_id": parent_id,
            "argsrepr": repr(tuple(args)),
            "kwargsrepr": kwargsrepr,
            "origin": origin,
            "ignore_result": None,
            "replaced_task_nesting": 0,
            "stamped_headers": None,
            "stamps": {},
            **(headers or {}),
        },
        "properties": {
            "correlation_id": task_id,
            "reply_to": reply_to,
            "kwargsrepr": kwargsrepr,
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": priority,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }
    return json.dumps(message)


def loads(raw: str | bytes) -> dict[str, Any]:
    """An entry read back from Redis (for tests and tools)."""
    return json.loads(raw)
