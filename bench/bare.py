"""A bare Celery app for the benchmarks' baseline: no Django, no database, no Conveyor.

Two baselines share it. Its worker's configuration is handed over by the benchmark as JSON in
BENCH_BARE_CONFIG: either Conveyor's own Celery configuration (broker URL and transport options,
JSON, acks_late, prefetch 1, no result backend), so both sides run with the same broker settings,
or only the broker URL: Celery's defaults, what a user would run instead. The benchmark publishes
through `app` (configured like Conveyor) or `defaults_app` (Celery's defaults). Its worker is
started as

    python -m celery -A bench.bare worker --queues Q --pool prefork --concurrency 2 ...

Tasks record what the benchmark measures in Redis (REDIS_URL): a completion counter, and for the
handoff the time.time() at which the first task ended and the second one started.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any

from celery import Celery

CONFIG_ENV = "BENCH_BARE_CONFIG"

# Queues of the bare side, apart from Conveyor's (`default`, `notifications`).
QUEUE = "bench-bare"
QUEUE_DEFAULTS = "bench-bare-defaults"
QUEUE_A = "bench-bare-a"
QUEUE_B = "bench-bare-b"

# Redis keys the tasks write and the benchmark reads.
DONE_KEY = "bench:bare:done"
HOPS_DONE_KEY = "bench:bare:hops-done"
A_END_KEY = "bench:bare:a-end"
B_START_KEY = "bench:bare:b-start"
KEYS = (DONE_KEY, HOPS_DONE_KEY, A_END_KEY, B_START_KEY)

app = Celery("bench-bare", set_as_current=False)


def configure(config: dict[str, Any]) -> None:
    app.conf.update(config)


if os.environ.get(CONFIG_ENV):
    configure(json.loads(os.environ[CONFIG_ENV]))

_client: Any = None
_client_pid = 0


def redis_client() -> Any:
    """One Redis client per process (the prefork pool forks after import)."""
    global _client, _client_pid
    if _client is None or _client_pid != os.getpid():
        import redis

        _client = redis.Redis.from_url(os.environ["REDIS_URL"])
        _client_pid = os.getpid()
    return _client


def _noop() -> None:
    """The no-op job; the INCR is how the benchmark sees it done."""
    redis_client().incr(DONE_KEY)


noop = app.task(name="bench.noop", ignore_result=True)(_noop)

# The publishing side of the Celery-defaults baseline (its worker is this module's `app`, started
# with only the broker URL in BENCH_BARE_CONFIG).
defaults_app = Celery("bench-bare-defaults", set_as_current=False)
noop_defaults = defaults_app.task(name="bench.noop", ignore_result=True)(_noop)


@app.task(name="bench.hop_a", ignore_result=True)
def hop_a(index: int) -> None:
    """Step 1 of a two-queue hand-off: ends, then publishes step 2 on the other queue."""
    ended = time.time()
    hop_b.apply_async((index,), queue=QUEUE_B, routing_key=QUEUE_B)
    redis_client().hset(A_END_KEY, str(index), repr(ended))


@app.task(name="bench.hop_b", ignore_result=True)
def hop_b(index: int) -> None:
    """Step 2: records when it started."""
    started = time.time()
    client = redis_client()
    client.hset(B_START_KEY, str(index), repr(started))
    client.incr(HOPS_DONE_KEY)


# The scale table's tasks (bench/scale.py): the same work as Conveyor's scale.cpu and scale.io.
@app.task(name="bench.burn", ignore_result=True)
def burn(iterations: int) -> None:
    total = 0
    for i in range(iterations):
        total += i * i % 7
    redis_client().incr(DONE_KEY)


@app.task(name="bench.nap", ignore_result=True)
def nap(seconds: float) -> None:
    time.sleep(seconds)
    redis_client().incr(DONE_KEY)
