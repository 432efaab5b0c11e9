"""The autoscaling signal: per queue, the jobs due and waiting for a worker, the jobs running, how
long the oldest has waited, the workers consuming it, and the workers it wants
(decisions.workers_wanted: ceil((waiting + running) / per_worker)).

One query (store.queue_load, on the partial indexes of unfinished rows) and the workers'
heartbeats (consumers.per_queue, one Redis round trip, cached): read by GET /api/queues/scale (an
autoscaler: KEDA's metrics-api scaler, an HPA's external metric), by /metrics
(conveyor_queue_running, conveyor_queue_desired_workers) and by `manage.py start --autoscale`
(the supervisor reads the database directly: no server or token needed).
"""
from __future__ import annotations

import os
from typing import Any, Iterable

from django.conf import settings

from jobs.engine import consumers, decisions, registry, store


def per_worker_default() -> int:
    """Jobs one worker runs at once when the reader does not say: WORKER_CONCURRENCY, else the
    CPUs (the worker's own default, on a host like this one)."""
    return int(getattr(settings, "WORKER_CONCURRENCY", 0) or 0) or (os.cpu_count() or 1)


def queues(per_worker: int, with_consumers: bool = True) -> dict[str, dict[str, Any]]:
    """{queue: {waiting, running, oldest_waiting_seconds (0.0: none waits), consumers (None:
    Redis unreadable), desired_workers}} for every job type's queue and every queue holding an
    unfinished job, sorted by name."""
    load = store.queue_load()
    names = sorted(set(registry.queues()) | set(load))
    counts = consumers.per_queue(names) if with_consumers else dict.fromkeys(names)
    out = {}
    for name in names:
        waiting, running, oldest = load.get(name, (0, 0, None))
        out[name] = {
            "waiting": waiting, "running": running, "oldest_waiting_seconds": round(oldest or 0.0, 3),
            "consumers": counts[name], "desired_workers": decisions.workers_wanted(waiting, running, per_worker),
        }
    return out


def demand(names: Iterable[str], per_worker: int) -> tuple[int, dict[str, int]]:
    """The workers a pool consuming every queue in `names` wants (their jobs added up, then
    divided: one worker takes from any of them), and the totals it was computed from."""
    load = store.queue_load()
    wanted = set(names)
    waiting = sum(row[0] for name, row in load.items() if name in wanted)
    running = sum(row[1] for name, row in load.items() if name in wanted)
    return decisions.workers_wanted(waiting, running, per_worker), {"waiting": waiting, "running": running}
