"""`crashing.exit`: a handler that ends its worker process at once, as a segfault or the OOM
killer would (tests only: CONVEYOR_TEST_APPS=tests.crashing). Declared by the app's ready(), not
on import: a test process imports CRASH and declares it only while its test runs."""
from __future__ import annotations

import os

from jobs import Context
from jobs.engine.registry import Backoff, JobType


def exit_now(ctx: Context, data: dict) -> None:
    os._exit(1)  # no exception, no outcome: the whole worker process is gone


#: Two attempts, retried at once: a test waits for two crashes, not for a backoff.
CRASH = JobType(name="crashing.exit", handler=exit_now, queue="default", retries=1, backoff=Backoff(base=0.01, cap=0.01), timeout=30)
