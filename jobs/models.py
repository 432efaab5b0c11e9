"""Jobs and chains as rows: the row, not the Celery message, is the truth."""
from __future__ import annotations

from django.db import models
from django.db.models import Q
from django.utils import timezone


class Status(models.TextChoices):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # failed an attempt; runs again at run_after
    DEAD = "dead"  # failed its last attempt
    CANCELLED = "cancelled"


RUNNABLE = (Status.PENDING, Status.FAILED)


class Held(models.TextChoices):
    NO = "", "not held"
    RATE = "rate", "rate limit: starts at run_after"
    CONCURRENCY = "concurrency", "concurrency: waits for a running job of its type"
    KEY = "key", "concurrency per key: waits for a running job of its key"
    PAUSED = "paused", "paused: its queue or type is paused; runs when resumed"


#: Held values of a row waiting for a slot (published when a running job ends, never by due time).
WAITING_FOR_SLOT = (Held.CONCURRENCY, Held.KEY)
FINISHED = (Status.SUCCEEDED, Status.DEAD, Status.CANCELLED)


class ChainStatus(models.TextChoices):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class Chain(models.Model):
    #: The plan: [{"type": ..., "input": ...}, ...]; a group step is {"group": [{"type", "input"},
    #: ...], "on_failure": "fail" | "collect"}. A handler's continue_with and fan_out insert into it.
    steps = models.JSONField(default=list)
    status = models.CharField(max_length=16, choices=ChainStatus.choices, default=ChainStatus.RUNNING)
    created_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        indexes = [
            models.Index(fields=["status", "-id"], name="chain_status_idx"),
            # Retention: chains that ended, oldest first (jobs.interfaces.housekeeping).
            models.Index(fields=["finished_at"], name="chain_finished_idx", condition=Q(finished_at__isnull=False)),
        ]

    def __str__(self) -> str:
        if "steps" in self.get_deferred_fields():  # a page that left the plan unread (the admin's)
            return f"chain {self.pk}"
        return f"chain {self.pk}: {' -> '.join(map(step_name, self.steps))}"


def step_name(planned: dict) -> str:
    """A planned step as a reader names it: its type, or `group(a, b, ...)`."""
    if "group" in planned:
        types = [member["type"] for member in planned["group"]]
        shown = ", ".join(types[:3]) + (f", ... ({len(types)})" if len(types) > 3 else "")
        return f"group({shown})"
    return planned["type"]


