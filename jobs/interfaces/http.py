"""HTTP API for jobs, chains and the job-type catalog (mounted by project/api.py under /api/).

The request schemas are built from the registry: `POST /api/jobs` and a chain's steps take a
union of the public job types discriminated by `type`, each with its own input schema, so the
OpenAPI document names every type a client may enqueue and what each one takes.
"""

import datetime as dt
import hashlib
import re
from collections import Counter
from typing import Annotated, Any, Literal, Optional, Union

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import close_old_connections
from django.http import Http404, HttpRequest
from django.shortcuts import get_object_or_404
from ninja import Body, Path, Query, Router, Schema, Status
from ninja.errors import HttpError
from pydantic import BaseModel, Discriminator, Field, Tag, create_model

from api.auth import OPERATES, READS, WRITES, TokenAuth, loaded
from api.scopes import READ
from api.schemas import MAX_ID, PageQuery, Strict, errors, page
from api.validation import UNION_TAGS, JsonObject, Text, strict_body
from jobs.engine import control, registry, store, why
from jobs.interfaces import listener, streams
from jobs.engine.chainview import MEMBERS_DEFAULT, MEMBERS_MAX, chain_view
from jobs.engine.creation import MAX_MEMBERS, PLATFORM_KEY_PREFIX, Group, Step, enqueue_step, start_chain
from jobs.models import Chain, Job

router = Router(tags=["jobs"])
chains = Router(tags=["chains"])
catalog = Router(tags=["catalog"])

JobId = Path(..., ge=1, le=MAX_ID)
#: Entries of a job's results per page, by default and at most.
RESULTS_DEFAULT, RESULTS_MAX = 50, 200

#: The longest `?wait=` (CONVEYOR_WAIT_MAX_SECONDS). A waiting request holds no server worker and
#: no database connection of its own (jobs/interfaces/listener.py), but an HTTP client's patience is bounded.
WAIT_MAX = float(settings.CONVEYOR["WAIT_MAX_SECONDS"])
#: Open waits per bearer token in one server process (CONVEYOR_WAITS_PER_TOKEN); over it: 429.
WAITS_PER_TOKEN = int(settings.CONVEYOR["WAITS_PER_TOKEN"])
_open_waits: Counter[str] = Counter()  # by the bearer's digest; touched on the event loop only


def _wait_param(what: str, ends: str) -> Any:
    return Query(
        None,
        ge=0,
        le=WAIT_MAX,
        allow_inf_nan=False,
        description=f"Seconds to wait for the {what} to end ({ends}), at most {WAIT_MAX:g}: the answer comes as soon "
        f"as it has ended, or after `wait` seconds with the {what} as it is then (still 200). Without it, at once. "
        f"At most {WAITS_PER_TOKEN} waits open per token in each server process (429 over it).",
    )


