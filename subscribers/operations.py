"""The event bus's section of the admin's operations page (jobs.interfaces.operations): recent events
and their deliveries. Added to the page by subscribers/apps.py, so that jobs never imports the
event bus's models."""
from __future__ import annotations

from django.db.models import Prefetch, QuerySet

from subscribers.models import Delivery, Event


def recent_events(limit: int) -> QuerySet[Event]:
    """The last `limit` events, newest first, each with its deliveries and their jobs."""
    return Event.objects.order_by("-id")[:limit].prefetch_related(
        Prefetch("deliveries", queryset=Delivery.objects.select_related("job").order_by("id"))
    )
