"""Creating jobs: enqueue, enqueue_many, start_chain, and the one path every new job takes.

`new_job` validates a Step against its job type and returns an unsaved row; `submit` inserts rows
(the job store's one INSERT) and publishes the due ones after the caller's transaction commits.
Everything that makes a job goes through both: the Python API here, the HTTP API, a chain's next
step, an event's deliveries and a schedule's tick. A rolled-back transaction leaves neither row
nor message.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Iterable

from django.db import transaction

from api.errors import Conflict
from jobs import registry, store
from jobs.models import Chain, Job
from jobs.publish import Message, publish_on_commit


#: Idempotency keys the platform makes itself (schedule ticks, event deliveries) start with this.
#: An HTTP client's may not (jobs.http), so no client can take a key a tick or a delivery needs;
#: code may, to derive keys from `ctx.idempotency_key` (a delivery's handler enqueueing a job).
PLATFORM_KEY_PREFIX = "conveyor:"


class IdempotencyConflict(Conflict):
    """An idempotency key already used for a job of another type or input."""


def platform_key(*parts: object) -> str:
    return PLATFORM_KEY_PREFIX + ":".join(str(part) for part in parts)


@dataclass(frozen=True)
class Step:
    """One job to enqueue: a type, its input and optional per-job settings."""

    type: str
    input: dict[str, Any] | None = None
    idempotency_key: str | None = None
    run_after: dt.datetime | None = None
    priority: int | None = None
    retries: int | None = None
    #: The key its type's `concurrency_per_key` counts running jobs by (`customer-7`).
    limit_key: str | None = None


def new_job(step: Step, **fields: Any) -> Job:
    """Validate a step against its job type and return an unsaved Job row.

    `fields` sets the row's place in a chain (chain_id, chain_index, parent_id).
    """
    jt = registry.get(step.type)
    data = jt.validate(step.input)
    priority = jt.priority if step.priority is None else step.priority
    if not registry.PRIORITY_MIN <= priority <= registry.PRIORITY_MAX:
        raise registry.InvalidJob("priority must be 0..9", {"priority": "must be between 0 and 9"})
    retries = jt.retries if step.retries is None else step.retries
    if retries < 0:
        raise registry.InvalidJob("retries must be >= 0", {"retries": "must be 0 or more"})
    run_after = step.run_after
    if run_after is not None:
        if not isinstance(run_after, dt.datetime) or run_after.tzinfo is None:
            raise registry.InvalidJob("run_after needs a timezone", {"run_after": "must include a timezone"})
        try:  # in UTC: PostgreSQL refuses offsets past 15:59, Python allows up to 23:59
            run_after = run_after.astimezone(dt.timezone.utc)
        except OverflowError:
            raise registry.InvalidJob("run_after is out of range", {"run_after": "out of range"}) from None
    limit_key = step.limit_key
    if limit_key is not None:
        if jt.concurrency_per_key is None:
            raise registry.InvalidJob(
                f"{jt.name} declares no concurrency_per_key: a limit_key would limit nothing",
                {"limit_key": f"{jt.name} declares no concurrency_per_key"},
            )
        if not isinstance(limit_key, str) or not 1 <= len(limit_key) <= 255 or "\x00" in limit_key:
            raise registry.InvalidJob("limit_key must be 1..255 characters", {"limit_key": "must be 1 to 255 characters, no NUL"})
    return Job(
        type=jt.name,
        queue=jt.queue,
        input=data,
        priority=priority,
        max_attempts=retries + 1,
        run_after=run_after,  # None: now, by the database's clock
        idempotency_key=step.idempotency_key,
        limit_key=limit_key,
        **fields,
    )


def submit(jobs: list[Job]) -> list[Job]:
    """Insert the rows in the caller's transaction; publish the due ones after it commits.

    Returns the rows inserted: one whose idempotency key is already taken is left out.
    """
    inserted = store.insert(jobs)
    publish_on_commit([Message.of(job) for job in inserted if job.published_at is not None])
    return inserted


def enqueue(
    type: str,  # noqa: A002 - the API's names: a job's type and input
    input: dict[str, Any] | None = None,  # noqa: A002
    *,
    idempotency_key: str | None = None,
    run_after: dt.datetime | None = None,
    priority: int | None = None,
    retries: int | None = None,
    limit_key: str | None = None,
) -> Job:
    """Write a job row in the caller's transaction; its message is published after commit.

    `limit_key`: for a type declaring `concurrency_per_key`, the key whose running jobs it counts
    (at most that many jobs of one key run at once, over every worker).

    With an idempotency key already used for the same type and input, the existing job is
    returned and nothing is enqueued; for another type or input, IdempotencyConflict is raised.
    """
    return enqueue_step(Step(type, input, idempotency_key, run_after, priority, retries, limit_key))[0]


def enqueue_step(step: Step) -> tuple[Job, bool]:
    """Enqueue one step: (the job, True) when inserted; (the existing job, False) when its
    idempotency key was already used for the same type and input."""
    job = new_job(step)
    for _ in range(3):  # the existing row may be deleted by retention between insert and read
        if submit([job]):
            return job, True
        existing = Job.objects.filter(idempotency_key=job.idempotency_key).first()
        if existing is None:
            continue
        if existing.type != job.type or existing.input != job.input:
            raise IdempotencyConflict(
                f"idempotency key {job.idempotency_key!r} was used for job {existing.pk} of another type or input",
                {"idempotency_key": f"already used by job {existing.pk} ({existing.type}) with another type or input"},
            )
        return existing, False
    raise IdempotencyConflict("idempotency key keeps changing hands", {"idempotency_key": "try again"})


def enqueue_many(steps: Iterable[Step]) -> list[Job]:
    """Bulk enqueue: one INSERT for all rows, one producer connection for all messages.

    Steps with an idempotency key already used are skipped (not returned).
    """
    jobs = [new_job(step) for step in steps]
    with transaction.atomic():
        return submit(jobs)


def start_chain(steps: list[Step | dict[str, Any]]) -> Chain:
    """Start a chain declared up front; every step's input is validated now, not when it runs."""
    if not steps:
        raise registry.InvalidJob("a chain needs at least one step", {"steps": "must not be empty"})
    parsed = [step if isinstance(step, Step) else Step(step.get("type", ""), step.get("input")) for step in steps]
    plan = []
    for index, step in enumerate(parsed):
        try:
            jt = registry.get(step.type)
            plan.append({"type": jt.name, "input": jt.validate(step.input)})
        except registry.InvalidJob as exc:
            raise registry.InvalidJob(
                f"step {index}: {exc}", {f"steps.{index}.{k}": v for k, v in exc.errors.items()}
            ) from None
    first = new_job(parsed[0])
    with transaction.atomic():
        chain = store.create_chain(plan)
        first.chain, first.chain_index = chain, 0
        submit([first])
    return chain
