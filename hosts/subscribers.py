"""The chaos run's subscriber: keyed `chaos.order` events, each delivery's run recorded with its
key and sequence number (`seen:<attempt>` in `chaos_effect`), so the run can check every key's
deliveries ran in the order the events were emitted."""
from __future__ import annotations

from jobs import Context
from jobs.engine.registry import Backoff
from subscribers import EventData, subscriber
from hosts.jobs import record


@subscriber("chaos.order", name="chaos.audit", queue="notifications", retries=20, backoff=Backoff(0.2, 2.0))
def audit(ctx: Context, event: EventData) -> dict:
    record(ctx.job_id, f"seen:{ctx.attempt}", key=event.key, seq=int(event.data.get("seq", 0)))
    return {"event": event.id}
