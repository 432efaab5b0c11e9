"""HTTP API for queues and pauses (mounted by project/api.py under /api/): which queues have
waiting jobs and who consumes them, and pausing or resuming a queue or a job type (scope
`operate`); the autoscaling signal (GET /api/queues/scale). A job's own answer to "why is it waiting?" is on GET /api/jobs/{id} (`why`)."""
from __future__ import annotations

import datetime as dt
from typing import Any

from django.http import HttpRequest
from ninja import Body, Path, Query, Router, Schema
from ninja.errors import HttpError
from pydantic import Field

from api.auth import OPERATES, READS
from api.schemas import Strict, errors
from api.validation import Text
from jobs.engine import decisions, pauses, scaling, why

router = Router(tags=["queues"])

Name = Path(..., min_length=1, max_length=200)


class WhyOut(Schema):
    #: scheduled, retry_backoff, rate, concurrency, key, leaked_slot, lane, paused, no_consumer,
    #: relay, queue (behind other jobs), next.
    code: str
    #: The reason in plain words.
    words: str
    #: What it waits for: `until`, `next_slot`, `holders`, `key`, `ahead`, `pauses`, ...
    details: dict[str, Any]
    #: Conditions an operator must act on whatever the reason (a queue no worker consumes).
    alarms: list[str]


class QueueOut(Schema):
    #: The queue's name (as POST /api/queues/{name}/pause takes it; `queue` says the same).
    name: str
    queue: str
    #: Jobs due and waiting for a worker (not held by a limit or a pause).
    waiting: int
    #: Seconds the oldest of them has waited; null when none waits.
    oldest_waiting_seconds: float | None
    #: Workers consuming the queue now (their heartbeats); null when Redis cannot be read.
    consumers: int | None
    #: Jobs wait and no worker consumes the queue.
    alarm: bool
    #: The queue's pause ({"reason", "by", "since", "held"}), null when it is not paused.
    paused: dict[str, Any] | None


class PauseIn(Strict):
    reason: Text = Field("", max_length=1000, description="why it is paused: shown as the why of its jobs")


class PauseOut(Schema):
    kind: str
    name: str
    paused: bool
    reason: str = ""
    by: str = ""
    since: dt.datetime | None = None
    #: On resume: jobs held for the pause, published now.
    released: int | None = None


def _pauses() -> dict[tuple[str, str], dict[str, Any]]:
    return {(p.kind, p.name): {"reason": p.reason, "by": p.paused_by, "since": p.created_at, "held": p.held}
            for p in pauses.paused()}


@router.get("/queues", response={200: list[QueueOut], **errors(401, 403)}, summary="Queues: waiting jobs, consumers, pauses",
            auth=READS)
def list_queues(request: HttpRequest):  # noqa: ANN201
    paused = _pauses()
    return [{**row, "name": row["queue"], "paused": paused.get(("queue", row["queue"]))} for row in why.queues()]


class QueueScaleOut(Schema):
    #: Jobs due and waiting for a worker (not held by a limit or a pause).
    waiting: int
    #: Jobs running now.
    running: int
    #: Seconds the oldest waiting job has waited (0: none waits).
    oldest_waiting_seconds: float
    #: Workers consuming the queue now (their heartbeats); null when Redis cannot be read.
    consumers: int | None
    #: ceil((waiting + running) / per_worker): the workers that would run all of it at once.
    desired_workers: int


class ScaleTotalOut(Schema):
    waiting: int
    running: int
    oldest_waiting_seconds: float
    #: For one pool of workers consuming every queue: ceil((all waiting + all running) / per_worker).
    desired_workers: int


class ScaleOut(Schema):
    #: Jobs one worker runs at once, as the figures were computed with.
    per_worker: int
    #: The rule, in words.
    rule: str
    #: Every queue by name (KEDA's metrics-api scaler: valueLocation `queues.<name>.desired_workers`).
    queues: dict[str, QueueScaleOut]
    total: ScaleTotalOut


