"""HTTP API for events (mounted by api.root under /api/events)."""
import datetime as dt
from typing import Any, Optional

from django.http import HttpRequest
from django.shortcuts import get_object_or_404
from ninja import Query, Router, Schema, Status
from ninja.pagination import LimitOffsetPagination, paginate
from pydantic import ConfigDict, Field

from api.schemas import ERRORS, Strict
from subscribers.bus import emit
from subscribers.models import Event

router = Router(tags=["events"])


class EmitIn(Strict):
    name: str = Field(min_length=1, max_length=200)
    data: dict[str, Any] = Field(default_factory=dict)
    key: Optional[str] = Field(default=None, min_length=1, max_length=200)


class DeliveryOut(Schema):
    id: int
    subscriber: str
    status: str
    job: Optional[int] = Field(None, alias="job_id")
    attempt: Optional[int] = None
    error: str = ""
    replays: int
    finished_at: Optional[dt.datetime] = None


class EventOut(Schema):
    model_config = ConfigDict(from_attributes=True)
    id: int
    name: str
    data: Any
    key: Optional[str]
    created_at: dt.datetime
    deliveries: list[DeliveryOut]


class EventFilters(Strict):
    name: Optional[str] = None
    key: Optional[str] = None


@router.post("", response={202: EventOut, **ERRORS}, summary="Emit an event")
def create_event(request: HttpRequest, payload: EmitIn):  # noqa: ANN201
    event = emit(payload.name, payload.data, key=payload.key)
    return Status(202, Event.objects.prefetch_related("deliveries__job").get(pk=event.pk))


@router.get("", response=list[EventOut], summary="List events, newest first")
@paginate(LimitOffsetPagination)
def list_events(request: HttpRequest, filters: Query[EventFilters]):  # noqa: ANN201
    events = Event.objects.all()
    if filters.name:
        events = events.filter(name=filters.name)
    if filters.key:
        events = events.filter(key=filters.key)
    return events.prefetch_related("deliveries__job")


@router.get("/{int:event_id}", response={200: EventOut, **ERRORS}, summary="An event and each delivery's status")
def get_event(request: HttpRequest, event_id: int):  # noqa: ANN201
    return get_object_or_404(Event.objects.prefetch_related("deliveries__job"), pk=event_id)