class Job(models.Model):
    #: The job type's stable name (`images.resize`).
    type = models.CharField(max_length=200)
    queue = models.CharField(max_length=200)
    #: Validated against the type's schema at enqueue.
    input = models.JSONField(default=dict)
    output = models.JSONField(null=True, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    #: Attempts started so far; a claim increments it, and a completion names it.
    attempt = models.PositiveIntegerField(default=0)
    max_attempts = models.PositiveIntegerField(default=4)
    #: 0 runs first, 9 last, within a queue.
    priority = models.PositiveSmallIntegerField(default=5)
    #: Not claimed before this time: delays and retry backoff live here, not in Celery ETAs.
    run_after = models.DateTimeField(default=timezone.now)
    #: When the relay or enqueue last published a message for the row.
    published_at = models.DateTimeField(null=True, blank=True)
    #: The worker holding the lease (node name and pid), kept after the run for the admin.
    worker = models.CharField(max_length=200, blank=True, default="")
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    idempotency_key = models.CharField(max_length=255, null=True, blank=True, unique=True)
    chain = models.ForeignKey(Chain, null=True, blank=True, on_delete=models.CASCADE, related_name="jobs")
    chain_index = models.PositiveIntegerField(null=True, blank=True)
    #: Its place in its chain step's group (0, 1, ...); None for a step that is one job.
    member = models.PositiveIntegerField(null=True, blank=True)
    #: How many entries the group before this step handed on (its members' outputs, stored once
    #: for the step in `StepResult` rows keyed by this row's chain and chain_index, not copied into
    #: each row); set when the group's last member ended; None after a one-job step. The handler
    #: reads them as ctx.results, HTTP as GET /api/jobs/{id}/results.
    results_count = models.PositiveIntegerField(null=True, blank=True)
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    progress = models.PositiveSmallIntegerField(default=0)
    progress_message = models.CharField(max_length=500, blank=True, default="")
    cancel_requested = models.BooleanField(default=False)
    #: The job type's `concurrency_per_key` counts running jobs per this key (jobs.engine.limits); ''
    #: for a job of a type with limits but no key (set at its claim): only such rows are indexed
    #: among the running ones (job_running_idx), so jobs without limits pay nothing for it.
    limit_key = models.CharField(max_length=255, null=True, blank=True)
    #: The OpenTelemetry context it was created in (W3C `traceparent`, `tracestate`, `baggage`, as
    #: the propagator writes them), restored as the parent of each of its attempts' spans
    #: (jobs.engine.tracing); NULL when tracing was off. A retry is the same row: same parent.
    trace_context = models.JSONField(null=True, blank=True)
    #: Held back by its type's limits, waiting in the table with no message (jobs.engine.limits): `rate`,
    #: its start booked at run_after; `concurrency` or `key`, until a running job of its type or
    #: key ends. Empty: not held.
    held = models.CharField(max_length=16, choices=Held.choices, blank=True, default="", db_default="")
    error = models.TextField(blank=True, default="")
    #: One entry per attempt that did not succeed, oldest first (`error` is the last one's):
    #: {"attempt", "error", "worker", "started_at", "at"}, appended by the statements that end an attempt badly
    #: (store.fail, store.reap, store.hand_back). A retry keeps them: the history stays whole.
    errors = models.JSONField(default=list, db_default=[], blank=True)
    #: Runs lost with their worker process while running this job (it died by itself, was killed,
    #: or its lease lapsed): each one counted an attempt (store.hand_back after a crash, store.reap),
    #: so a job that kills its worker ends dead instead of crash-looping it.
    crashes = models.PositiveIntegerField(default=0, db_default=0)
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-id"]
        # Operating changes state (a retried job runs again, a replayed event's subscribers run
        # their side effects again): its own permission, apart from viewing. jobs.interfaces.admin.Operate.
        permissions = [("operate", "Can retry and cancel jobs and replay events")]
        indexes = [
            # The relay: runnable rows by due time.
            models.Index(fields=["run_after"], name="job_runnable_idx", condition=Q(status__in=RUNNABLE)),
            # The reaper: running rows by lease expiry.
            models.Index(fields=["lease_expires_at"], name="job_lease_idx", condition=Q(status="running")),
            # Listing and the admin's filters.
            models.Index(fields=["status", "-id"], name="job_status_idx"),
            models.Index(fields=["type", "-id"], name="job_type_idx"),
            # A group's fan-in: its members' ends, read by each member's outcome.
            models.Index(
                fields=["chain", "chain_index", "member"], name="job_member_idx", condition=Q(member__isnull=False)
            ),
            # The relay's due rows never published (delays, retries, reaped rows, booked rate slots):
            # a row waiting for a concurrency slot is not due by time, and is not in it.
            models.Index(
                fields=["run_after"],
                name="job_unpublished_idx",
                condition=Q(status__in=RUNNABLE, published_at__isnull=True, held__in=["", "rate"]),
            ),
            # The relay's stale rows (published long ago, still not claimed), oldest publish first:
            # the order the relay reads them in, so it stops at its batch. Without it the relay read
            # every due row by job_runnable_idx and sorted them, and beside a large history
            # PostgreSQL, misjudging how many rows that is (its statistics are the whole table's),
            # planned a parallel scan: 40-60 ms a pass instead of a fraction of one (issue 29,
            # bench/history.py). A delayed row never published is not in it.
            models.Index(
                fields=["published_at"], name="job_stale_idx", condition=Q(status__in=RUNNABLE, published_at__isnull=False)
            ),
            # Limits: running jobs of limited types per type and key (a claim counts them), and the
            # rows waiting for a slot, oldest first (a job's end releases the next one).
            models.Index(
                fields=["type", "limit_key"], name="job_running_idx", condition=Q(status="running", limit_key__isnull=False)
            ),
            models.Index(fields=["type", "id"], name="job_waiting_idx", condition=Q(status__in=RUNNABLE, held=Held.CONCURRENCY)),
            models.Index(
                fields=["type", "limit_key", "id"], name="job_waiting_key_idx", condition=Q(status__in=RUNNABLE, held=Held.KEY)
            ),
            # Rows whose claim found their queue or type paused (Pause), released by a resume.
            models.Index(fields=["id"], name="job_paused_idx", condition=Q(status__in=RUNNABLE, held="paused")),
            # Retention cleanup of finished rows.
            models.Index(fields=["finished_at"], name="job_finished_idx", condition=Q(finished_at__isnull=False)),
        ]

    def __str__(self) -> str:
        return f"{self.type} #{self.pk} ({self.status})"

    @property
    def duration(self) -> float | None:
        if self.started_at and self.finished_at:
            return (self.finished_at - self.started_at).total_seconds()
        return None


class StepResult(models.Model):
    """One entry of what a group handed on to the step after it: member `member`'s output (in a
    group that collects failures, {"error", "status", "job"} for a member that ended badly).

    Written once per chain step, by the outcome transaction of the group's last member (copied
    from the members' rows inside PostgreSQL, jobs.engine.store.hand_on), and read by every job of step
    `step` (each member of a group after a group): N entries for N members, not N per job."""

    pk = models.CompositePrimaryKey("chain", "step", "member")
    chain = models.ForeignKey(Chain, on_delete=models.CASCADE, related_name="+", db_index=False)
    #: The index of the step that receives them (the group's index + 1).
    step = models.PositiveIntegerField()
    member = models.PositiveIntegerField()
    value = models.JSONField(null=True)

    def __str__(self) -> str:
        return f"chain {self.chain_id} step {self.step} result {self.member}"


class RateSlot(models.Model):
    """A rate-limited job type's clocks (GCRA's theoretical arrival times), moved by its claims
    with PostgreSQL's clock (jobs.engine.limits, jobs.engine.store.rate_clocks)."""

    type = models.CharField(max_length=200, primary_key=True)
    #: The next slot a claim books: one interval after the last one booked (or now, if later).
    next_at = models.DateTimeField()
    #: The earliest next start, counting the starts made: a booked row claimed so late that it
    #: would start in a burst is booked again instead.
    started_next = models.DateTimeField()

    def __str__(self) -> str:
        return f"{self.type}: next start at {self.next_at}"


class PauseKind(models.TextChoices):
    QUEUE = "queue"
    TYPE = "type"


class Pause(models.Model):
    """A paused queue or job type (jobs.engine.pauses): its jobs are not claimed while the row
    exists. Read by every claim (an index probe of a table of a few rows); a claim that finds its
    job paused holds the row (`held = 'paused'`, no message), and the resume publishes those."""

    kind = models.CharField(max_length=8, choices=PauseKind.choices)
    name = models.CharField(max_length=200)
    reason = models.TextField(blank=True, default="")
    #: Who paused it (a user name, a token's name, or "cli").
    paused_by = models.CharField(max_length=200, blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["kind", "name"]
        constraints = [models.UniqueConstraint(fields=["kind", "name"], name="one_pause_per_queue_or_type")]

    def __str__(self) -> str:
        return f"{self.kind} {self.name} paused" + (f": {self.reason}" if self.reason else "")


class ScheduleDeclaration(models.Model):
    """What the code declared for a schedule when it was last synced (see jobs.engine.schedules)."""

    name = models.CharField(max_length=200, unique=True)
    fingerprint = models.CharField(max_length=64)
    task = models.OneToOneField(
        "django_celery_beat.PeriodicTask", null=True, on_delete=models.SET_NULL, related_name="conveyor_declaration"
    )

    def __str__(self) -> str:
        return self.name
