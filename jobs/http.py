"""HTTP API for jobs and chains (mounted by api.root under /api/jobs and /api/chains)."""

import datetime as dt
from typing import Any, Literal, Optional

from django.http import HttpRequest
from django.shortcuts import get_object_or_404
from ninja import Query, Router, Schema, Status
from ninja.errors import HttpError
from ninja.pagination import LimitOffsetPagination, paginate
from pydantic import Field

from api.schemas import ERRORS, Strict
from jobs import control
from jobs.creation import Step, enqueue_step, start_chain
from jobs.models import Chain, Job

router = Router(tags=["jobs"])
chains = Router(tags=["chains"])


class EnqueueIn(Strict):
    type: str = Field(min_length=1, max_length=200)
    input: dict[str, Any] = Field(default_factory=dict)
    idempotency_key: str | None = Field(default=None, max_length=255)
    run_after: dt.datetime | None = None
    priority: int | None = Field(default=None, ge=0, le=9)
    retries: int | None = Field(default=None, ge=0, le=100)


class JobOut(Schema):
    id: int
    type: str
    queue: str
    status: str
    attempt: int
    max_attempts: int
    priority: int
    input: Any
    output: Any
    error: str
    chain: int | None = Field(None, alias="chain_id")
    chain_index: int | None
    progress: int
    progress_message: str
    #: A cancel was asked while the job ran: it stops at its next check of ctx.cancelled.
    cancel_requested: bool
    worker: str
    idempotency_key: str | None
    run_after: dt.datetime
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None


class StepIn(Strict):
    type: str = Field(min_length=1, max_length=200)
    input: dict[str, Any] = Field(default_factory=dict)


class ChainIn(Strict):
    steps: list[StepIn] = Field(min_length=1, max_length=100)


class StepOut(Schema):
    index: int
    type: str
    status: str
    job: Optional[JobOut]
    #: Seconds from the previous step's finish to this step's start (the handoff).
    handoff_seconds: float | None
    duration_seconds: float | None


class ChainOut(Schema):
    id: int
    status: str
    created_at: dt.datetime
    finished_at: dt.datetime | None
    steps: list[StepOut]


class JobFilters(Strict):
    status: Literal["pending", "running", "succeeded", "failed", "dead", "cancelled"] | None = None
    type: str | None = None
    chain: int | None = None


@router.post(
    "",
    response={201: JobOut, 200: JobOut, **ERRORS},
    summary="Enqueue a job",
    description="201 with the new job; 200 with the existing one when `idempotency_key` was already "
    "used for the same type and input; 409 when it was used for another type or input.",
)
def create_job(request: HttpRequest, payload: EnqueueIn):  # noqa: ANN201
    job, created = enqueue_step(
        Step(payload.type, payload.input, payload.idempotency_key, payload.run_after, payload.priority, payload.retries)
    )
    return Status(201 if created else 200, job)


@router.get("", response=list[JobOut], summary="List jobs, newest first")
@paginate(LimitOffsetPagination)
def list_jobs(request: HttpRequest, filters: Query[JobFilters]):  # noqa: ANN201
    jobs = Job.objects.all()
    if filters.status:
        jobs = jobs.filter(status=filters.status)
    if filters.type:
        jobs = jobs.filter(type=filters.type)
    if filters.chain is not None:
        jobs = jobs.filter(chain_id=filters.chain)
    return jobs


@router.get("/{int:job_id}", response={200: JobOut, **ERRORS}, summary="Get a job")
def get_job(request: HttpRequest, job_id: int):  # noqa: ANN201
    return get_object_or_404(Job, pk=job_id)


@router.post(
    "/{int:job_id}/cancel",
    response={200: JobOut, 202: JobOut, **ERRORS},
    summary="Cancel a job",
    description="200: a waiting job, cancelled at once. 202: a running job, asked to stop "
    "(`cancel_requested` is true; it ends `cancelled` when its handler returns). 409: already ended.",
)
def cancel_job(request: HttpRequest, job_id: int):  # noqa: ANN201
    job = get_object_or_404(Job, pk=job_id)
    if not control.cancel(job):
        raise HttpError(409, f"job {job_id} is {job.status}: only pending, failed or running jobs can be cancelled")
    job.refresh_from_db()
    return Status(202 if job.status == "running" else 200, job)


@router.post("/{int:job_id}/retry", response={200: JobOut, **ERRORS}, summary="Retry a dead, failed or cancelled job")
def retry_job(request: HttpRequest, job_id: int):  # noqa: ANN201
    job = get_object_or_404(Job, pk=job_id)
    if not control.retry(job):
        raise HttpError(409, f"job {job_id} is {job.status}: only dead, failed or cancelled jobs can be retried")
    return job  # as the retry left it (a worker may claim it any moment now)


@chains.post("", response={201: ChainOut, **ERRORS}, summary="Start a chain of steps")
def create_chain(request: HttpRequest, payload: ChainIn):  # noqa: ANN201
    chain = start_chain([Step(step.type, step.input) for step in payload.steps])
    return Status(201, chain_view(chain))


@chains.get("/{int:chain_id}", response={200: ChainOut, **ERRORS}, summary="A chain and every step in order")
def get_chain(request: HttpRequest, chain_id: int):  # noqa: ANN201
    return chain_view(get_object_or_404(Chain, pk=chain_id))


def chain_view(chain: Chain) -> dict[str, Any]:
    """The chain with one entry per planned step: its latest job, timings and handoff."""
    jobs = {job.chain_index: job for job in chain.jobs.order_by("chain_index", "id")}
    steps = []
    previous: Job | None = None
    for index, planned in enumerate(chain.steps):
        job = jobs.get(index)
        handoff = None
        if job and previous and previous.finished_at and job.started_at:
            handoff = (job.started_at - previous.finished_at).total_seconds()
        steps.append(
            {
                "index": index,
                "type": planned["type"],
                "status": job.status if job else "waiting",
                "job": job,
                "handoff_seconds": handoff,
                "duration_seconds": job.duration if job else None,
            }
        )
        previous = job
    return {
        "id": chain.pk,
        "status": chain.status,
        "created_at": chain.created_at,
        "finished_at": chain.finished_at,
        "steps": steps,
    }

