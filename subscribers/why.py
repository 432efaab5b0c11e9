"""Why an event's delivery waits (jobs.engine.why's source `delivery`, registered by
subscribers/apps.py): a delivery released has a job, which answers; one that waits for its key's
lane has none yet, and names the delivery (and its job) holding the lane."""
from __future__ import annotations

from jobs.engine import registry, why
from jobs.engine.decisions import Why
from subscribers.delivery import job_type
from subscribers.models import Delivery, Lane


def delivery_why(delivery_id: int) -> tuple[str, Why | None]:
    delivery = Delivery.objects.filter(pk=delivery_id).only("id", "subscriber", "key", "job_id", "released_at").first()
    if delivery is None:
        raise why.NoSuchJob(f"no delivery {delivery_id}")
    if delivery.released_at is not None:
        if delivery.job_id is None:
            return "expired", None
        return why.explain("job", delivery.job_id)
    lane = Lane.objects.filter(subscriber=delivery.subscriber, key=delivery.key).values("delivery_id", "job_id").first()
    holder = {"delivery": lane["delivery_id"] if lane else None, "job": lane["job_id"] if lane else None,
              "key": delivery.key, "subscriber": delivery.subscriber}
    name = job_type(delivery.subscriber)
    try:
        queue = registry.get(name).queue
    except registry.InvalidJob:
        queue = "default"
    return "waiting", why.lane_why(queue, name, holder)
