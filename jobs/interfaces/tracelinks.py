"""Links from the operations page and a job's admin page to its trace in a trace viewer.

A job's row stores the OpenTelemetry context it was created in (jobs.engine.tracing); its trace
id, put into TRACE_VIEWER_URL's `{trace_id}`, is the page of the request, chain and attempts it
belongs to. No viewer URL set, or a row created while tracing was off: no link.
"""
from __future__ import annotations

from typing import Any, Iterable

from django.conf import settings

from jobs.engine import tracing


def url(stored: Any) -> str | None:
    """The viewer's page of the trace a stored context belongs to, or None."""
    template = getattr(settings, "TRACE_VIEWER_URL", "")
    if not template:
        return None
    trace_id = tracing.trace_id_of(stored)
    return template.replace("{trace_id}", trace_id) if trace_id else None


def annotate(jobs: Iterable[Any]) -> None:
    """Set `trace_url` on each job row (read from its `trace_context`, already loaded)."""
    if not getattr(settings, "TRACE_VIEWER_URL", ""):
        for job in jobs:
            job.trace_url = None
        return
    for job in jobs:
        job.trace_url = url(job.trace_context)