async def _wait(request: HttpRequest, kind: tuple[str, str, str], row_id: int, seconds: float | None) -> None:
    """Hold the request until the row ended or `seconds` passed: the process's one listening
    connection tells (jobs/interfaces/listener.py). Nothing else is held meanwhile: the connection the
    token's check used goes back first (to the pool: CONN_MAX_AGE=0 under ASGI)."""
    if not seconds:
        return
    what = kind[2]
    bearer = hashlib.sha256(request.headers.get("Authorization", "").encode()).hexdigest()
    if _open_waits[bearer] >= WAITS_PER_TOKEN:
        raise HttpError(
            429, f"this token already has {WAITS_PER_TOKEN} waits open on this server (CONVEYOR_WAITS_PER_TOKEN): "
            "wait for one to answer, or ask without `wait`"
        )
    _open_waits[bearer] += 1
    try:
        if settings.ASGI_SERVER:  # (elsewhere, a test's or runserver's connections stay as they are)
            # The request's thread (ninja ran the token check there) gives its connection back
            # to the pool now, not at the end of the wait, and ends: a wait needs no thread (the
            # answer's read makes a new one). 200 open waits held 200 idle threads before.
            await sync_to_async(close_old_connections)()
            streams.release_request_thread()
        await listener.hub().ended(kind, row_id, seconds)
    except (Job.DoesNotExist, Chain.DoesNotExist):
        raise Http404(f"no {what} {row_id}") from None
    except listener.WaitUnavailable:
        raise HttpError(503, "waiting is unavailable right now (the database connection failed): try again") from None
    finally:
        _open_waits[bearer] -= 1
        if _open_waits[bearer] <= 0:
            del _open_waits[bearer]


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
    #: One entry per attempt that did not succeed, oldest first: {"attempt", "error", "worker", "started_at", "at"}.
    errors: list[dict[str, Any]]
    chain: int | None = Field(None, alias="chain_id")
    chain_index: int | None
    #: Its place in its step's group (0, 1, ...); null for a step that is one job.
    member: int | None
    #: How many entries the group before its step handed on (the members' outputs in member
    #: order; a failed member, in a group that collects failures: {"error", "status", "job"}),
    #: read page by page with GET /api/jobs/{id}/results; null after a one-job step.
    results_count: int | None
    progress: int
    progress_message: str
    #: A cancel was asked while the job ran: it stops at its next check of ctx.cancelled.
    cancel_requested: bool
    worker: str
    idempotency_key: str | None
    #: The key its type's `concurrency_per_key` counts it under ("" for a job of a type with other
    #: limits, once claimed).
    limit_key: str | None
    #: Held back by its type's limits, waiting with no message: "rate" (it starts at run_after),
    #: "concurrency" or "key" (until a running job of its type or key ends); "paused" (its queue or
    #: type is paused: until resumed); "" when not held.
    held: str
    run_after: dt.datetime
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None


class JobDetail(JobOut):
    #: Why it has not started (a job pending or failed, waiting to run again); null once it runs
    #: or has ended: {"code", "words", "details", "alarms"} (jobs.engine.decisions.why).
    why: Optional[dict[str, Any]] = None


class JobPage(Schema):
    items: list[JobOut]
    #: Pass as `before` for the next page; null on the last page.
    next: int | None


class MemberOut(Schema):
    member: int
    type: str
    status: str
    job: Optional[JobOut]
    duration_seconds: float | None


class ResultsPage(Schema):
    #: Entries `offset` to `offset + limit - 1` of what the group before the job's step handed on,
    #: in member order.
    items: list[Any]
    #: How many entries there are in all.
    count: int
    #: Pass as `offset` for the next page; null on the last page.
    next: int | None


class ResultsQuery(Strict):
    offset: int = Field(0, ge=0, le=MAX_MEMBERS, description="the first entry (member) to return")
    limit: int = Field(RESULTS_DEFAULT, ge=1, le=RESULTS_MAX, description=f"entries per page (at most {RESULTS_MAX})")


class MembersQuery(Strict):
    members_from: int = Field(
        0, ge=0, le=MAX_MEMBERS, description="a group step's first member to list (its `members_next` for the next page)"
    )
    members_limit: int = Field(
        MEMBERS_DEFAULT, ge=1, le=MEMBERS_MAX, description=f"members listed per group step (at most {MEMBERS_MAX})"
    )


class StepOut(Schema):
    index: int
    #: The job type, or "group" for a group step (its members listed in `members`).
    type: str
    #: A group's: waiting (no member yet), pending, running, then succeeded when every member
    #: did, else dead or cancelled (the worst member's end).
    status: str
    #: The step's job; null for a group step and for a step not reached yet.
    job: Optional[JobOut]
    #: Seconds from the previous step's finish (a group's: its last member's) to this step's
    #: start (a group's: its first member's): the handoff.
    handoff_seconds: float | None
    duration_seconds: float | None
    #: One page of a group step's members in member order (`members_from`, `members_limit`;
    #: null for a step that is one job).
    members: list[MemberOut] | None = None
    #: A group step's number of members.
    member_count: int | None = None
    #: A group step's members counted by status ("waiting": no job yet; "not reached": no job, and
    #: the chain has ended).
    member_statuses: dict[str, int] | None = None
    #: The `members_from` of the next page of members; null on the last page.
    members_next: int | None = None
    #: A group step's rule when a member ends badly: fail (the chain fails) or collect.
    on_failure: str | None = None


