"""`crashing.exit`: a handler that ends its worker process at once, as a segfault or the OOM
killer would; `crashing.atomic`: an atomic handler whose first attempt writes, says so, and waits
to be SIGKILLed with its transaction open; `crashing.short-limit`: a job that returns at once under
an 8 s time limit (tests only: CONVEYOR_TEST_APPS=tests.crashing).
Declared by the app's ready(), not on import: a test process imports them and declares them only
while its test runs."""
from __future__ import annotations

import os
import time

from jobs import Context
from jobs.engine.registry import Backoff, JobType


def exit_now(ctx: Context, data: dict) -> None:
    os._exit(1)  # no exception, no outcome: the whole worker process is gone


def write_then_wait(ctx: Context, data: dict) -> dict:
    """Write one row (examples' Effect), in the run's transaction; on the first attempt, report
    progress (committed at once, on its own connection: the test's sign that the write is done)
    and wait for the test's SIGKILL, the write uncommitted."""
    from examples.models import Effect

    Effect.objects.create(job_id=ctx.job_id, attempt=ctx.attempt, worker_pid=os.getpid())
    if ctx.attempt == 1:
        ctx.progress(50, "written, not committed")
        time.sleep(25)  # the test kills the process long before
        raise RuntimeError("the test was to SIGKILL this worker")
    return {"attempt": ctx.attempt}


def returns(ctx: Context, data: dict) -> dict:
    return {"n": data.get("n")}


#: Two attempts, retried at once: a test waits for two crashes, not for a backoff.
CRASH = JobType(name="crashing.exit", handler=exit_now, queue="default", retries=1, backoff=Backoff(base=0.01, cap=0.01), timeout=30)
#: Atomic: the write commits with the outcome, or not at all.
ATOMIC = JobType(name="crashing.atomic", handler=write_then_wait, queue="default", retries=2,
                 backoff=Backoff(base=0.01, cap=0.01), timeout=30, atomic=True)
#: An 8 s time limit: a delivery keeps trying its claim for a quarter of it, 2 s (jobs.tasks.
#: claim_patience), where examples.echo's 30 s make 7.5 s: a test outlasting the patience waits less.
SHORT_LIMIT = JobType(name="crashing.short-limit", handler=returns, queue="default", timeout=8)
