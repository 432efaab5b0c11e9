"""Which workers consume which queues: a heartbeat each worker's main process writes to Redis.

Every BEAT_SECONDS, a thread of each Celery worker's main process (started on worker_ready,
jobs.interfaces.signals) writes `conveyor:consumer:<node>` = its queues, expiring after
TTL_SECONDS, and adds the node to the set `conveyor:consumers`; a worker that shuts down deletes
its key at once, one that is killed expires. Readers (`per_queue`) read the set and the keys in
one pipelined round trip, cached CACHE_SECONDS per process, and drop the nodes whose key expired.

Why a heartbeat rather than Celery's control (`inspect().active_queues()`): the broadcast waits
out its whole timeout for replies (it cannot know how many workers there are), every reader pays
that wait, and a worker of the solo or threads pool busy with a long job does not answer in time,
so it would show as "no consumer" while it consumes. A key in Redis costs one write per worker
every few seconds and one read per scrape; the expiry is Redis's clock, so hosts whose clocks
disagree agree on who is alive. What it says is "a worker process that consumes the queue is
alive", within TTL_SECONDS of a kill.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from typing import Callable, Iterable

from jobs.engine import telemetry

log = logging.getLogger("conveyor.consumers")

PREFIX = "conveyor:consumer:"
NODES = "conveyor:consumers"
BEAT_SECONDS = 5.0
TTL_SECONDS = 15
#: How long a reader keeps what it read (the operations page every 2 s, /metrics, each why).
CACHE_SECONDS = 2.0


def beat(node: str, queues: Iterable[str], client=None) -> None:  # noqa: ANN001 - a redis.Redis
    """Say that `node` consumes `queues` now (for TTL_SECONDS)."""
    redis = client or telemetry.client()
    pipe = redis.pipeline(transaction=False)
    pipe.set(PREFIX + node, json.dumps({"queues": sorted(set(queues)), "pid": os.getpid()}), ex=TTL_SECONDS)
    pipe.sadd(NODES, node)
    pipe.execute()


def gone(node: str, client=None) -> None:  # noqa: ANN001
    """`node` stopped consuming (a worker shutting down)."""
    redis = client or telemetry.client()
    pipe = redis.pipeline(transaction=False)
    pipe.delete(PREFIX + node)
    pipe.srem(NODES, node)
    pipe.execute()
    clear_cache()


def read(client=None) -> dict[str, list[str]]:  # noqa: ANN001
    """{node: its queues} of the workers alive now. Raises when Redis is away."""
    redis = client or telemetry.client()
    nodes = sorted(n.decode() if isinstance(n, bytes) else n for n in redis.smembers(NODES))
    if not nodes:
        return {}
    values = redis.mget([PREFIX + node for node in nodes])
    alive, expired = {}, []
    for node, value in zip(nodes, values):
        if value is None:
            expired.append(node)
        else:
            alive[node] = json.loads(value)["queues"]
    if expired:
        redis.srem(NODES, *expired)
    return alive


_cache: tuple[float, dict[str, list[str]] | None] | None = None


def clear_cache() -> None:
    global _cache
    _cache = None


def nodes() -> dict[str, list[str]] | None:
    """`read`, cached CACHE_SECONDS; None when Redis cannot be read (cached too: a page asking
    for several jobs' whys waits out Redis's timeout once, not once per job)."""
    global _cache
    now = time.monotonic()
    if _cache is not None and now - _cache[0] < CACHE_SECONDS:
        return _cache[1]
    try:
        alive: dict[str, list[str]] | None = read()
    except Exception as exc:  # Redis away: unknown, not "none"
        log.warning("cannot read the workers' heartbeats: %s", exc)
        alive = None
    _cache = (now, alive)
    return alive


def per_queue(queues: Iterable[str]) -> dict[str, int | None]:
    """Workers consuming each queue now (None for every queue when Redis cannot be read)."""
    alive = nodes()
    queues = list(queues)
    if alive is None:
        return dict.fromkeys(queues)
    return {queue: sum(queue in consumed for consumed in alive.values()) for queue in queues}


# --- The heartbeat thread of a worker's main process -------------------------------------------------


class Heartbeat:
    def __init__(self, node: str, queues: Callable[[], Iterable[str]]) -> None:
        self.node, self.queues = node, queues
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="conveyor-consumer-heartbeat", daemon=True)

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def _loop(self) -> None:
        while True:
            try:
                beat(self.node, self.queues())
            except Exception as exc:  # Redis away: readers will say "unknown" or expire us
                log.warning("consumer heartbeat failed: %s", exc)
            if self._stop.wait(BEAT_SECONDS):
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2.0)  # no beat after the removal
        try:
            gone(self.node)
        except Exception as exc:
            log.warning("could not remove the consumer heartbeat of %s: %s", self.node, exc)


_heartbeat: Heartbeat | None = None


def start(node: str, queues: Callable[[], Iterable[str]]) -> None:
    global _heartbeat
    _heartbeat = Heartbeat(node, queues).start()


def stop() -> None:
    global _heartbeat
    if _heartbeat is not None:
        _heartbeat.stop()
        _heartbeat = None
