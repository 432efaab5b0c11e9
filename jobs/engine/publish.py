"""Publishing job messages: a message is the job id and nothing else, sent after commit.

Messages are sent by task name (`conveyor.run`, defined in jobs.tasks): publishing needs the
Celery app, not the task's module, so the runner's imports never lead back here.

For monitors (Flower), two message headers describe the job without changing what a worker
reads: `shadow`, the job type's name (Celery's name of the task in events and logs), and
`kwargsrepr`, the chain and step (display only: the body's arguments stay `(job_id,)`).

Many jobs of one type published at once (enqueue_many, the relay) share messages: a message's
arguments are then several job ids, `(id1, id2, ...)`, which one worker claims and runs one after
the other (jobs.tasks). A batch is split over at least SPREAD messages, so that as many workers
can take part, with at most PER_MESSAGE ids each. A batch message carries no Celery time limit:
the runner enforces each job's own (jobs.engine.runner.TimeLimit); so does a chain step's message,
as its worker may run the chain's next steps in the same task (jobs.engine.handoff).

Jobs enqueued one by one in one process may share messages too (`committed`, with
CONVEYOR_PUBLISH_COALESCE_MS set: jobs.engine.coalesce), at most COALESCE_PER_MESSAGE ids each.
"""
from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Iterable, NamedTuple

from django.conf import settings
from django.db import transaction

from jobs.engine import coalesce, decisions, envelope, registry

if TYPE_CHECKING:  # pragma: no cover
    from jobs.models import Job

log = logging.getLogger("conveyor.publish")
TASK = envelope.TASK
HARD_LIMIT_GRACE = 10  # seconds between the soft time limit (an exception) and the kill
#: A batch of jobs of one type and queue goes out in at least this many messages (when it has
#: that many jobs), with at most PER_MESSAGE job ids in one message.
SPREAD = 16
PER_MESSAGE = 100


class Message(NamedTuple):
    job_id: int
    queue: str
    priority: int
    type: str
    #: For display only (the row is the truth): the job's chain and its step in it.
    chain_id: int | None = None
    chain_index: int | None = None

    @classmethod
    def of(cls, job: Job) -> Message:
        return cls(job.pk, job.queue, job.priority, job.type, job.chain_id, job.chain_index)

    def display(self) -> str:
        """What monitors show as the task's keyword arguments (the `kwargsrepr` header)."""
        if self.chain_id is None:
            return "{}"
        return f"{{'chain': {self.chain_id}, 'step': {self.chain_index}}}"