class ChainOut(Schema):
    id: int
    status: str
    created_at: dt.datetime
    finished_at: dt.datetime | None
    steps: list[StepOut]


class JobFilters(PageQuery):
    status: Literal["pending", "running", "succeeded", "failed", "dead", "cancelled"] | None = None
    type: Text | None = Field(None, max_length=200)
    chain: int | None = Field(None, ge=1, le=MAX_ID)


# --- Request schemas from the registry ----------------------------------------------------------


class StepBase(Strict):
    pass


class EnqueueBase(Strict):
    idempotency_key: Text | None = Field(default=None, min_length=1, max_length=255)
    run_after: dt.datetime | None = None
    priority: int | None = Field(default=None, ge=0, le=9)
    retries: int | None = Field(default=None, ge=0, le=100)


def _needs_input(jt: registry.JobType) -> bool:
    return jt.input is not None and any(field.is_required() for field in jt.input.model_fields.values())


def _variant(jt: registry.JobType, base: type[BaseModel], prefix: str) -> type[BaseModel]:
    input_type = jt.input if jt.input is not None else JsonObject
    input_field = (input_type, ...) if _needs_input(jt) else (Optional[input_type], None)
    # A type limited per key takes the key (only such types: another would refuse it).
    keyed = {}
    if base is EnqueueBase and jt.concurrency_per_key:
        keyed["limit_key"] = (Optional[Text], Field(None, min_length=1, max_length=255))
    return create_model(
        prefix + re.sub(r"\W+", "_", jt.name).strip("_").title().replace("_", ""),
        __base__=base,
        __doc__=(jt.handler.__doc__ or "").strip().split("\n")[0] or None,
        type=(Literal[jt.name], ...),
        input=input_field,
        **keyed,
    )


def _union(base: type[BaseModel], prefix: str, member: bool = False) -> Any:
    """The request schema of a job (or chain step) of any public type, told apart by `type`; for
    a group's member (`member`), only types that neither continue nor fan out (continues=False:
    creation.plan refuses the others there, and the document must not offer them)."""
    variants = [_variant(jt, base, prefix) for jt in registry.all_types() if jt.public and not (member and jt.continues)]
    UNION_TAGS.update(jt.name for jt in registry.all_types() if jt.public)
    if not variants:  # no public type (production without the demo): nothing to enqueue
        return create_model(prefix + "NoPublicType", __base__=base, type=(Literal["no public job type"], ...))
    if len(variants) == 1:
        return variants[0]
    return Annotated[Union[tuple(variants)], Field(discriminator="type")]


EnqueueIn = _union(EnqueueBase, "Enqueue")
StepIn = _union(StepBase, "Step")
MemberIn = _union(StepBase, "Member", member=True)


class GroupIn(Strict):
    """A group step: its members run side by side, and the next step gets their outputs."""

    group: list[MemberIn] = Field(min_length=1, max_length=MAX_MEMBERS)
    #: When a member ends badly (dead, cancelled): fail the chain, or collect the failure in the
    #: member's place in the next step's `results`.
    on_failure: Literal["fail", "collect"] = "fail"


def _kind(value: Any) -> str:
    data = value if isinstance(value, dict) else getattr(value, "__dict__", {})
    return "group step" if "group" in data else "job step"


UNION_TAGS.update(("group step", "job step"))
ChainStepIn = Annotated[
    Union[Annotated[StepIn, Tag("job step")], Annotated[GroupIn, Tag("group step")]], Discriminator(_kind)
]


class ChainIn(Strict):
    steps: list[ChainStepIn] = Field(min_length=1, max_length=100)


