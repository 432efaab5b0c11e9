"""The chaos run's job types (tests only: installed by CONVEYOR_TEST_APPS=hosts).

Every run writes its side effect into `chaos_effect` itself, one row per (job, effect), and a
second write of the same effect increments `times` instead of vanishing:

- `run:<attempt>`, from the handler: the same attempt run twice (a duplicate message that ran)
  shows as times > 1; a job re-run after a fault (a new attempt: at least once) shows as a second
  `run:` row, counted apart;
- `done`, from the job type's on_finish hook, inside the transaction that records the outcome: a
  job whose outcome was recorded twice, or by an attempt that no longer held the row, shows as
  times > 1.

`chaos.cpu` (queue `images`: a prefork host) burns `work` loop iterations; `chaos.io` (queue
`notifications`: a threads host) sleeps `sleep` seconds. A chain cpu -> io -> cpu crosses both
worker hosts twice. `chaos.tick` is beat's: every 2 s.

`chaos.atomic` (queue `images`) and `chaos.atomic_io` (queue `notifications`) are atomic types
(`atomic=True`): the handler writes its effect `atomic` first, with no attempt in its name, then
works (burns, sleeps) with its transaction open, so that a fault meets it after its write and
before its commit. The write commits with the outcome or not at all: however often a job's runs
are repeated after faults, `atomic` is written once (times > 1 would be a write that survived a
run whose outcome did not). Their twins `chaos.plain` and `chaos.plain_io` run the same handler
without `atomic` (effect `plain`): at least once, a run repeated after its write writes again.
"""
from __future__ import annotations

import os
import socket
import time

from django.db import connection
from pydantic import BaseModel, Field

from jobs import Context
from jobs.engine.registry import Backoff, JobType, add
from jobs.engine.schedules import Schedule

HOST = os.environ.get("CHAOS_HOST") or socket.gethostname()

RECORD = """
INSERT INTO chaos_effect (job_id, effect, times, host, key, seq, at)
VALUES (%s, %s, 1, %s, %s, %s, clock_timestamp())
ON CONFLICT (job_id, effect) DO UPDATE SET times = chaos_effect.times + 1
"""


def record(job_id: int, effect: str, key: str | None = None, seq: int | None = None) -> None:
    """One side effect, in the caller's transaction (autocommit in a handler)."""
    with connection.cursor() as cursor:
        cursor.execute(RECORD, [job_id, effect, HOST, key, seq])


def burn(iterations: int) -> int:
    """CPU work that takes the same time on any worker: a fixed number of loop iterations."""
    total = 0
    for i in range(iterations):
        total += i * i % 7
    return total


class Work(BaseModel):
    #: CPU: loop iterations (about 1 ms per 20,000 on this machine).
    work: int = Field(0, ge=0, le=10_000_000)
    #: I/O: seconds asleep.
    sleep: float = Field(0, ge=0, le=10)


def _run(ctx: Context, data: Work) -> dict:
    if data.work:
        burn(data.work)
    if data.sleep:
        time.sleep(data.sleep)
    record(ctx.job_id, f"run:{ctx.attempt}")
    return {"host": HOST, "attempt": ctx.attempt}


def _done(job_id: int, status: str) -> None:
    """on_finish: in the outcome's transaction (succeeded, dead or cancelled)."""
    record(job_id, "done", key=status)


def cpu(ctx: Context, data: Work) -> dict:
    return _run(ctx, data)


def io(ctx: Context, data: Work) -> dict:
    return _run(ctx, data)


def write_first(ctx: Context, data: Work) -> dict:
    """Its write first, then its work: an atomic type's in the transaction of its outcome (effect
    `atomic`), its non-atomic twin's committed at once (effect `plain`)."""
    record(ctx.job_id, "atomic" if ctx.type.startswith("chaos.atomic") else "plain", seq=ctx.attempt)
    if data.work:
        burn(data.work)
    if data.sleep:
        time.sleep(data.sleep)
    return {"host": HOST, "attempt": ctx.attempt}


def tick(ctx: Context, data: dict) -> dict:
    record(ctx.job_id, f"run:{ctx.attempt}")
    return {"host": HOST}


# Declared through registry.add (not @job_type) for the on_finish hook. Many retries with a short
# backoff: a worker killed again and again must not turn a job dead in a chaos run.
_retry = {"retries": 20, "backoff": Backoff(base=0.2, cap=2.0)}
add(JobType(name="chaos.cpu", handler=cpu, queue="images", input=Work, timeout=60, on_finish=_done, public=True, **_retry))
add(JobType(name="chaos.io", handler=io, queue="notifications", input=Work, timeout=60, on_finish=_done, public=True, **_retry))
for _name, _queue in (("atomic", "images"), ("atomic_io", "notifications")):
    add(JobType(name=f"chaos.{_name}", handler=write_first, queue=_queue, input=Work, timeout=60, on_finish=_done,
                public=True, atomic=True, **_retry))
    add(JobType(name=f"chaos.{_name.replace('atomic', 'plain')}", handler=write_first, queue=_queue, input=Work, timeout=60,
                on_finish=_done, public=True, **_retry))
add(JobType(name="chaos.tick", handler=tick, queue="notifications", timeout=30, on_finish=_done,
            schedule=Schedule(every=2, name="chaos.tick", job="chaos.tick", description="the chaos run's beat probe"), **_retry))


# The scale table's jobs (bench/scale.py): the same work as bare Celery's bench.burn and
# bench.nap (bench/bare.py), nothing recorded, no hook: only the platform's own cost is added.
class Burn(BaseModel):
    work: int = Field(ge=0, le=10_000_000)


class Nap(BaseModel):
    seconds: float = Field(ge=0, le=10)


def scale_cpu(ctx: Context, data: Burn) -> None:
    burn(data.work)


def scale_io(ctx: Context, data: Nap) -> None:
    time.sleep(data.seconds)


add(JobType(name="scale.cpu", handler=scale_cpu, queue="images", input=Burn, timeout=60))
add(JobType(name="scale.io", handler=scale_io, queue="images", input=Nap, timeout=60))