def batches(messages: Iterable[Message]) -> list[list[Message]]:
    """The jobs grouped into Celery messages: one job per message up to SPREAD jobs of one
    (queue, priority, type); beyond, the group split evenly over messages of consecutive jobs."""
    groups: dict[tuple[str, int, str], list[Message]] = {}
    for message in messages:
        groups.setdefault((message.queue, message.priority, message.type), []).append(message)
    out = []
    for group in groups.values():
        size = min(PER_MESSAGE, -(-len(group) // SPREAD))
        out.extend(group[i : i + size] for i in range(0, len(group), size))
    return out


def publish(messages: Iterable[Message], headers: dict[str, object] | None = None) -> int:
    """Send the jobs' messages in one pipelined round trip; return how many jobs were sent.
    `headers`: more message headers (jobs.engine.early's, for a message sent before its commit).

    Each message is the entry `app.send_task` would write (jobs.engine.envelope), LPUSHed to its
    queue's priority list over a connection of the Celery app's pool, with no per-message kombu
    machinery (issue 28: that was half the publishing process's CPU per job).

    A failure is logged, not raised: the row is already committed, and the relay publishes it
    again once it is stale (Redis down, or a crash between commit and publish loses nothing).
    """
    return send(batches(messages), *_parent(), headers=headers)


def _parent() -> tuple[str | None, str | None]:
    """(parent_id, root_id) of the messages this thread publishes: a worker's task publishing (a
    chain's next step), as Celery sets them; (None, None) elsewhere."""
    from project.celery import app

    parent = app.current_worker_task
    if parent is None:
        return None, None
    return parent.request.id, parent.request.root_id or parent.request.id


def send(
    grouped: list[list[Message]], parent_id: str | None = None, root_id: str | None = None,
    headers: dict[str, object] | None = None,
) -> int:
    """Send the messages `grouped` says (each list one Celery message of its ids) in one pipelined
    round trip; return how many jobs were sent (0 on failure, logged: the relay sends them).
    `headers`: more message headers (see `publish`)."""
    from project.celery import app

    if not grouped:
        return 0
    try:
        origin, reply_to = _origin(), app.thread_oid
        options = app.conf.broker_transport_options
        steps, sep = options.get("priority_steps", [0]), options.get("sep", ":")
        with app.pool.acquire(block=True) as conn:
            # Fail at once when the broker is away (kombu would retry for seconds per message,
            # stalling the request or the worker that publishes): the relay sends these later.
            conn.ensure_connection(max_retries=0)
            pipe = conn.default_channel.client.pipeline(transaction=False)
            for batch in grouped:
                first = batch[0]
                # One job: Celery's time limits are its own. Several, or a chain's step (whose
                # worker may run the next steps in the same task: jobs.engine.handoff): the
                # runner keeps each one's.
                timeout = _timeout(first.type) if len(batch) == 1 and first.chain_id is None else None
                pipe.lpush(
                    envelope.queue_key(first.queue, first.priority, steps, sep),
                    envelope.entry(
                        [message.job_id for message in batch],
                        queue=first.queue,
                        priority=first.priority,
                        shadow=first.type,
                        kwargsrepr=first.display() if len(batch) == 1 else f"{{'jobs': {len(batch)}}}",
                        timelimit=(timeout + HARD_LIMIT_GRACE, timeout) if timeout else (None, None),
                        origin=origin,
                        reply_to=reply_to,
                        parent_id=parent_id,
                        root_id=root_id,
                        headers=headers,
                    ),
                )
            pipe.execute()
    except Exception as exc:  # broker away: the relay will publish these rows again
        log.warning("publish of %d job(s) failed, the relay will retry: %s", sum(map(len, grouped)), exc)
        return 0
    return sum(map(len, grouped))


_origins: dict[int, str] = {}


def _origin() -> str:
    """Celery's `origin` header: this process's anonymous node name (`gen<pid>@<host>`)."""
    pid = os.getpid()
    if pid not in _origins:
        from celery.utils.nodenames import anon_nodename

        _origins.clear()
        _origins[pid] = anon_nodename()
    return _origins[pid]


def publish_on_commit(messages: list[Message], using: str = "default") -> None:
    """Publish after the current transaction commits (at once in autocommit); a job committed
    alone may share a message with the next commits' (`committed`)."""
    if messages:
        transaction.on_commit(lambda: committed(messages), using=using)


#: The most job ids one coalesced message carries (jobs.engine.coalesce): they run one after the
#: other in one worker process, so this bounds the jobs that wait behind a long one.
COALESCE_PER_MESSAGE = 8


def committed(messages: list[Message]) -> int:
    """Publish a commit's messages: those coalescable (`decisions.coalescable`: a job outside a
    chain, committed among few) go through this process's Coalescer, which sends each at once
    when no message of its kind went out in the last CONVEYOR_PUBLISH_COALESCE_MS, and otherwise
    with the others of its kind at the end of that window; the rest at once. Returns how many
    jobs were sent now."""
    window = float(settings.CONVEYOR.get("PUBLISH_COALESCE_MS", 0)) / 1000
    held: list[Message] = []
    at_once: list[Message] = []
    for message in messages:
        (held if decisions.coalescable(len(messages), message.chain_id, window, SPREAD) else at_once).append(message)
    if not held:
        return publish(messages)
    parent = _parent()
    at_once += _coalescer.add(held, lambda m: (m.queue, m.priority, m.type, parent), window, COALESCE_PER_MESSAGE)
    return send(batches(at_once), *parent)


def _send_coalesced(messages: list[Message], kind: tuple) -> None:
    """The Coalescer's send: the waiting ids of one kind, in one message."""
    send([messages], *kind[3])


_coalescer = coalesce.Coalescer(_send_coalesced)
coalesce.at_exit(_coalescer)


def _timeout(type_name: str) -> int:
    try:
        return registry.get(type_name).timeout
    except registry.InvalidJob:  # a row of a type removed from the code: default limits
        return 300


def queue_depths(queues: Iterable[str], timeout: float | None = None) -> dict[str, int]:
    """Messages waiting in each queue's Redis lists, over every priority list, named as kombu's
    Redis transport names them (`queue` for priority 0, `queue<sep><step>` otherwise); one
    pipelined round trip through the Celery app's connection pool. Raises when Redis is away."""
    from project.celery import app

    queues = list(queues)
    options = app.conf.broker_transport_options
    sep, steps = options.get("sep", ":"), options.get("priority_steps", [0])
    with app.pool.acquire(block=True, timeout=timeout) as conn:
        pipe = conn.default_channel.client.pipeline(transaction=False)
        for queue in queues:
            for step in steps:
                pipe.llen(f"{queue}{sep}{step}" if step else queue)
        lengths = pipe.execute()
    per = len(steps)
    return {queue: sum(lengths[i * per : (i + 1) * per]) for i, queue in enumerate(queues)}