def _public(type_name: str, field: str) -> None:
    """Refuse a type that is not enqueueable over HTTP (the schema names only public ones)."""
    try:
        public = registry.get(type_name).public
    except registry.InvalidJob:
        public = False
    if not public:
        raise registry.InvalidJob(
            f"{type_name!r} is not a public job type", {field: "not a job type enqueueable over HTTP (GET /api/types)"}
        )


def _input(payload: Any) -> Any:
    data = getattr(payload, "input", None)
    return data.model_dump(mode="json") if isinstance(data, BaseModel) else data


# --- Jobs ---------------------------------------------------------------------------------------


@router.post(
    "",
    response={201: JobOut, 200: JobOut, **errors(400, 401, 403, 409, 413)},
    summary="Enqueue a job",
    auth=WRITES,
    description="Scope `jobs:write`. 201 with the new job; 200 with the existing one when `idempotency_key` was already "
    "used for the same type and input; 409 when it was used for another type or input. `type` is one "
    "of the public job types (GET /api/types), and `input` follows that type's schema.",
)
def create_job(request: HttpRequest, payload: EnqueueIn = Body(...)):  # noqa: ANN201
    payload = strict_body(request, EnqueueIn)
    _public(payload.type, "type")
    if (payload.idempotency_key or "").startswith(PLATFORM_KEY_PREFIX):
        message = f"must not start with {PLATFORM_KEY_PREFIX!r} (the platform's own keys: schedule ticks, deliveries)"
        raise registry.InvalidJob(f"idempotency_key {message}", {"idempotency_key": message})
    job, created = enqueue_step(
        Step(payload.type, _input(payload), payload.idempotency_key, payload.run_after, payload.priority, payload.retries,
             getattr(payload, "limit_key", None))
    )
    return Status(201 if created else 200, job)


@router.get("", response={200: JobPage, **errors(400, 401, 403)}, summary="List jobs, newest first", auth=READS)
def list_jobs(request: HttpRequest, filters: Query[JobFilters]):  # noqa: ANN201
    jobs = Job.objects.all()
    if filters.status:
        jobs = jobs.filter(status=filters.status)
    if filters.type:
        jobs = jobs.filter(type=filters.type)
    if filters.chain is not None:
        jobs = jobs.filter(chain_id=filters.chain)
    return page(jobs, filters)


def _load_job(request: HttpRequest) -> Job | None:
    """The job of `GET /api/jobs/{id}` without `?wait`, read right after the token's check, in
    its thread hop (api.auth.TokenAuth's `load`): a hop less per request. With `wait`, or an id
    out of bounds (the view's validation answers), nothing: the view reads."""
    job_id = request.resolver_match.kwargs.get("job_id") if request.resolver_match else None
    if request.GET.get("wait") or not isinstance(job_id, int) or not 1 <= job_id <= MAX_ID:
        return None
    return _job_detail(job_id)


#: jobs:read, and the job read in the same thread hop (get_job).
READS_AND_JOB = TokenAuth(READ, load=_load_job)


#: What the answers of a job or a chain say of a job that has not started (jobs.engine.why).
WHY_DOC = ("A job that has not started says why in `why` (scheduled, retry_backoff, rate, concurrency, key, "
           "leaked_slot, paused, no_consumer, relay, queue, next: a code, plain words, details, alarms). ")

@router.get(
    "/{int:job_id}",
    response={200: JobDetail, **errors(400, 401, 403, 404, 429, 503)},
    summary="Get a job",
    auth=READS_AND_JOB,
    description=WHY_DOC + "With `?wait=SECONDS`, the answer waits for the job to end (succeeded, dead or cancelled; a failed "
    "attempt that will be retried has not ended) and comes as soon as it has, or at the end of `wait` with the job as "
    "it is then: check `status`. No polling: the server is told by PostgreSQL (LISTEN/NOTIFY).",
)
async def get_job(  # noqa: ANN201
    request: HttpRequest, job_id: int = JobId, wait: float | None = _wait_param("job", "succeeded, dead or cancelled")
):
    if not wait and (job := loaded(request)) is not None:
        return job  # read in the token check's thread hop (READS_AND_JOB)
    await _wait(request, listener.JOB, job_id, wait)
    return await sync_to_async(_job_detail)(job_id)


