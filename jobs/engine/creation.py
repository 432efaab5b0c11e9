"""Creating jobs: enqueue, enqueue_many, start_chain, and the one path every new job takes.

A chain's plan (`Chain.steps`) holds one entry per step: `{"type", "input"}` for one job, or
`{"group": [{"type", "input"}, ...], "on_failure": "fail" | "collect"}` for a group of jobs that
run side by side (`plan` validates both; `step_jobs` makes the rows of either).

`new_job` validates a Step against its job type and returns an unsaved row; `submit` inserts rows
(the job store's one INSERT) and publishes the due ones after the caller's transaction commits.
Everything that makes a job goes through both: the Python API here, the HTTP API, a chain's next
step, an event's deliveries and a schedule's tick. A rolled-back transaction leaves neither row
nor message.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from django.db import transaction

from api.errors import Conflict
from jobs.engine import early, registry, store, tracing
from jobs.models import Chain, Job
from jobs.engine.publish import Message, publish_on_commit


#: Idempotency keys the platform makes itself (schedule ticks, event deliveries) start with this.
#: An HTTP client's may not (jobs.interfaces.http), so no client can take a key a tick or a delivery needs;
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


#: The most members a group may have (declared up front, over HTTP, or by ctx.fan_out).
MAX_MEMBERS = 500
#: What a group does when a member ends badly (dead or cancelled): "fail" ends the chain at
#: once (the other members are left to finish; nothing runs after them); "collect" waits for
#: every member and hands the failures on in place of their outputs.
ON_FAILURE = ("fail", "collect")


@dataclass(frozen=True)
class Group:
    """A step of several jobs run side by side; the chain goes on when every one has ended, and
    the next step gets their outputs in member order (`ctx.results`)."""

    members: list[Step | dict[str, Any]]
    on_failure: str = "fail"


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


def submit(jobs: list[Job], claim_here: Callable[[list[Job]], set[int]] | None = None) -> list[Job]:
    """Insert the rows in the caller's transaction; publish the due ones after it commits (in a
    run's success, while its COMMIT is in flight: jobs.engine.early).

    Returns the rows inserted: one whose idempotency key is already taken is left out.

    Traced (jobs.engine.tracing), the insert is a `conveyor.enqueue` span, and each row stores
    its context: every attempt of every row runs as its child.

    `claim_here`: given the rows inserted, claims some for this worker in the same transaction
    (jobs.engine.handoff.take) and returns their ids: no message is sent for those.
    """
    if tracing.on and jobs:
        return _traced_submit(jobs, claim_here)
    return _insert(jobs, claim_here)


def _insert(jobs: list[Job], claim_here: Callable[[list[Job]], set[int]] | None) -> list[Job]:
    # In a run's success (jobs.engine.early): the messages go out while its COMMIT is in flight, each
    # row's early lock held by the insert until the transaction ends.
    collected = early.pending()
    inserted = store.insert(jobs, early=collected is not None)
    claimed = claim_here(inserted) if claim_here is not None else set()
    messages = [Message.of(job) for job in inserted if job.published_at is not None and job.pk not in claimed]
    if collected is not None:
        collected.extend(messages)
    else:
        publish_on_commit(messages)
    return inserted


def _traced_submit(jobs: list[Job], claim_here: Callable[[list[Job]], set[int]] | None) -> list[Job]:
    types, queues = sorted({job.type for job in jobs}), sorted({job.queue for job in jobs})
    attributes = {
        "conveyor.job.type": types[0] if len(types) == 1 else None,
        "conveyor.job.types": types if len(types) > 1 else None,
        "conveyor.queue": queues[0] if len(queues) == 1 else None,
        "conveyor.queues": queues if len(queues) > 1 else None,
        "conveyor.jobs": len(jobs),
        "conveyor.chain.id": jobs[0].chain_id,
        "conveyor.chain.step": jobs[0].chain_index,
    }
    with tracing.span("conveyor.enqueue", attributes, kind=tracing.trace.SpanKind.PRODUCER) as span:
        carrier = tracing.capture()
        for job in jobs:
            job.trace_context = carrier
        inserted = _insert(jobs, claim_here)
        span.set_attribute("conveyor.job.ids", [job.pk for job in inserted[:100]])
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


def plan(steps: list[Step | Group | dict[str, Any]]) -> list[dict[str, Any]]:
    """Validate a chain's steps, each a Step, a Group or their JSON form, into the plan stored in
    `Chain.steps`; errors name the field (`steps.1.group.0.input.width`)."""
    if not steps:
        raise registry.InvalidJob("a chain needs at least one step", {"steps": "must not be empty"})
    return [plan_step(step, f"steps.{index}") for index, step in enumerate(steps)]


def plan_step(step: Step | Group | dict[str, Any], field: str) -> dict[str, Any]:
    """One planned step: `{"type", "input"}`, or `{"group": [...], "on_failure": ...}`."""
    if isinstance(step, dict) and "group" in step:
        extra = set(step) - {"group", "on_failure"}
        if extra:
            raise registry.InvalidJob(f"{field}: unknown field {sorted(extra)[0]!r}", {f"{field}.{sorted(extra)[0]}": "unknown field"})
        step = Group(step["group"], step.get("on_failure", "fail"))
    if not isinstance(step, Group):
        return _plan_one(step, field)
    if step.on_failure not in ON_FAILURE:
        raise registry.InvalidJob(f"{field}: on_failure must be fail or collect", {f"{field}.on_failure": "must be fail or collect"})
    members = step.members
    if not isinstance(members, (list, tuple)) or not members:
        raise registry.InvalidJob(f"{field}: a group needs at least one member", {f"{field}.group": "must not be empty"})
    if len(members) > MAX_MEMBERS:
        raise registry.InvalidJob(
            f"{field}: a group has at most {MAX_MEMBERS} members", {f"{field}.group": f"at most {MAX_MEMBERS} members"}
        )
    planned = []
    for index, member in enumerate(members):
        where = f"{field}.group.{index}"
        if isinstance(member, Group) or (isinstance(member, dict) and "group" in member):
            raise registry.InvalidJob(f"{where}: a group's member is one job, not a group", {where: "must be one job, not a group"})
        planned.append(_plan_one(member, where))
        if registry.get(planned[-1]["type"]).continues:
            reason = "its type may continue_with or fan_out (continues=True); a group's member may not"
            raise registry.InvalidJob(f"{where}.type: {reason}", {f"{where}.type": reason})
    return {"group": planned, "on_failure": step.on_failure}


def _plan_one(step: Step | dict[str, Any], field: str) -> dict[str, Any]:
    if isinstance(step, dict):
        step = Step(step.get("type", ""), step.get("input"))
    if not isinstance(step, Step):
        raise registry.InvalidJob(f"{field}: not a step", {field: "must be a Step or a Group"})
    try:
        jt = registry.get(step.type)
        return {"type": jt.name, "input": jt.validate(step.input)}
    except registry.InvalidJob as exc:
        errors = {f"{field}.{k}": v for k, v in exc.errors.items()} or {f"{field}.type": str(exc)}
        raise type(exc)(f"{field}: {exc}", errors) from None


def step_jobs(planned: dict[str, Any], chain_id: int, index: int, **fields: Any) -> list[Job]:
    """The unsaved rows of planned step `index`: one job, or one per member of a group (in member
    order, `member` 0, 1, ...). `fields`: parent_id, and results_count (how many entries the group
    before it handed on)."""
    if "group" in planned:
        return [
            new_job(Step(m["type"], m["input"]), chain_id=chain_id, chain_index=index, member=n, **fields)
            for n, m in enumerate(planned["group"])
        ]
    return [new_job(Step(planned["type"], planned["input"]), chain_id=chain_id, chain_index=index, **fields)]


def start_chain(steps: list[Step | Group | dict[str, Any]]) -> Chain:
    """Start a chain declared up front; every step's input is validated now, not when it runs.

    A step is a Step (one job) or a Group of Steps run side by side:
    `start_chain([Step("a"), Group([Step("b"), Step("c")]), Step("d")])`.
    """
    planned = plan(steps)
    with transaction.atomic():
        chain = store.create_chain(planned)
        if isinstance(steps[0], Step):  # the first job keeps its own settings (key, delay, priority)
            submit([new_job(steps[0], chain_id=chain.pk, chain_index=0)])
        else:
            submit(step_jobs(planned[0], chain.pk, 0))
    return chain
