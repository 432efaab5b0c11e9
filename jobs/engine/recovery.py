"""Recovery: the relay, the reaper and hand-back, and the loop every worker runs them in.

- The relay publishes due rows never published (delays, retries after backoff, reaped rows) and
  re-sends rows published long ago and still unclaimed (their message may be lost).
- The reaper settles running rows whose lease expired: their worker died (a job of a type with a
  concurrency limit frees its slot then: jobs.engine.limits.release).
- Hand-back returns the running rows of a worker known to be gone (the supervisor killed its
  whole process tree) at once, without waiting for the leases: the attempt given back when the
  supervisor stopped it on purpose (a drain), counted when it crashed.

Each statement claims rows with SKIP LOCKED, so every worker of every machine runs the loop: a
deployment with no beat still recovers lost messages and dead workers' jobs.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Iterable

from django.conf import settings
from django.db import connections, transaction

from jobs.engine import decisions, limits, registry, store, telemetry, tracing
from jobs.engine.ending import How, ended
from jobs.engine.publish import publish, queue_depths

log = logging.getLogger("conveyor.recovery")


def relay(batch: int = 500, stale_scan: bool = True) -> int:
    """Publish due rows that were never published, and stale ones whose message may be lost
    (`stale_scan` False: only the due ones, the recovery loop's passes in between)."""
    stale = int(settings.CONVEYOR["RELAY_STALE_SECONDS"])
    messages = store.mark_due(batch)
    resent = []
    if stale_scan:
        try:
            busy = sorted(backlogged(registry.queues()))
        except Exception as exc:  # Redis away: publishing fails too; try again next pass
            log.warning("relay cannot read queue lengths: %s", exc)
            busy = []
        resent = store.mark_stale(stale, busy, max(stale, int(settings.CONVEYOR["RELAY_BACKLOG_SECONDS"])), batch)
    messages += resent
    if messages:
        publish(messages)
        telemetry.resent(resent)
    try:
        limits.sweep_due()  # rows waiting for a concurrency slot that no job's end released
    except Exception as exc:  # logged; the next pass's sweep tries again
        log.warning("relay: the limits' sweep failed: %s", exc)
        limits.reset_sweep()
    return len(messages)


def backlogged(queues: Iterable[str]) -> set[str]:
    """The queues whose Redis lists still hold messages (over every priority list).

    The relay re-sends a "stale" row of such a queue only after RELAY_BACKLOG_SECONDS (not
    RELAY_STALE_SECONDS): its message is most likely still waiting behind the others, and
    re-sending a whole backlog every RELAY_STALE_SECONDS would double the work; a message really
    lost there still goes out again within that bound, however long the queue stays busy.
    """
    return {queue for queue, depth in queue_depths(queues).items() if depth}


def reap(batch: int = 100) -> int:
    """Return running rows whose lease expired (their worker died) to pending, dead or cancelled.

    Each row in its own transaction: a row whose settlement fails (a hook raising, say) is
    logged and left for the next pass, and the others are reaped.
    """
    reaped = []
    for job_id in store.expired(batch):
        lost: list[store.LostAttempt] = []
        try:
            with transaction.atomic():
                row = store.reap(job_id)
                if row is not None:
                    lost = store.lost_attempts([row.id]) if tracing.on else []
                    ended([row], How.REAPED)
        except Exception:
            log.exception("could not reap job %s; trying again next pass", job_id)
            continue
        if row is not None:
            log.warning("reaped job %s: lease expired, now %s", row.id, row.status)
            reaped.append(row)
            _trace_lost(lost, {row.id: row.status}, "reaper", "lease expired: its worker died or froze")
    return len(reaped)


def hand_back(node: str, instance: str = "", drained: bool = False) -> int:
    """Return `node`'s running jobs to pending at once; a job whose cancel was asked ends
    cancelled (its chain and its key's next delivery with it).

    `drained`: the supervisor stopped the worker on purpose (a shutdown or restart asked for, its
    grace period exceeded): the interrupted attempt is not counted. Otherwise the worker's process
    died by itself (a crash, the OOM killer, a handler's os._exit), perhaps because of the job: the
    attempt counts, and a job on its last attempt ends dead ("worker process died while running
    this job (N times)"), so a job that kills its worker cannot crash-loop it forever.

    Only for a worker whose processes are all dead: none of them can record an outcome later.
    `instance` narrows it to one start of the node (the supervisor's token for that start).
    """
    if not node:
        return 0
    lost: list[store.LostAttempt] = []
    try:
        with transaction.atomic():
            rows = store.hand_back(node, instance, drained)
            if rows and tracing.on:
                lost = store.lost_attempts([row.id for row in rows])
            ended(rows, How.HANDED_BACK)
    except Exception as exc:  # the database is away: the reaper returns them when leases expire
        log.warning("could not hand back the jobs of %s (%s); their leases will expire", node, exc)
        for conn in connections.all():
            conn.close()
        return 0
    _trace_lost(lost, {row.id: row.status for row in rows}, "hand-back",
                "handed back: its worker was stopped" if drained else "its worker process died")
    if rows:
        log.warning("handed back %d running job(s) of %s (%s)", len(rows), node,
                    "drained: attempts given back" if drained else "its process died: attempts counted")
    return len(rows)


def _trace_lost(lost: list[store.LostAttempt], statuses: dict[int, str], by: str, why: str) -> None:
    """The attempts a dead worker never ended, as `conveyor.run` spans in their rows' traces
    (from the claim to now), so the trace shows the lost attempt beside its re-run."""
    end = tracing.now_ns()
    for attempt in lost:
        started = int(attempt.started_at.timestamp() * 1e9) if attempt.started_at is not None else end
        tracing.past("conveyor.run", started, end, {
            "conveyor.job.id": attempt.id, "conveyor.job.type": attempt.type, "conveyor.queue": attempt.queue,
            "conveyor.attempt": attempt.attempt, "conveyor.worker": attempt.worker,
            "conveyor.outcome": "lost", "conveyor.recorded_by": by, "conveyor.status_after": statuses.get(attempt.id),
        }, tracing.parent(attempt.trace_context), error=why)


def recover_once(slow: bool = True) -> tuple[int, int]:
    """One pass of the reaper then the relay (the relay publishes what the reaper returned).

    Each runs even when the other fails: a reaper stuck on one row must not stop delayed jobs,
    retries and lost messages from being published. Returns (-1 for a part that failed).
    `slow` False: the relay's due rows only, no reaper and no stale scan (decisions.slow_scans_due).
    """
    results = []
    parts = (reap, relay) if slow else (relay_due,)
    for part in parts:
        try:
            results.append(part())
        except Exception as exc:  # PostgreSQL or Redis away: try again next pass
            log.warning("recovery: %s failed: %s", part.__name__, exc)
            for conn in connections.all():
                conn.close()
            results.append(-1)
    return (results[0], results[1]) if slow else (0, results[0])


def relay_due() -> int:
    """The relay without its stale scan: a pass of the recovery loop between slow ones."""
    return relay(stale_scan=False)


# --- The loop: a thread in every worker's main process -------------------------------------------

_stop = threading.Event()


def loop(stop: threading.Event, interval: float) -> None:
    last: float | None = None
    while not stop.wait(interval):
        now = time.monotonic()
        slow = decisions.slow_scans_due(
            last, now, interval, float(settings.CONVEYOR["LEASE_SECONDS"]), float(settings.CONVEYOR["RELAY_STALE_SECONDS"])
        )
        if slow:
            last = now
        recover_once(slow)


def start() -> None:
    _stop.clear()
    interval = float(settings.CONVEYOR["RECOVERY_INTERVAL"])
    threading.Thread(target=loop, args=(_stop, interval), name="conveyor-recovery", daemon=True).start()
    log.info("relay and reaper running every %.2fs", interval)


def stop() -> None:
    _stop.set()
