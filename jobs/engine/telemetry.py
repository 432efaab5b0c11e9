"""Metrics and log context of job runs, recorded where every process of every host can add to them.

Counters and histograms live in Redis, one hash per metric (`conveyor:metrics:<name>`): each
field is a JSON list of label values (a histogram's ends with the bucket's upper bound, "sum" or
"count"), incremented with HINCRBY / HINCRBYFLOAT. Every gunicorn worker, Celery pool process and
host adds to the same hashes, so whichever server Prometheus scrapes renders the whole
deployment's counts (project/metrics.py); prometheus_client's multiprocess mode would only see
one host's files. Increments are sent after the outcome's commit, in one pipelined round trip;
a run's increments are sent at once when the process sent none in the last FLUSH_SECONDS, else
merged with the next ones and sent by a timer at most FLUSH_SECONDS later (and at the process's
exit), so a busy worker makes a few round trips a second, not one per job. A failure is logged
(at most once a minute per process), never raised: metrics must not cost a job its outcome. A Redis that
restarts empty resets the counters, which Prometheus' rate() reads as a counter reset.

The run's identity (job, chain, type, queue, attempt, worker) is also kept in a contextvar while
the runner runs it (`running`), for the log filter of project/logs.py.

Nothing here imports models or the registry: the runner, recovery and the settings' logging
configuration import this module.
"""
from __future__ import annotations

import atexit
import contextvars
import functools
import json
import logging
import os
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterable, Iterator, NamedTuple

log = logging.getLogger("conveyor.telemetry")

PREFIX = "conveyor:metrics:"
#: Counters: name -> label names.
COUNTERS = {
    "jobs_finished": ("type", "outcome"),
    "lease_expired": ("type",),
    "relay_resent": ("queue",),
}
#: Histograms (seconds): name -> label names.
HISTOGRAMS = {
    "job_run_seconds": ("type",),
    "job_queue_wait_seconds": ("type",),
    "chain_handoff_seconds": ("type",),
}
#: Upper bounds (seconds) shared by every histogram; +Inf is implied.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
#: What the runner's outcome strings count as (a "lost" or "skipped" run finished nothing).
OUTCOMES = {"succeeded": "succeeded", "failed": "failed", "dead": "dead", "cancelled": "cancelled"}


class JobRun(NamedTuple):
    """Who is running: what the log filter adds to each line written during the run."""

    job: int
    chain: int | None
    type: str
    queue: str
    attempt: int
    worker: str


current: contextvars.ContextVar[JobRun | None] = contextvars.ContextVar("conveyor_job_run", default=None)


# --- Recording -----------------------------------------------------------------------------------


def bucket(seconds: float) -> str:
    """The field of the smallest bucket holding `seconds` (stored per bucket, summed at render)."""
    for bound in BUCKETS:
        if seconds <= bound:
            return repr(bound)
    return "+Inf"


@functools.lru_cache(maxsize=4096)
def _key(name: str, labels: tuple[str, ...]) -> tuple[str, str]:
    """The hash and field of a metric's label values: written once per label set, not once per
    increment (a run's increments used to encode eight JSON lists)."""
    return PREFIX + name, json.dumps(list(labels))


class Batch:
    """Increments gathered for one pipelined round trip."""

    def __init__(self) -> None:
        self.ints: dict[tuple[str, str], int] = {}
        self.floats: dict[tuple[str, str], float] = {}

    def count(self, name: str, *labels: str, n: int = 1) -> Batch:
        key = _key(name, labels)
        self.ints[key] = self.ints.get(key, 0) + n
        return self

    def observe(self, name: str, seconds: float, *labels: str) -> Batch:
        seconds = max(0.0, float(seconds))
        self.count(name, *labels, bucket(seconds))
        self.count(name, *labels, "count")
        key = _key(name, (*labels, "sum"))
        self.floats[key] = self.floats.get(key, 0.0) + seconds
        return self

    def merge(self, other: Batch) -> None:
        for key, n in other.ints.items():
            self.ints[key] = self.ints.get(key, 0) + n
        for key, value in other.floats.items():
            self.floats[key] = self.floats.get(key, 0.0) + value

    def send(self) -> None:
        """One round trip; a failure is logged (rate-limited), never raised."""
        if not (self.ints or self.floats):
            return
        try:
            pipe = client().pipeline(transaction=False)
            for (key, field), n in self.ints.items():
                pipe.hincrby(key, field, n)
            for (key, field), value in self.floats.items():
                pipe.hincrbyfloat(key, field, value)
            pipe.execute()
        except Exception as exc:  # Redis away: these increments are lost, the job is not
            _warn(f"metrics not recorded (Redis): {exc}")