SCALE_RULE = "desired_workers = ceil((waiting + running) / per_worker); 0 when nothing waits or runs"
SCALE_DOC = (
    "Scope `jobs:read`. What an autoscaler reads, per queue: jobs due and waiting, running, the oldest wait, the "
    "workers consuming it and the workers it wants, " + SCALE_RULE + ". KEDA's metrics-api scaler reads one value "
    "by its path (`valueLocation: queues.default.desired_workers`, `targetValue: \"1\"`); an HPA's external "
    "metric the same figure. No hysteresis here: the autoscaler's own (HPA stabilization windows, KEDA's "
    "cooldownPeriod) keeps it from flapping. `per_worker`: the workers' concurrency (default WORKER_CONCURRENCY, "
    "else the server's CPUs)."
)


@router.get("/queues/scale", response={200: ScaleOut, **errors(400, 401, 403)}, summary="The autoscaling signal per queue",
            description=SCALE_DOC, auth=READS)
def queue_scale(  # noqa: ANN201
    request: HttpRequest,
    per_worker: int | None = Query(None, ge=1, le=100_000, description="jobs one worker runs at once (its concurrency)"),
):
    every_worker = per_worker or scaling.per_worker_default()
    rows = scaling.queues(every_worker)
    waiting = sum(row["waiting"] for row in rows.values())
    running = sum(row["running"] for row in rows.values())
    total = {"waiting": waiting, "running": running,
             "oldest_waiting_seconds": max((row["oldest_waiting_seconds"] for row in rows.values()), default=0.0),
             "desired_workers": decisions.workers_wanted(waiting, running, every_worker)}
    return {"per_worker": every_worker, "rule": SCALE_RULE, "queues": rows, "total": total}


@router.get("/pauses", response={200: list[PauseOut], **errors(401, 403)}, summary="Paused queues and job types", auth=READS)
def list_pauses(request: HttpRequest):  # noqa: ANN201
    return [{"kind": kind, "name": name, "paused": True, **{k: v for k, v in p.items() if k != "held"}}
            for (kind, name), p in _pauses().items()]


def _pause(request: HttpRequest, kind: str, name: str, payload: PauseIn | None) -> dict[str, Any]:
    reason = payload.reason if payload is not None else ""
    by = getattr(request.user, "get_username", lambda: "")() or "api"
    try:
        since = pauses.pause(kind, name, reason, by)
    except pauses.UnknownTarget as exc:
        raise HttpError(404, str(exc)) from None
    return {"kind": kind, "name": name, "paused": True, "reason": reason, "by": by, "since": since}


def _resume(kind: str, name: str) -> dict[str, Any]:
    try:
        released = pauses.resume(kind, name)
    except pauses.UnknownTarget as exc:
        raise HttpError(404, str(exc)) from None
    if released is None:
        raise HttpError(409, f"{kind} {name!r} is not paused")
    return {"kind": kind, "name": name, "paused": False, "released": released}


PAUSE_DOC = ("Scope `operate`. Its jobs are not claimed until it is resumed: they wait in the database (none is "
             "lost), and GET /api/jobs/{id} says `paused` with the reason. Pausing again updates the reason. "
             "404: no job type uses the queue (or no such type).")
RESUME_DOC = ("Scope `operate`. The jobs held for the pause are published at once (`released`); a job whose queue "
              "and type are both paused waits for both. 409: it was not paused.")


@router.post("/queues/{name}/pause", response={200: PauseOut, **errors(400, 401, 403, 404)}, summary="Pause a queue",
             description=PAUSE_DOC, auth=OPERATES)
def pause_queue(request: HttpRequest, name: str = Name, payload: PauseIn | None = Body(None)):  # noqa: ANN201
    return _pause(request, "queue", name, payload)


@router.post("/queues/{name}/resume", response={200: PauseOut, **errors(400, 401, 403, 404, 409)}, summary="Resume a queue",
             description=RESUME_DOC, auth=OPERATES)
def resume_queue(request: HttpRequest, name: str = Name):  # noqa: ANN201
    return _resume("queue", name)


@router.post("/types/{name}/pause", response={200: PauseOut, **errors(400, 401, 403, 404)}, summary="Pause a job type",
             description=PAUSE_DOC, auth=OPERATES)
def pause_type(request: HttpRequest, name: str = Name, payload: PauseIn | None = Body(None)):  # noqa: ANN201
    return _pause(request, "type", name, payload)


@router.post("/types/{name}/resume", response={200: PauseOut, **errors(400, 401, 403, 404, 409)}, summary="Resume a job type",
             description=RESUME_DOC, auth=OPERATES)
def resume_type(request: HttpRequest, name: str = Name):  # noqa: ANN201
    return _resume("type", name)