def _job_detail(job_id: int) -> Job:
    """The job, with why it waits when it has not started (a few index probes: jobs.engine.why)."""
    job = get_object_or_404(Job, pk=job_id)
    if job.status in ("pending", "failed"):
        answer = why.why(job_id)
        job.why = answer.as_dict() if answer is not None else None
    return job


@router.get(
    "/{int:job_id}/results",
    response={200: ResultsPage, **errors(400, 401, 403, 404)},
    summary="What the group before a job's step handed on, a page at a time",
    auth=READS,
    description="The members' outputs in member order (a member that ended badly, in a group that collects failures: "
    "{error, status, job}), as the job's handler reads them (ctx.results); stored once for the whole step. A job "
    "whose step follows a one-job step has none (`count` 0).",
)
def job_results(request: HttpRequest, query: Query[ResultsQuery], job_id: int = JobId):  # noqa: ANN201
    job = get_object_or_404(Job.objects.only("id", "chain_id", "chain_index", "results_count"), pk=job_id)
    if job.results_count is None or job.chain_id is None:
        return {"items": [], "count": 0, "next": None}
    items = store.step_results(job.chain_id, job.chain_index or 0, query.offset, query.limit)
    following = query.offset + len(items)
    return {"items": items, "count": job.results_count, "next": following if following < job.results_count else None}


@router.post(
    "/{int:job_id}/cancel",
    response={200: JobOut, 202: JobOut, **errors(400, 401, 403, 404, 409)},
    summary="Cancel a job",
    auth=OPERATES,
    description="Scope `operate`. 200: a waiting job, cancelled at once. 202: a running job, asked to stop "
    "(`cancel_requested` is true; it ends `cancelled` when its handler returns). 409: already ended.",
)
def cancel_job(request: HttpRequest, job_id: int = JobId):  # noqa: ANN201
    job = get_object_or_404(Job, pk=job_id)
    if not control.cancel(job):
        raise HttpError(409, f"job {job_id} is {job.status}: only pending, failed or running jobs can be cancelled")
    job.refresh_from_db()
    return Status(202 if job.status == "running" else 200, job)


@router.post(
    "/{int:job_id}/retry",
    response={200: JobOut, **errors(400, 401, 403, 404, 409)},
    summary="Retry a dead, failed or cancelled job",
    description="Scope `operate`.",
    auth=OPERATES,
)
def retry_job(request: HttpRequest, job_id: int = JobId):  # noqa: ANN201
    job = get_object_or_404(Job, pk=job_id)
    if not control.retry(job):
        raise HttpError(409, f"job {job_id} is {job.status}: only dead, failed or cancelled jobs can be retried")
    return job  # as the retry left it (a worker may claim it any moment now)


# --- Chains -------------------------------------------------------------------------------------


@chains.post(
    "", response={201: ChainOut, **errors(400, 401, 403, 413)}, summary="Start a chain of steps", description="Scope `jobs:write`.",
    auth=WRITES,
)
def create_chain(request: HttpRequest, payload: ChainIn):  # noqa: ANN201
    payload = strict_body(request, ChainIn)
    steps: list[Step | Group] = []
    for index, step in enumerate(payload.steps):
        if isinstance(step, GroupIn):
            for n, member in enumerate(step.group):
                _public(member.type, f"steps.{index}.group.{n}.type")
            steps.append(Group([Step(member.type, _input(member)) for member in step.group], step.on_failure))
        else:
            _public(step.type, f"steps.{index}.type")
            steps.append(Step(step.type, _input(step)))
    chain = start_chain(steps)
    return Status(201, chain_view(chain))


