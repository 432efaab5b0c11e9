"""The demo slice's subscribers: what a shop does when an order is placed."""
from __future__ import annotations

import time

from django.conf import settings
from jobs import Context, enqueue
from jobs.engine.registry import Backoff
from subscribers import EventData, subscriber


@subscriber("order.placed", name="shop.send-confirmation", queue="notifications", retries=5)
def send_confirmation(ctx: Context, event: EventData) -> dict:
    """E-mail the customer through the notifications queue (one e-mail per delivery)."""
    from examples.models import OutboxEmail

    email, created = OutboxEmail.objects.get_or_create(
        idempotency_key=ctx.idempotency_key,
        defaults={
            "to": event.data.get("email", "customer@example.com"),
            "subject": f"Order {event.data.get('order', event.key)} confirmed",
        },
    )
    return {"outbox_id": email.pk, "sent": created}


@subscriber("order.placed", name="shop.process-images", queue="default")
def process_images(ctx: Context, event: EventData) -> dict:
    """Start the images.resize -> notifications.send-email chain, once per delivery."""
    job = enqueue(
        "images.resize",
        {"width": 128, "height": 128, "source": 256, "email": event.data.get("email", "customer@example.com")},
        idempotency_key=f"{ctx.idempotency_key}:resize",
    )
    return {"resize_job": job.pk}


@subscriber("order.*", name="shop.audit", queue="default")
def audit(ctx: Context, event: EventData) -> dict:
    """Keep an audit row of every order event."""
    from examples.models import AuditEntry

    entry, _ = AuditEntry.objects.get_or_create(event_id=event.id, defaults={"name": event.name, "key": event.key})
    return {"audit_id": entry.pk}


# --- Diagnostics: for tests and benchmarks ----------------------------------------------------


@subscriber("diagnostics.*", name="diagnostics.record", queue="default", backoff=Backoff(0.2, 1.0))
def record(ctx: Context, event: EventData) -> dict:
    """Record the arrival (subscriber, event, key, sequence); sleeps `sleep` seconds first."""
    from examples.models import Arrival

    if event.data.get("sleep"):
        time.sleep(float(event.data["sleep"]))
    Arrival.objects.create(
        subscriber="diagnostics.record", event_id=event.id, key=event.key, sequence=event.data.get("seq"), attempt=ctx.attempt
    )
    return {"recorded": event.id}


@subscriber("diagnostics.flaky", name="diagnostics.flaky", queue="default", retries=2, backoff=Backoff(0.2, 1.0))
def flaky(ctx: Context, event: EventData) -> dict:
    """Fails its first `fail` attempts (data), then records its arrival."""
    from examples.models import Arrival

    if ctx.attempt <= int(event.data.get("fail", 0)):
        raise RuntimeError(f"diagnostics.flaky: failing attempt {ctx.attempt}")
    Arrival.objects.create(subscriber="diagnostics.flaky", event_id=event.id, key=event.key, attempt=ctx.attempt)
    return {"recorded": event.id}


def _noop(ctx: Context, event: EventData) -> None:
    return None


# Three no-op subscribers of bench.fanout: the event benchmark's fan-out, declared only in the
# benchmark's processes (CONVEYOR_BENCH, set by bench/common.py): not in the development catalog.
if settings.BENCH:
    for _n in (1, 2, 3):
        subscriber("bench.fanout", name=f"bench.fanout-{_n}", queue="default")(_noop)
