"""The Python API for application code: enqueue, enqueue_many, start_chain.

Each writes rows in the caller's transaction and publishes their messages after it commits; a
rolled-back transaction leaves neither row nor message.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Iterable

from django.db import IntegrityError, transaction
from django.utils import timezone

from jobs import registry
from jobs.models import Chain, Job
from jobs.publish import Message, publish_on_commit


@dataclass(frozen=True)
class Step:
    """One job to enqueue: a type, its input and optional per-job settings."""

    type: str
    input: dict[str, Any] | None = None
    idempotency_key: str | None = None
    run_after: dt.datetime | None = None
    priority: int | None = None
    retries: int | None = None


def build(step: Step, **fields: Any) -> Job:
    """Validate a step against its job type and return an unsaved Job row."""
    jt = registry.get(step.type)
    data = jt.validate(step.input)
    priority = jt.priority if step.priority is None else step.priority
    if not registry.PRIORITY_MIN <= priority <= registry.PRIORITY_MAX:
        raise registry.InvalidJob("priority must be 0..9", {"priority": "must be between 0 and 9"})
    retries = jt.retries if step.retries is None else step.retries
    if retries < 0:
        raise registry.InvalidJob("retries must be >= 0", {"retries": "must be 0 or more"})
    now = timezone.now()
    run_after = step.run_after or now
    if timezone.is_naive(run_after):
        raise registry.InvalidJob("run_after needs a timezone", {"run_after": "must include a timezone"})
    return Job(
        type=jt.name,
        queue=jt.queue,
        input=data,
        priority=priority,
        max_attempts=retries + 1,
        run_after=run_after,
        # Due now: published after commit. Later: the relay publishes it when due.
        published_at=now if run_after <= now else None,
        idempotency_key=step.idempotency_key,
        created_at=now,
        updated_at=now,
        **fields,
    )


def message(job: Job) -> Message:
    return Message(job.pk, job.queue, job.priority, job.type)


def publish_due(jobs: Iterable[Job]) -> None:
    publish_on_commit([message(job) for job in jobs if job.published_at is not None])


def enqueue(
    type: str,
    input: dict[str, Any] | None = None,
    *,
    idempotency_key: str | None = None,
    run_after: dt.datetime | None = None,
    priority: int | None = None,
    retries: int | None = None,
) -> Job:
    """Write a job row in the caller's transaction; its message is published after commit.

    With an idempotency key already used, the existing job is returned and nothing is enqueued.
    """
    job = build(Step(type, input, idempotency_key, run_after, priority, retries))
    if idempotency_key is None:
        job.save(force_insert=True)
    else:
        try:
            with transaction.atomic():
                job.save(force_insert=True)
        except IntegrityError:
            return Job.objects.get(idempotency_key=idempotency_key)
    publish_due([job])
    return job


def enqueue_many(steps: Iterable[Step]) -> list[Job]:
    """Bulk enqueue: one INSERT for all rows, one producer connection for all messages.

    Steps with an idempotency key already used are skipped (not returned).
    """
    jobs = [build(step) for step in steps]
    with transaction.atomic():
        created = Job.objects.bulk_create(jobs, ignore_conflicts=any(j.idempotency_key for j in jobs))
        created = [job for job in created if job.pk is not None]
        publish_due(created)
    return created


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
    with transaction.atomic():
        chain = Chain.objects.create(steps=plan)
        first = build(parsed[0], chain=chain, chain_index=0)
        first.save(force_insert=True)
        publish_due([first])
    return chain