@chains.get(
    "/{int:chain_id}",
    response={200: ChainOut, **errors(400, 401, 403, 404, 429, 503)},
    summary="A chain and every step in order",
    auth=READS,
    description=WHY_DOC + "With `?wait=SECONDS`, the answer waits for the chain to end (succeeded; failed when a step is dead; "
    "cancelled) and comes as soon as it has, or at the end of `wait` with the chain as it is then. A group step "
    "lists one page of its members (`members_from`, `members_limit`, the same for every group step; its "
    "`members_next` is the next page's `members_from`) beside its members counted by status (`member_statuses`).",
)
async def get_chain(  # noqa: ANN201
    request: HttpRequest,
    page: Query[MembersQuery],
    chain_id: int = Path(..., ge=1, le=MAX_ID),
    wait: float | None = _wait_param("chain", "succeeded, failed or cancelled"),
):
    await _wait(request, listener.CHAIN, chain_id, wait)
    return await sync_to_async(_chain_or_404)(chain_id, page.members_from, page.members_limit)


def _chain_or_404(chain_id: int, members_from: int, members_limit: int) -> dict[str, Any]:
    chain = get_object_or_404(Chain.objects.defer("steps"), pk=chain_id)
    return chain_view(chain, members_from, members_limit)


# --- Live streams (Server-Sent Events: jobs/interfaces/streams.py, docs/streams.md) ---------------


@router.get("/{int:job_id}/stream", **streams.route(
    "job", "Follow a job live (Server-Sent Events) until it ends",
    "`state` events carry the job (status, attempt, progress, errors of the failed attempts, output) "
    "each time it changes; `end` its last state. Resume with `Last-Event-ID`. See docs/streams.md.",
))
async def stream_job(request: HttpRequest, job_id: int = JobId, access_token: str | None = streams.ACCESS_TOKEN):  # noqa: ANN201
    return await streams.respond(request, streams.JOB, job_id)


@chains.get("/{int:chain_id}/stream", **streams.route(
    "chain", "Follow a chain live (Server-Sent Events) until it ends",
    "`state` events carry the chain (status, number of steps, every job made so far with its status, "
    "attempt and progress) each time it changes; `end` its last state, with the last job's output when it "
    "succeeded. Resume with `Last-Event-ID`. See docs/streams.md.",
))
async def stream_chain(  # noqa: ANN201
    request: HttpRequest, chain_id: int = Path(..., ge=1, le=MAX_ID), access_token: str | None = streams.ACCESS_TOKEN
):
    return await streams.respond(request, streams.CHAIN, chain_id)


# --- The catalog --------------------------------------------------------------------------------


class TypeOut(Schema):
    name: str
    queue: str
    retries: int
    timeout: int
    priority: int
    aliases: list[str]
    #: Enqueueable over HTTP.
    public: bool
    #: The schedule declared in code (cron, every or at, with its timezone), if any.
    schedule: dict[str, Any] | None
    #: Global limits over every worker (null: none): starts per second, minute or hour ("20/s"),
    #: running jobs at once, and running jobs at once per `limit_key`.
    rate_limit: str | None
    concurrency: int | None
    concurrency_per_key: int | None
    #: Its handler's database writes commit with its outcome, or not at all (`atomic=True`).
    atomic: bool
    #: The JSON schema of its input.
    input_schema: dict[str, Any]


@catalog.get(
    "/types", response={200: list[TypeOut], **errors(401, 403)}, summary="Every job type, with its input schema", auth=READS
)
def list_types(request: HttpRequest):  # noqa: ANN201
    return [
        {
            "name": jt.name,
            "queue": jt.queue,
            "retries": jt.retries,
            "timeout": jt.timeout,
            "priority": jt.priority,
            "aliases": list(jt.aliases),
            "public": jt.public,
            "schedule": jt.schedule.describe() if jt.schedule is not None else None,
            "rate_limit": jt.rate_limit.text if jt.rate_limit is not None else None,
            "concurrency": jt.concurrency,
            "concurrency_per_key": jt.concurrency_per_key,
            "atomic": jt.atomic,
            "input_schema": jt.input_schema(),
        }
        for jt in registry.all_types()
    ]
