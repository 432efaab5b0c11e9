"""The demo slice's job types: images.resize -> notifications.send-email, and diagnostics."""
from __future__ import annotations

import io
import os
import time

from typing import Annotated, Literal

from django.conf import settings
from pydantic import BaseModel, Field

from jobs import Context, Step, job_type
from jobs.engine.registry import Backoff
from jobs.engine.schedules import Schedule


#: An address as the schema can state it (a local part, @, a dotted domain): what is accepted is
#: what the OpenAPI document says, so no schema-valid request is refused.
Address = Annotated[str, Field(pattern=r"^[^@\x00-\x20]+@[^@\x00-\x20]+\.[^@\x00-\x20]+$", max_length=254)]


class Resize(BaseModel):
    width: int = Field(256, ge=1, le=4096)
    height: int = Field(256, ge=1, le=4096)
    #: Size of the generated source image (the CPU work grows with it).
    source: int = Field(1024, ge=16, le=4096)
    #: Where to send the "your image is ready" e-mail; none: the chain ends here.
    email: Address | None = None


@job_type("images.resize", queue="images", input=Resize, retries=3, timeout=120, public=True)
def resize(ctx: Context, data: Resize) -> dict:
    """CPU work: render a gradient image and resize it with Lanczos, then e-mail about it."""
    from PIL import Image

    source = Image.linear_gradient("L").resize((data.source, data.source)).convert("RGB")
    ctx.progress(50, "source rendered")
    result = source.resize((data.width, data.height), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    result.save(buffer, format="PNG")
    if data.email:
        ctx.continue_with(
            "notifications.send-email",
            {"to": data.email, "subject": f"Your {data.width}x{data.height} image is ready", "body": f"{buffer.tell()} bytes"},
        )
    return {"width": data.width, "height": data.height, "bytes": buffer.tell()}


class Email(BaseModel):
    to: Address
    subject: str = Field(min_length=1, max_length=200)
    body: str = ""


@job_type("notifications.send-email", queue="notifications", input=Email, retries=5, timeout=30, public=True)
def send_email(ctx: Context, data: Email) -> dict:
    """I/O work: write the e-mail to the outbox table once per idempotency key."""
    from examples.models import OutboxEmail

    email, created = OutboxEmail.objects.get_or_create(
        idempotency_key=ctx.idempotency_key,
        defaults={"to": data.to, "subject": data.subject, "body": data.body},
    )
    return {"outbox_id": email.pk, "sent": created}


@job_type("examples.echo", queue="default", timeout=30, public=True)
def echo(ctx: Context, data: dict) -> dict:
    """Returns its input: the cheapest job, for benchmarks."""
    return data


class Sleep(BaseModel):
    seconds: float = Field(ge=0, le=3000)


@job_type("examples.sleep", queue="default", input=Sleep, timeout=3000, public=True)
def sleep(ctx: Context, data: Sleep) -> dict:
    """Sleeps in small steps, stopping early when cancelled."""
    deadline = time.monotonic() + data.seconds
    while time.monotonic() < deadline:
        if ctx.cancelled:
            return {"slept": data.seconds - (deadline - time.monotonic()), "cancelled": True}
        time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
    return {"slept": data.seconds}


class Hang(BaseModel):
    seconds: float = Field(ge=0, le=600)
    #: One blocking call (which no exception interrupts) instead of short steps.
    block: bool = False


@job_type("examples.hang", queue="default", input=Hang, retries=0, timeout=2, public=True)
def hang(ctx: Context, data: Hang) -> dict:
    """Runs past its 2-second time limit, ignoring cancellation: for time-limit checks."""
    from examples.models import Effect

    Effect.objects.create(job_id=ctx.job_id, attempt=ctx.attempt, worker_pid=os.getpid())
    if data.block:
        time.sleep(data.seconds)
    else:
        deadline = time.monotonic() + data.seconds
        while time.monotonic() < deadline:
            time.sleep(0.05)
    return {"hung": data.seconds}


class Burn(BaseModel):
    #: CPU seconds of this thread to spend (thread time, not wall time: a starved run takes longer).
    cpu_seconds: float = Field(ge=0, le=10)


@job_type("examples.burn", queue="default", input=Burn, timeout=60)
def burn(ctx: Context, data: Burn) -> dict:
    """Burns CPU in pure Python, holding the GIL, for `cpu_seconds` of its own thread's CPU time,
    and says under which scheduling policy it ran: for the checks of WORKER_CPU_POLICY."""
    policy = os.sched_getscheduler(0) if hasattr(os, "sched_getscheduler") else None
    until = time.thread_time() + data.cpu_seconds
    total = 0
    while time.thread_time() < until:
        for i in range(10_000):
            total += i * i % 7
    return {"pid": os.getpid(), "policy": policy, "idle": policy == getattr(os, "SCHED_IDLE", -1)}


class Fail(BaseModel):
    times: int = Field(ge=0, le=100)


@job_type("examples.fail", queue="default", input=Fail, retries=3, backoff=Backoff(base=0.2, cap=2.0), timeout=30, public=True)
def fail(ctx: Context, data: Fail) -> dict:
    """Fails its first `times` attempts, then succeeds: for retry and dead-letter checks."""
    if ctx.attempt <= data.times:
        raise RuntimeError(f"examples.fail: failing attempt {ctx.attempt} of the first {data.times}")
    return {"attempt": ctx.attempt}


class Count(BaseModel):
    sleep: float = Field(0, ge=0, le=60)


@job_type("examples.count", queue="default", input=Count, timeout=120, public=True)
def count(ctx: Context, data: Count) -> dict:
    """Records one side effect per run (a row), so tests can count runs per job."""
    from examples.models import Effect

    if data.sleep:
        time.sleep(data.sleep)
    Effect.objects.create(job_id=ctx.job_id, attempt=ctx.attempt, worker_pid=os.getpid())
    return {"attempt": ctx.attempt}


class Member(BaseModel):
    n: int = Field(ge=0, le=1_000_000)
    sleep: float = Field(0, ge=0, le=60)
    #: Fail every attempt (it ends dead after its 3 attempts, a second or so).
    fail: bool = False


@job_type("examples.member", queue="default", input=Member, retries=2, backoff=Backoff(base=0.2, cap=1.0), timeout=90, public=True)
@job_type("examples.member-images", queue="images", input=Member, retries=2, backoff=Backoff(base=0.2, cap=1.0), timeout=90, public=True)
def member(ctx: Context, data: Member) -> dict:
    """A group's member: sleeps, records one side effect per run that finishes, returns its n."""
    from examples.models import Effect

    if data.sleep:
        time.sleep(data.sleep)
    if data.fail:
        raise RuntimeError(f"examples.member {data.n}: failing as asked")
    Effect.objects.create(job_id=ctx.job_id, attempt=ctx.attempt, worker_pid=os.getpid())
    return {"n": data.n}


class FanOut(BaseModel):
    count: int = Field(ge=1, le=500)
    sleep: float = Field(0, ge=0, le=60)
    #: The members (by n) that fail every attempt.
    fail: list[int] = Field(default_factory=list, max_length=500)
    on_failure: Literal["fail", "collect"] = "fail"


@job_type("examples.fan-out", queue="default", input=FanOut, timeout=30, public=True, continues=True)
def fan_out(ctx: Context, data: FanOut) -> dict:
    """Fans out `count` examples.member jobs, alternately on the default and images queues; the
    chain's next step gets their outputs in order (ctx.results)."""
    ctx.fan_out(
        [
            Step("examples.member" if n % 2 == 0 else "examples.member-images", {"n": n, "sleep": data.sleep, "fail": n in data.fail})
            for n in range(data.count)
        ],
        on_failure=data.on_failure,
    )
    return {"fanned_out": data.count}


@job_type("examples.gather", queue="default", timeout=30, public=True)
def gather(ctx: Context, data: dict) -> dict:
    """Returns what the group before it handed on (ctx.results), beside its own input."""
    return {"input": data, "results": ctx.results}


@job_type("examples.ping", queue="notifications", timeout=30, public=True)
def ping(ctx: Context, data: dict) -> dict:
    """A no-op on the notifications queue: the second step of handoff benchmarks."""
    return {"pong": True}


@job_type(
    "examples.nightly-report",
    queue="default",
    timeout=120,
    schedule=Schedule(cron="0 2 * * *", timezone="Europe/Paris", description="Yesterday's job counts, at 02:00 Paris time"),
)
def nightly_report(ctx: Context, data: dict) -> dict:
    """Count yesterday's jobs by type and status (the report a shop reads in the morning)."""
    import datetime as dt

    from django.db.models import Count
    from django.utils import timezone

    from jobs.models import Job

    since = timezone.now() - dt.timedelta(days=1)
    rows = Job.objects.filter(created_at__gte=since).values("type", "status").annotate(n=Count("id")).order_by("type", "status")
    return {"since": since.isoformat(), "counts": [dict(row) for row in rows]}


# --- Limits across every worker and host (jobs.engine.limits) ---------------------------------------------


class Pause(BaseModel):
    seconds: float = Field(0, ge=0, le=60)


def _pause(data: Pause) -> dict:
    time.sleep(data.seconds)
    return {"paused": data.seconds}


@job_type("examples.rate-limited", queue="default", input=Pause, timeout=60, rate_limit="10/s")
def rate_limited(ctx: Context, data: Pause) -> dict:
    """At most 10 starts a second, over every worker: a partner API's quota."""
    return _pause(data)


@job_type("examples.one-per-key", queue="default", input=Pause, timeout=60, concurrency_per_key=1, public=True)
def one_per_key(ctx: Context, data: Pause) -> dict:
    """One running job per `limit_key` (a customer's account, say), over every worker."""
    return _pause(data)


@job_type("examples.two-at-once", queue="default", input=Pause, timeout=60, concurrency=2)
def two_at_once(ctx: Context, data: Pause) -> dict:
    """At most two running at once, over every worker: a scarce licence or connection."""
    return _pause(data)


# The handoff benchmark's two steps (bench.jobs' handoff phase), declared only in the benchmark's
# processes (CONVEYOR_BENCH, set by bench/common.py): each says, on the worker's clock, when its
# handler ended / began, as bare Celery's bench.hop_a / bench.hop_b do (bench/bare.py), so both
# sides are measured from one handler to the next.
if settings.BENCH:

    @job_type("bench.hop-a", queue="default", timeout=30)
    def hop_a(ctx: Context, data: dict) -> dict:
        """Step 1: its last act is to read the clock."""
        return {"ended": time.time()}

    @job_type("bench.hop-b", queue="notifications", timeout=30)
    def hop_b(ctx: Context, data: dict) -> dict:
        """Step 2: its first act is to read the clock."""
        return {"started": time.time()}
