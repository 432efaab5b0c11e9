"""HTTP API for events and the subscriber catalog (mounted by project/api.py under /api/)."""
import datetime as dt
from typing import Any, Optional

from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404
from ninja import Path, Query, Router, Schema, Status
from ninja.errors import HttpError
from pydantic import ConfigDict, Field

from api import scopes
from api.auth import EMITS, READS
from api.schemas import MAX_ID, PageQuery, Strict, errors, page
from api.validation import JsonObject, Text, strict_body
from jobs.interfaces import streams
from subscribers import registry
from subscribers.bus import EVENT_NAME, emit
from subscribers.models import Delivery, Event
from subscribers.why import delivery_why

router = Router(tags=["events"])
catalog = Router(tags=["catalog"])


class EmitIn(Strict):
    name: str = Field(pattern=EVENT_NAME.pattern, description="lowercase letters, digits and . _ - (at most 200)")
    data: JsonObject = Field(default_factory=dict)
    key: Optional[Text] = Field(
        default=None, min_length=1, max_length=200, description="events of one key reach each subscriber in order"
    )


class DeliveryOut(Schema):
    id: int
    subscriber: str
    status: str
    job: Optional[int] = Field(None, alias="job_id")
    attempt: Optional[int] = None
    error: str = ""
    replays: int
    finished_at: Optional[dt.datetime] = None
    #: On GET /api/events/{id}, for a delivery not started: why it waits ({"code", "words",
    #: "details", "alarms"}; "lane" names the delivery running for its key). Null otherwise.
    why: Optional[dict[str, Any]] = None


class EventOut(Schema):
    model_config = ConfigDict(from_attributes=True)
    id: int
    name: str
    data: Any
    key: Optional[str]
    created_at: dt.datetime
    deliveries: list[DeliveryOut]


class EventPage(Schema):
    items: list[EventOut]
    #: Pass as `before` for the next page; null on the last page.
    next: int | None


class EventFilters(PageQuery):
    name: Optional[Text] = Field(None, max_length=200)
    key: Optional[Text] = Field(None, max_length=200)


@router.post(
    "",
    response={202: EventOut, **errors(400, 401, 403, 413)},
    summary="Emit an event",
    description="Scope `events:emit` (any event), or `events:emit:<name>` for the event `<name>` only: a "
    "storefront page's token. Another event's name is 403 naming the scope it needs.",
    auth=EMITS,
)
def create_event(request: HttpRequest, payload: EmitIn):  # noqa: ANN201
    payload = strict_body(request, EmitIn)
    if not scopes.may_emit(request.auth_scopes, payload.name):
        raise HttpError(
            403, f"emitting {payload.name} needs the scope {scopes.EMIT}:{payload.name} or {scopes.EMIT}; "
            f"this token has {scopes.render(request.auth_scopes)}"
        )
    event = emit(payload.name, payload.data, key=payload.key)
    return Status(202, Event.objects.prefetch_related("deliveries__job").get(pk=event.pk))


@router.get("", response={200: EventPage, **errors(400, 401, 403)}, summary="List events, newest first", auth=READS)
def list_events(request: HttpRequest, filters: Query[EventFilters]):  # noqa: ANN201
    events = Event.objects.all()
    if filters.name:
        events = events.filter(name=filters.name)
    if filters.key:
        events = events.filter(key=filters.key)
    return page(events.prefetch_related("deliveries__job"), filters)


@router.get(
    "/{int:event_id}", response={200: EventOut, **errors(400, 401, 403, 404)}, summary="An event and each delivery's status",
    auth=READS,
    description="A delivery not started says why it waits (`why`): behind its key's lane (the delivery running for the "
    "key), paused, no consumer, ...",
)
def get_event(request: HttpRequest, event_id: int = Path(..., ge=1, le=MAX_ID)):  # noqa: ANN201
    event = get_object_or_404(Event.objects.prefetch_related("deliveries__job"), pk=event_id)
    for delivery in event.deliveries.all():  # a few subscribers: a few index probes each
        if delivery.status in ("waiting", "pending", "failed"):
            answer = delivery_why(delivery.pk)[1]
            delivery.why = answer.as_dict() if answer is not None else None
    return event


# An event's stream: every delivery with its job's status (`waiting` while its key's lane holds it,
# `expired` once retention removed its job); it ends when every delivery was released and its job
# ended. No NOTIFY tells an event's end: the streams' tick does (jobs/interfaces/streams.py).
_DELIVERIES = f"""{Delivery._meta.db_table} d LEFT JOIN jobs_job j ON j.id = d.job_id WHERE d.event_id = e.id"""
EVENT_STATE_SQL = streams.poll(f"""
SELECT e.id, (SELECT string_agg(concat_ws(':', d.id, d.released_at, d.job_id, d.replays, j.status, j.attempt,
                                          j.updated_at), ',' ORDER BY d.id) FROM {_DELIVERIES}) AS fp,
       NOT EXISTS (SELECT 1 FROM {_DELIVERIES}
                    AND (d.released_at IS NULL OR j.status NOT IN {streams.FINISHED})) AS ended
  FROM {Event._meta.db_table} e WHERE e.id IN (SELECT id FROM w)""", f"""
SELECT jsonb_build_object(
         'id', e.id, 'name', e.name, 'key', e.key,
         'deliveries', COALESCE((SELECT jsonb_agg(jsonb_build_object(
             'id', d.id, 'subscriber', d.subscriber, 'job', d.job_id, 'replays', d.replays,
             'status', CASE WHEN d.released_at IS NULL THEN 'waiting' WHEN j.id IS NULL THEN 'expired' ELSE j.status END,
             'attempt', j.attempt, 'error', COALESCE(j.error, ''), 'finished_at', j.finished_at) ORDER BY d.id)
           FROM {_DELIVERIES}), '[]'::jsonb))
  FROM {Event._meta.db_table} e WHERE e.id = s.id""")
EVENT = streams.Kind("event", EVENT_STATE_SQL)


@router.get("/{int:event_id}/stream", **streams.route(
    "event", "Follow an event's deliveries live (Server-Sent Events) until every one has ended",
    "`state` events carry the event and each delivery's status, attempt and error each time one "
    "changes; `end` the last state, once every delivery's job has ended. Resume with `Last-Event-ID`. See "
    "docs/streams.md.",
))
async def stream_event(
    request: HttpRequest, event_id: int = Path(..., ge=1, le=MAX_ID), access_token: str | None = streams.ACCESS_TOKEN
) -> HttpResponse:
    return await streams.respond(request, EVENT, event_id)


class SubscriberOut(Schema):
    name: str
    #: An event name, or a pattern with `*`.
    pattern: str
    queue: str
    #: The job type that carries its deliveries (not enqueueable over HTTP).
    job_type: str


@catalog.get(
    "/subscribers", response={200: list[SubscriberOut], **errors(401, 403)}, summary="Every subscriber and the events it follows",
    auth=READS,
)
def list_subscribers(request: HttpRequest):  # noqa: ANN201
    return [
        {"name": sub.name, "pattern": sub.pattern, "queue": sub.queue, "job_type": sub.job_type}
        for sub in registry.all_subscribers()
    ]
