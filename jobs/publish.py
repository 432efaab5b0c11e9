"""Publishing job messages: a message is the job id and nothing else, sent after commit."""
from __future__ import annotations

import logging
from typing import Iterable, NamedTuple

from django.db import transaction

from jobs import registry

log = logging.getLogger("conveyor.publish")
HARD_LIMIT_GRACE = 10  # seconds between the soft time limit (an exception) and the kill


class Message(NamedTuple):
    job_id: int
    queue: str
    priority: int
    type: str


def publish(messages: Iterable[Message]) -> int:
    """Send one message per job over one producer connection; return how many were sent.

    A failure is logged, not raised: the row is already committed, and the relay publishes it
    again once it is stale (Redis down, or a crash between commit and publish loses nothing).
    """
    from jobs.tasks import run_job

    sent = 0
    try:
        with run_job.app.producer_or_acquire() as producer:
            # Fail at once when the broker is away (kombu would retry for seconds per message,
            # stalling the request or the worker that publishes): the relay sends these later.
            producer.connection.ensure_connection(max_retries=0)
            for message in messages:
                timeout = _timeout(message.type)
                run_job.apply_async(
                    (message.job_id,),
                    queue=message.queue,
                    routing_key=message.queue,
                    priority=message.priority,
                    soft_time_limit=timeout,
                    time_limit=timeout + HARD_LIMIT_GRACE,
                    producer=producer,
                    retry=False,
                )
                sent += 1
    except Exception as exc:  # broker away: the relay will publish these rows again
        log.warning("publish failed after %d message(s), the relay will retry: %s", sent, exc)
    return sent


def publish_on_commit(messages: list[Message], using: str = "default") -> None:
    """Publish after the current transaction commits (at once in autocommit)."""
    if messages:
        transaction.on_commit(lambda: publish(messages), using=using)


def _timeout(type_name: str) -> int:
    try:
        return registry.get(type_name).timeout
    except registry.InvalidJob:  # a row of a type removed from the code: default limits
        return 300


def backlogged(queues: Iterable[str]) -> set[str]:
    """The queues whose Redis lists still hold messages (over every priority list).

    The relay does not re-send a "stale" row of such a queue: its message is most likely still
    waiting behind the others, and re-sending a whole backlog every RELAY_STALE_SECONDS would
    double the work. A message really lost there is re-sent once its queue has drained.
    """
    from jobs.tasks import run_job

    queues = list(queues)
    options = run_job.app.conf.broker_transport_options
    sep, steps = options.get("sep", ":"), options.get("priority_steps", [0])
    with run_job.app.pool.acquire(block=True) as conn:
        client = conn.default_channel.client
        pipe = client.pipeline(transaction=False)
        for queue in queues:
            for step in steps:
                pipe.llen(f"{queue}{sep}{step}" if step else queue)
        lengths = pipe.execute()
    per_queue = len(steps)
    return {queue for i, queue in enumerate(queues) if any(lengths[i * per_queue : (i + 1) * per_queue])}
