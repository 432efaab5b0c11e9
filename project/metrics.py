"""/metrics for Prometheus: unfinished jobs by queue, type and status, read from PostgreSQL.

Cheap to scrape: only the unfinished rows are counted (pending, running, failed), which the
partial indexes `job_runnable_idx` and `job_lease_idx` cover, so a table holding millions of
finished jobs costs a scrape nothing more. Finished jobs are not counted here.

Guarded by METRICS_TOKEN (`Authorization: Bearer <token>`): always in production, where an unset
token makes /metrics answer 401 saying so; in development only when the token is set.
"""
from __future__ import annotations

import hmac
from typing import Iterator

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily


def unfinished_counts():  # noqa: ANN201 - a QuerySet of (queue, type, status, count)
    """The scrape's one query: unfinished rows grouped by queue, type and status.

    Written as the two partial indexes' own predicates (runnable: pending or failed; running),
    so PostgreSQL reads them (a BitmapOr) rather than an index or a scan over every row."""
    from django.db.models import Count, Q

    from jobs.models import RUNNABLE, Job, Status

    unfinished = Q(status__in=RUNNABLE) | Q(status=Status.RUNNING)
    return Job.objects.filter(unfinished).order_by().values_list("queue", "type", "status").annotate(n=Count("id"))


class JobCollector:
    def collect(self) -> Iterator[GaugeMetricFamily]:
        jobs = GaugeMetricFamily(
            "conveyor_jobs", "Unfinished jobs (pending, running, failed) by queue, type and status", labels=["queue", "type", "status"]
        )
        for queue, type_name, status, count in unfinished_counts():
            jobs.add_metric([queue, type_name, status], count)
        yield jobs


registry = CollectorRegistry()
registry.register(JobCollector())


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
