"""/metrics for Prometheus: job counts by queue, type and status, read from PostgreSQL."""
from __future__ import annotations

from typing import Iterator

from django.http import HttpRequest, HttpResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily


class JobCollector:
    def collect(self) -> Iterator[GaugeMetricFamily]:
        from django.db.models import Count

        from jobs.models import Job

        jobs = GaugeMetricFamily("conveyor_jobs", "Jobs by queue, type and status", labels=["queue", "type", "status"])
        rows = Job.objects.order_by().values_list("queue", "type", "status").annotate(n=Count("id"))
        for queue, type_name, status, count in rows:
            jobs.add_metric([queue, type_name, status], count)
        yield jobs


registry = CollectorRegistry()
registry.register(JobCollector())


def view(request: HttpRequest) -> HttpResponse:
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
