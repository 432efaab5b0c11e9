"""Log lines: plain text or one JSON object per line (LOG_FORMAT=json), with the running job's ids.

`JobContext` (a filter on the console handler) adds the job being run by this thread, if any
(jobs.engine.telemetry.current, set by the runner around each run), to every record: `job`, `chain`,
`job_type`, `queue`, `attempt`, `worker` as attributes, and `job_context` as the text
` [job=12 chain=3 type=examples.echo queue=default attempt=2 worker=...]` for plain lines.

When tracing is on (project/tracing.py), `trace_id` and `span_id` of the current span (the run's,
a request's) are added too, beside the job fields of a JSON line.
"""
from __future__ import annotations

import datetime as dt
import json
import logging

from jobs.engine import tracing
from jobs.engine.telemetry import current

FIELDS = ("job", "chain", "job_type", "queue", "attempt", "worker")
#: The current span's, when tracing is on (jobs.engine.tracing.ids).
TRACE_FIELDS = ("trace_id", "span_id")


class JobContext(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if tracing.on and (ids := tracing.ids()) is not None:
            record.trace_id, record.span_id = ids
        run = current.get()
        if run is None:
            record.job_context = ""
            return True
        for name, value in zip(FIELDS, (run.job, run.chain, run.type, run.queue, run.attempt, run.worker)):
            setattr(record, name, value)
        record.job_context = (
            f" [job={run.job} chain={'-' if run.chain is None else run.chain} type={run.type} queue={run.queue}"
            f" attempt={run.attempt} worker={run.worker}]"
        )
        return True


class RefusalsWithoutTraceback(logging.Filter):
    """On `django.request`: a 403 from PermissionDenied (a staff user without the add permission
    opening a model's add page) is logged as Django logs it, one WARNING line, but without the
    traceback Django attaches (`exc_info`): a refusal is an answer, not a failure, and a traceback
    in the server's log reads as a crash to whoever watches it."""

    def filter(self, record: logging.LogRecord) -> bool:
        from django.core.exceptions import PermissionDenied

        if record.exc_info and isinstance(record.exc_info[1], PermissionDenied):
            record.exc_info, record.exc_text = None, None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, exception (the
    traceback's text, when there is one), process, and the running job's fields."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": dt.datetime.fromtimestamp(record.created, dt.timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        for name in FIELDS + TRACE_FIELDS:
            if hasattr(record, name):
                line[name] = getattr(record, name)
        return json.dumps(line, default=str, ensure_ascii=False)
