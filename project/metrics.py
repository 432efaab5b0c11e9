"""/metrics for Prometheus: the whole deployment's job counters and histograms (kept in Redis by
every process of every host), queue depths (Redis), and unfinished jobs (PostgreSQL).

- `conveyor_jobs_finished_total{type,outcome}` (succeeded, failed: an attempt failed and will be
  retried, dead, cancelled), `conveyor_lease_expired_total{type}` (rows the reaper settled),
  `conveyor_relay_resent_total{queue}` (messages the relay sent again): counters.
- `conveyor_job_run_seconds{type}` (claim to committed outcome), `conveyor_job_queue_wait_seconds{type}`
  (due time, i.e. enqueue or end of delay/backoff, to claim), `conveyor_chain_handoff_seconds{type}`
  (previous step's outcome to this step's first claim): histograms.
- `conveyor_queue_depth{queue}`: messages waiting in the queue's Redis lists (every priority).
- `conveyor_jobs{queue,type,status}` (unfinished rows) and `conveyor_jobs_running{queue,type}`.
- `conveyor_queue_consumers{queue}` (workers consuming it: their heartbeats in Redis),
  `conveyor_queue_waiting{queue}` and `conveyor_queue_oldest_waiting_seconds{queue}` (jobs due and
  waiting for a worker, the oldest one's wait, from the same one query): a queue with jobs
  waiting and no consumer is `conveyor_queue_waiting > 0 and conveyor_queue_consumers == 0`.
- `conveyor_queue_running{queue}` (jobs running, zero-filled per queue) and
  `conveyor_queue_desired_workers{queue}` (ceil((waiting + running) / WORKER_CONCURRENCY or the
  CPUs), jobs.engine.decisions.workers_wanted): what an autoscaler reads (KEDA's prometheus
  scaler: `sum(conveyor_queue_waiting{queue="q"}) + sum(conveyor_queue_running{queue="q"})` over
  a threshold of the workers' concurrency; docs/deployment.md).

The counters and histograms are read from Redis hashes (jobs/engine/telemetry.py) and rendered with
custom collectors: correct across gunicorn workers, pool processes and hosts, at the cost of one
Redis round trip per scrape. The one query counts unfinished rows only (pending, running, failed),
which the partial indexes `job_runnable_idx` and `job_lease_idx` cover, so a table holding
millions of finished jobs costs a scrape nothing more.

Guarded by METRICS_TOKEN (`Authorization: Bearer <token>`): always in production, where an unset
token makes /metrics answer 401 saying so; in development only when the token is set. A token that
is set has 32+ characters (the settings refuse a shorter one at boot). Prometheus scrapes over
plain HTTP: /metrics is exempt from production's redirect to https (SECURE_REDIRECT_EXEMPT).
"""
from __future__ import annotations

import hmac
import logging
from typing import Iterator

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from jobs.engine import decisions, scaling, telemetry
from jobs.engine.publish import queue_depths
from jobs.engine.registry import queues as job_queues

log = logging.getLogger("conveyor.metrics")


def unfinished_counts():  # noqa: ANN201 - a QuerySet of (queue, type, status, count)
    """The scrape's one query: unfinished rows grouped by queue, type and status.

    Written as the two partial indexes' own predicates (runnable: pending or failed; running),
    so PostgreSQL reads them (a BitmapOr) rather than an index or a scan over every row."""
    from django.db.models import Count, DurationField, ExpressionWrapper, Min, Q
    from django.db.models.functions import Greatest, Now

    from jobs.models import RUNNABLE, Job, Status

    unfinished = Q(status__in=RUNNABLE) | Q(status=Status.RUNNING)
    # In the same pass: the rows due and waiting for a worker (not held by a limit or a pause),
    # and how long the oldest of them has waited, by PostgreSQL's clock.
    due = Q(status__in=RUNNABLE, cancel_requested=False, run_after__lte=Now(), held="")
    return (
        Job.objects.filter(unfinished).order_by().values_list("queue", "type", "status")
        .annotate(n=Count("id"), due=Count("id", filter=due),
                  waited=ExpressionWrapper(Now() - Min(Greatest("run_after", "created_at"), filter=due),
                                           output_field=DurationField()))
    )