def ended(rows: Iterable[Any], lease_expired: bool = False) -> None:
    """Jobs that ended outside a run (an operator's cancel, a reaper's or hand-back's dead or
    cancelled row): rows with `type` and `status`. Call after their commit. `lease_expired`: the
    reaper's rows, each also counted as a lease that expired."""
    batch = Batch()
    for row in rows:
        if lease_expired:
            batch.count("lease_expired", row.type)
        if row.status in ("dead", "cancelled"):
            batch.count("jobs_finished", row.type, row.status)
    batch.send()


def reaped(rows: Iterable[Any]) -> None:
    """Rows the reaper settled (their lease expired), after their commits."""
    ended(rows, lease_expired=True)


def resent(messages: Iterable[Any]) -> None:
    """Messages the relay published again (their row was published long ago, still unclaimed)."""
    batch = Batch()
    for message in messages:
        batch.count("relay_resent", message.queue)
    batch.send()


class Run:
    def __init__(self, claimed: Any) -> None:
        self.claimed = claimed
        self.started = time.monotonic()

    def done(self, outcome: str) -> str:
        """The outcome is committed: count it, with its run time and the claim's queue wait."""
        claimed, kind = self.claimed, OUTCOMES.get(outcome)
        batch = Batch().observe("job_queue_wait_seconds", claimed.waited, claimed.type)
        if claimed.attempt == 1 and claimed.chain_index:
            # The step was inserted by the previous one's outcome (created_at = its finished_at).
            batch.observe("chain_handoff_seconds", claimed.waited, claimed.type)
        if kind is not None:
            batch.count("jobs_finished", claimed.type, kind)
            batch.observe("job_run_seconds", time.monotonic() - self.started, claimed.type)
        runs.add(batch)
        return outcome


#: A run's increments wait at most this long for the next runs' before they are sent.
FLUSH_SECONDS = 0.25


class Coalesced:
    """Runs' increments of this process, sent together: at once after a quiet FLUSH_SECONDS,
    otherwise by a timer when it has passed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending = Batch()
        self._last = 0.0
        self._timer: threading.Timer | None = None
        self._pid = 0

    def add(self, batch: Batch) -> None:
        with self._lock:
            if self._pid != os.getpid():  # forked: the parent's pending increments are its own
                self._pending, self._timer, self._last, self._pid = Batch(), None, 0.0, os.getpid()
            self._pending.merge(batch)
            wait = self._last + FLUSH_SECONDS - time.monotonic()
            if wait > 0:
                if self._timer is None:
                    self._timer = threading.Timer(wait, self.flush)
                    self._timer.daemon = True
                    self._timer.start()
                return
        self.flush()

    def flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, Batch()
            self._timer, self._last = None, time.monotonic()
            if self._pid != os.getpid():
                return
        pending.send()


runs = Coalesced()
atexit.register(runs.flush)


@contextmanager
def running(claimed: Any, worker: str) -> Iterator[Run]:
    """Around one run: its identity in the log context; `done(outcome)` records its metrics."""
    token = current.set(JobRun(claimed.id, claimed.chain_id, claimed.type, claimed.queue, claimed.attempt, worker))
    try:
        yield Run(claimed)
    finally:
        current.reset(token)


# --- Reading (the scrape) ---------------------------------------------------------------------------


def read() -> dict[str, dict[tuple[str, ...], float]]:
    """Every metric's hash, decoded: name -> {labels (and bucket/sum/count): value}. One round
    trip, raising when Redis is away."""
    names = [*COUNTERS, *HISTOGRAMS]
    pipe = client().pipeline(transaction=False)
    for name in names:
        pipe.hgetall(PREFIX + name)
    result = {}
    for name, fields in zip(names, pipe.execute()):
        result[name] = {tuple(json.loads(field)): float(value) for field, value in fields.items()}
    return result


# --- The client: one per process (redis-py's pool starts over after a fork) ------------------------

_client = None
_lock = threading.Lock()
_last_warning = 0.0


def client():  # noqa: ANN201 - a redis.Redis
    global _client
    if _client is None:
        with _lock:
            if _client is None:
                from django.conf import settings

                from project.connections import redis_client

                # Short timeouts: a Redis that hangs costs a job a second, not its worker. Any form
                # of REDIS_URL, Sentinel's included (the master is asked for again after a failover).
                _client = redis_client(settings.REDIS_URL, socket_timeout=1.0, socket_connect_timeout=1.0)
    return _client


def _warn(message: str) -> None:
    global _last_warning
    now = time.monotonic()
    if now - _last_warning > 60 or _last_warning == 0.0:
        _last_warning = now
        log.warning("%s (pid %s; said at most once a minute)", message, os.getpid())
