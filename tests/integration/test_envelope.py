"""A published message is the Redis entry `app.send_task` writes (jobs.engine.envelope, issue 28):
publish() and Celery's own send_task, with the arguments publish() used to pass it, push to the
same list documents equal field by field but for the ids Celery draws afresh for each message
(task id, root id, correlation id, delivery tag). On the session's Redis; no worker (a worker
consuming such a message: tests/acceptance/test_batch_messages_live.py)."""
from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from celery._state import _task_stack

from jobs.engine import publish as publish_module
from jobs.engine.publish import HARD_LIMIT_GRACE, TASK, Message, publish
from tests.support import redis_client

pytestmark = pytest.mark.usefixtures("empty_redis")

FRESH = {"delivery_tag"}


def send_task(messages: list[Message]) -> None:
    """What publish() did before issue 28: one app.send_task per message (one job each here)."""
    from project.celery import app

    with app.producer_or_acquire() as producer:
        for message in messages:
            # examples.echo's; a chain step's message carries none (the runner keeps it: jobs.engine.handoff)
            timeout = 30 if message.chain_id is None else None
            app.send_task(
                TASK, (message.job_id,), task_id=str(message.job_id), shadow=message.type, kwargsrepr=message.display(),
                queue=message.queue, routing_key=message.queue, priority=message.priority,
                soft_time_limit=timeout, time_limit=timeout and timeout + HARD_LIMIT_GRACE, producer=producer, retry=False,
            )


def pop(key: str) -> dict[str, Any]:
    raw = redis_client().rpop(key)
    assert raw is not None, f"nothing in {key}"
    return json.loads(raw)


def without_fresh_ids(entry: dict[str, Any]) -> dict[str, Any]:
    entry = json.loads(json.dumps(entry))
    for part in (entry["headers"], entry["properties"]):
        for name in FRESH & set(part):
            part[name] = "<fresh>" if part[name] is not None else None
    return entry


@pytest.mark.parametrize(
    ("message", "key"),
    [
        (Message(41, "default", 0, "examples.echo"), "default"),
        (Message(42, "default", 3, "examples.echo", chain_id=7, chain_index=2), "default:3"),
        (Message(43, "default", 9, "examples.echo"), "default:9"),
    ],
)
def test_a_published_message_is_the_entry_send_task_writes(message, key):
    # when one job is published by each way
    assert publish([message]) == 1
    send_task([message])

    # then the two entries in the priority's list are the same but for the fresh ids
    ours, celerys = pop(key), pop(key)
    assert redis_client().llen(key) == 0
    assert without_fresh_ids(ours) == without_fresh_ids(celerys)
    # and the monitors' headers and the time limits are there
    assert ours["headers"]["shadow"] == "examples.echo" and ours["headers"]["kwargsrepr"] == message.display()
    limits = [30 + HARD_LIMIT_GRACE, 30] if message.chain_id is None else [None, None]
    assert ours["headers"]["timelimit"] == limits
    assert ours["headers"]["root_id"] == ours["headers"]["id"] == ours["properties"]["correlation_id"]
    # and the task id is the job's id (a monitor finds the job by it: Flower's /api/task/info/<job id>)
    assert ours["headers"]["id"] == str(message.job_id)


def test_a_message_published_inside_a_worker_task_names_it_as_parent_as_celery_does():
    from project.celery import app

    # given a task running in this process (a chain's next step is published by a worker)
    task = app.tasks[TASK]
    task.push_request(id="parent-task", root_id="root-task", called_directly=False)
    _task_stack.push(task)
    try:
        # when a job is published by each way
        message = Message(44, "default", 0, "examples.echo")
        publish([message])
        send_task([message])
    finally:
        _task_stack.pop()
        task.pop_request()

    # then both name the running task as parent and its root as root
    ours, celerys = pop("default"), pop("default")
    assert (ours["headers"]["parent_id"], ours["headers"]["root_id"]) == ("parent-task", "root-task")
    assert without_fresh_ids(ours) == without_fresh_ids(celerys)


def test_a_batch_message_carries_the_job_ids_and_no_celery_time_limit(monkeypatch):
    monkeypatch.setattr(publish_module, "SPREAD", 1)  # both jobs in one message
    publish([Message(i, "default", 5, "examples.echo") for i in (50, 51)])
    entry = pop("default:5")
    assert entry["headers"]["timelimit"] == [None, None] and entry["headers"]["kwargsrepr"] == "{'jobs': 2}"
    assert json.loads(base64.b64decode(entry["body"]))[0] == [50, 51]
    # and a fresh task id (no one job's)
    assert entry["headers"]["id"] not in ("50", "51") and len(entry["headers"]["id"]) == 36