class JobCollector(Collector):
    """Unfinished rows from PostgreSQL (one index-backed query)."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        jobs = GaugeMetricFamily(
            "conveyor_jobs", "Unfinished jobs (pending, running, failed) by queue, type and status", labels=["queue", "type", "status"]
        )
        running = GaugeMetricFamily("conveyor_jobs_running", "Jobs running now, by queue and type", labels=["queue", "type"])
        waiting: dict[str, int] = dict.fromkeys(job_queues(), 0)
        oldest: dict[str, float] = dict.fromkeys(job_queues(), 0.0)
        running_per_queue: dict[str, int] = dict.fromkeys(job_queues(), 0)
        for queue, type_name, status, count, due, waited in unfinished_counts():
            jobs.add_metric([queue, type_name, status], count)
            if status == "running":
                running.add_metric([queue, type_name], count)
                running_per_queue[queue] = running_per_queue.get(queue, 0) + count
            waiting[queue] = waiting.get(queue, 0) + due
            if waited is not None:
                oldest[queue] = max(oldest.get(queue, 0.0), waited.total_seconds())
        yield jobs
        yield running
        waiting_family = GaugeMetricFamily(
            "conveyor_queue_waiting", "Jobs due and waiting for a worker (not held by a limit or a pause)", labels=["queue"]
        )
        oldest_family = GaugeMetricFamily(
            "conveyor_queue_oldest_waiting_seconds", "Seconds the oldest job due and waiting for a worker has waited (0: none)",
            labels=["queue"],
        )
        # Per queue and zero-filled (a PromQL sum over conveyor_jobs_running is empty, not 0, when
        # nothing runs: an autoscaler's query would fail rather than scale down).
        running_family = GaugeMetricFamily("conveyor_queue_running", "Jobs running now", labels=["queue"])
        per_worker = scaling.per_worker_default()
        desired_family = GaugeMetricFamily(
            "conveyor_queue_desired_workers",
            f"Workers the queue wants: ceil((waiting + running) / {per_worker}), {per_worker} jobs at once per worker "
            "(WORKER_CONCURRENCY, else the CPUs)", labels=["queue"],
        )
        for queue in sorted(set(waiting) | set(running_per_queue)):
            waiting_family.add_metric([queue], waiting.get(queue, 0))
            oldest_family.add_metric([queue], oldest.get(queue, 0.0))
            running_family.add_metric([queue], running_per_queue.get(queue, 0))
            desired_family.add_metric(
                [queue], decisions.workers_wanted(waiting.get(queue, 0), running_per_queue.get(queue, 0), per_worker)
            )
        yield waiting_family
        yield oldest_family
        yield running_family
        yield desired_family


COUNTER_HELP = {
    "jobs_finished": "Job attempts that ended, by type and outcome (succeeded; failed: retried later; dead; cancelled)",
    "lease_expired": "Running jobs whose lease expired (their worker was lost), settled by the reaper",
    "relay_resent": "Messages the relay published again for rows published long ago and still unclaimed",
}
HISTOGRAM_HELP = {
    "job_run_seconds": "Seconds from a job's claim to its committed outcome",
    "job_queue_wait_seconds": "Seconds from when a job was due (enqueued, or its delay or backoff ended) to its claim",
    "chain_handoff_seconds": "Seconds from a chain step's outcome to the next step's first claim (labelled by the next step's type)",
}


def histogram_buckets(fields: dict[tuple[str, ...], float]) -> Iterator[tuple[list[str], list[tuple[str, float]], float]]:
    """(labels, cumulative buckets ending with +Inf, sum) per label set, from the stored
    per-bucket counts (a bucket bound no longer in BUCKETS is folded into the next one up)."""
    series: dict[tuple[str, ...], dict[str, float]] = {}
    for key, value in fields.items():
        series.setdefault(key[:-1], {})[key[-1]] = value
    for labels, stored in sorted(series.items()):
        per_bound = [(float(le), n) for le, n in stored.items() if le not in ("sum", "count")]
        buckets = [(repr(bound), sum(n for le, n in per_bound if le <= bound)) for bound in telemetry.BUCKETS]
        buckets.append(("+Inf", stored.get("count", sum(n for _, n in per_bound))))
        yield list(labels), buckets, stored.get("sum", 0.0)


class RedisCollector(Collector):
    """Counters and histograms of every process and host, and queue depths, from Redis."""

    def collect(self) -> Iterator[CounterMetricFamily | HistogramMetricFamily | GaugeMetricFamily]:
        from jobs.engine.registry import queues as job_queues

        queues = job_queues()
        try:
            stored = telemetry.read()
            depths = queue_depths(queues)
        except Exception as exc:  # Redis away: the scrape says so by missing these families
            log.warning("/metrics cannot read Redis: %s", exc)
            return
        for name, labels in telemetry.COUNTERS.items():
            family = CounterMetricFamily(f"conveyor_{name}", COUNTER_HELP[name], labels=list(labels))
            for key, value in sorted(stored[name].items()):
                family.add_metric(list(key), value)
            yield family
        for name, labels in telemetry.HISTOGRAMS.items():
            family = HistogramMetricFamily(f"conveyor_{name}", HISTOGRAM_HELP[name], labels=list(labels))
            for key, buckets, total in histogram_buckets(stored[name]):
                family.add_metric(key, buckets, total)
            yield family
        depth = GaugeMetricFamily("conveyor_queue_depth", "Messages waiting in the queue's Redis lists (every priority)", labels=["queue"])
        for queue, length in depths.items():
            depth.add_metric([queue], length)
        yield depth


class ConsumerCollector(Collector):
    """Workers consuming each queue now: their heartbeats in Redis (jobs.engine.consumers, one
    round trip, cached a few seconds). A queue with jobs waiting and no consumer is the alarm to
    page on: `conveyor_queue_waiting > 0 and conveyor_queue_consumers == 0`."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from jobs.engine import consumers

        counts = consumers.per_queue(job_queues())
        family = GaugeMetricFamily("conveyor_queue_consumers", "Workers consuming the queue now (their heartbeats)", labels=["queue"])
        for queue, count in counts.items():
            if count is not None:  # Redis away: the family says so by missing its queues
                family.add_metric([queue], count)
        yield family


registry = CollectorRegistry()
registry.register(JobCollector())
registry.register(RedisCollector())
registry.register(ConsumerCollector())


def _refusal(request: HttpRequest) -> JsonResponse | None:
    """A 401 answer unless the request may scrape; None when it may."""
    expected = settings.METRICS_TOKEN
    if not expected:
        if not settings.PRODUCTION:
            return None  # development without a token: open
        detail = "METRICS_TOKEN is not set: in production /metrics answers only with Authorization: Bearer <METRICS_TOKEN>"
    else:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), expected.encode()):
            return None
        detail = "missing or invalid token (Authorization: Bearer <METRICS_TOKEN>)"
    response = JsonResponse({"detail": detail}, status=401)
    response["WWW-Authenticate"] = 'Bearer realm="metrics"'
    return response


def view(request: HttpRequest) -> HttpResponse:
    refusal = _refusal(request)
    if refusal is not None:
        return refusal
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
