"""The exception classes a TaskError names for attempts that ended without the task's own
exception (`TaskError.exception_class` imports them)."""
from __future__ import annotations


class WorkerLost(Exception):
    """The attempt's worker was lost: killed, its lease lapsed, or handed back by its supervisor."""


class AttemptFailed(Exception):
    """The platform failed the attempt (an output JSON cannot hold, over the size limit...)."""
