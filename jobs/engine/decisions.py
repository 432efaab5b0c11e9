"""The engine's decisions, as pure functions over plain data: no database, no Redis, no clock.

The store says *how* a row changes; what an end or a retry does to a chain, how long a retry
waits and which rate slot a claim gets are decided here, where a unit test can call them with
plain values (tests/unit/test_decisions.py). Their callers: jobs.engine.ending (a job's end),
jobs.engine.chains (a group's fan-in), jobs.engine.store.retry (a retry's chain), jobs.engine.limits (rate slots),
jobs.engine.registry.Backoff (backoff).
"""
from __future__ import annotations

import datetime as dt
import enum
import random
from typing import Any, Iterable, NamedTuple, Protocol

# Plain strings, as the rows hold them (jobs.models.Status / ChainStatus), so that this module
# imports nothing of Django.
SUCCEEDED, DEAD, CANCELLED = "succeeded", "dead", "cancelled"
CHAIN_SUCCEEDED, CHAIN_FAILED, CHAIN_CANCELLED = "succeeded", "failed", "cancelled"


# --- A job's end and its chain ------------------------------------------------------------------


def is_last_attempt(attempt: int, max_attempts: int, permanent: bool = False) -> bool:
    """Whether a failed attempt is the job's last (it ends dead): out of attempts, or a failure
    no retry can change (jobs.Permanent). The store's statement says the same (store.LAST)."""
    return permanent or attempt >= max_attempts


def ends_chain(status: str) -> bool:
    """Whether a job's end, other than a success, ends (or counts in) its chain: dead or
    cancelled; a failed attempt with a retry left, or a row back to pending, does not."""
    return status in (DEAD, CANCELLED)


def chain_status_after(job_status: str) -> str:
    """The status a chain ends with when one of its jobs ended without success."""
    return CHAIN_FAILED if job_status == DEAD else CHAIN_CANCELLED


def spliced(steps: list[dict[str, Any]], index: int, continuations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The plan with a handler's continuations inserted right after its own step `index`."""
    return [*steps[: index + 1], *continuations, *steps[index + 1 :]]


# --- A group's fan-in ---------------------------------------------------------------------------


class MemberEnd(Protocol):
    id: int
    member: int
    status: str
    error: str


class GroupEnd(enum.Enum):
    """What the last member's end does to its group's chain."""

    RELEASE = "release"  # the next step goes (with the failures' entries, when it collects)
    FAIL = "fail"  # the chain ends failed
    CANCEL = "cancel"  # the chain ends cancelled


class GroupDecision(NamedTuple):
    action: GroupEnd
    #: For RELEASE: the entries of the members that did not succeed, by member.
    failures: dict[int, dict[str, Any]]


def counts_in_group(on_failure: str) -> bool:
    """Whether a group's member that ended badly (dead, cancelled) counts toward its group's
    fan-in like a success ("collect"), rather than ending its chain at once ("fail")."""
    return on_failure == "collect"


def group_end(ends: Iterable[MemberEnd], on_failure: str) -> GroupDecision:
    """Every member of a group has ended (`ends`): release the next step, or end the chain.

    A group that fails on failure ("fail") ends its chain failed when a member is dead, cancelled
    when only cancelled ones did not succeed; a group that collects ("collect") releases the next
    step, each bad member's place holding {"error", "status", "job"} instead of an output."""
    bad = [end for end in ends if end.status != SUCCEEDED]
    if bad and not counts_in_group(on_failure):
        dead = any(end.status == DEAD for end in bad)
        return GroupDecision(GroupEnd.FAIL if dead else GroupEnd.CANCEL, {})
    failures = {end.member: {"error": last_line(end.error), "status": end.status, "job": end.id} for end in bad}
    return GroupDecision(GroupEnd.RELEASE, failures)


def last_line(error: str) -> str:
    """A traceback's last line (the exception and its message)."""
    lines = [line for line in (error or "").strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


# --- An atomic run (JobType.atomic) -------------------------------------------------------------


class AtomicEnd(str, enum.Enum):
    """What an atomic run's transaction does once its handler has returned."""

    COMMIT = "commit"  # its writes and its success, together
    FAIL = "fail"  # roll its writes back, then record a failed attempt (its output cannot be stored)
    LOST = "lost"  # roll its writes back, record nothing: the row is no longer this attempt's
    CANCEL = "cancel"  # roll its writes back, then end it cancelled (a cancel asked while it ran)


def atomic_end(output_error: str, recorded: str) -> AtomicEnd:
    """After the handler returned: an output that cannot be stored fails the attempt (its writes
    rolled back, as a raising handler's are); otherwise the success's fenced statement decides by
    the status it `recorded`: none ("", the lease lapsed, the row reaped, handed back or claimed
    again) rolls the writes back, so that only the attempt holding the row commits anything;
    "cancelled" (a cancel was asked while it ran) rolls them back too, and the job ends cancelled
    with no effect; "succeeded" commits."""
    if output_error:
        return AtomicEnd.FAIL
    if not recorded:
        return AtomicEnd.LOST
    return AtomicEnd.CANCEL if recorded == CANCELLED else AtomicEnd.COMMIT


def transaction_bound_ms(timeout: float, grace: float) -> int:
    """How long PostgreSQL lets an atomic run's transaction wait, in milliseconds: on one
    statement (statement_timeout) or idle between two (idle_in_transaction_session_timeout). The
    type's timeout plus the hard limit's grace: PostgreSQL itself ends a transaction that its
    runner could not (a worker frozen, or cut off the network with its transaction open) soon
    after the runner would have, so a lost run holds no lock and holds vacuum back no longer."""
    return max(1000, int((timeout + grace) * 1000))


# --- A retry ------------------------------------------------------------------------------------


def hands_off_here(*, queue: str, consumed: frozenset[str] | set[str], one_job: bool, due: bool, limited: bool,
                   runner_keeps_limits: bool, steps_so_far: int, max_steps: int, monitored: bool = False) -> bool:
    """Whether a worker that just succeeded a chain step claims the next step itself, in the
    outcome's transaction, and runs it next (jobs.engine.handoff), instead of sending its message.

    Only a next step that is one job (a group's members go to their queue: several workers run
    them side by side), due now, of a type without limits (its claim is the limits'), on a queue
    this worker consumes; only where the runner keeps the time limits (a message with a Celery
    time limit would have it run out during the next step); at most `max_steps` steps in a
    row, after which the worker goes back to its queue; and not while the worker sends task events
    (`monitored`: Flower watching), where each step is a task of its own for the monitor to show."""
    return (one_job and due and not limited and queue in consumed and runner_keeps_limits
            and steps_so_far < max_steps and not monitored)


def continues_in_one_statement(*, in_chain: bool, member: bool, continuations: bool, hook: bool, holds_slots: bool,
                               traced: bool, publishing_early: bool) -> bool:
    """Whether a run's success may be recorded with its chain's next step in one statement
    (jobs.engine.continuing): a chain's step of one job (not a group's member), whose outcome does
    nothing but continue its chain: no continuation to splice into the plan, no on_finish hook to
    run, no limit slot to release, no trace to write (spans and the rows' trace context are the
    general path's), inside a success that publishes early (the message goes while its COMMIT is
    in flight). Whether the plan's next step is one the statement inserts is the statement's."""
    return (in_chain and not member and not continuations and not hook and not holds_slots and not traced
            and publishing_early)


#: The first key of the two-key advisory locks (a space of their own: waiters and limits use the
#: one-key form) that an outcome's transaction holds on each job it inserts and publishes before
#: its commit (jobs.engine.early): a message that arrives first waits on it, not on a timer.
EARLY_LOCK_SPACE = 0x636F6E76  # "conv"


def early_lock_key(job_id: int) -> tuple[int, int]:
    """The two-key advisory lock of a job published before its row committed (jobs.engine.early):
    (EARLY_LOCK_SPACE, the id folded into an int4). Two ids that share a key only make one
    claim wait for the other's outcome to end: harmless."""
    return EARLY_LOCK_SPACE, (job_id % 2_147_483_647) - 1_073_741_823


def unstarted_status(chain_status: str) -> str:
    """What a chain's reader calls a planned step (or group member) that has no job yet: waiting
    while its chain runs; once the chain has ended (failed or cancelled before it) it never will
    run: not reached. A retry that reopens the chain makes it waiting again."""
    return "waiting" if chain_status == "running" else "not reached"


def retry_reopens_chain(chain_id: int | None, member: int | None, next_step_released: bool) -> bool:
    """Whether an operator's retry of a job reopens its chain: yes for a chain's job, unless it is
    a member of a group that has already handed its results on (one that collects failures): the
    chain went on without waiting for it, and its new run changes nothing there."""
    return chain_id is not None and not (member is not None and next_step_released)


# --- Recovery's scans -----------------------------------------------------------------------------


def slow_scans_due(last: float | None, now: float, interval: float, lease: float, stale: float) -> bool:
    """Whether this pass of the recovery loop runs the reaper and the relay's stale scan (the relay's
    due rows are read every pass): every tenth of the shortest of the lease and the stale age, and
    never more often than the loop (`interval`). A lease or a stale message is found at most a
    tenth later, and the scans cost a tenth as often: they walk every index entry of finished rows
    that vacuum has not removed yet, which a long transaction keeps (issue 29: 35-42 ms a scan,
    twice a second per worker, five minutes into a held transaction beside 10M rows). `last`:
    when they last ran (None: never), on the same monotonic clock as `now`."""
    return last is None or now - last >= max(interval, min(lease, stale) / 10)


# --- Backoff ------------------------------------------------------------------------------------


def backoff(attempt: int, base: float, cap: float, jitter: float | None = None) -> float:
    """Seconds before attempt `attempt + 1`: base * 2**(attempt-1), capped, times a jitter in
    0.5..1.0 (`jitter`: that factor, for a test; random otherwise)."""
    raw = min(cap, base * (2 ** max(0, attempt - 1)))
    return raw * (random.uniform(0.5, 1.0) if jitter is None else jitter)


# --- Rate slots ---------------------------------------------------------------------------------


class RateSlot(NamedTuple):
    #: None: start now; otherwise the slot the row is booked on.
    slot: dt.datetime | None
    #: The type's clocks after this claim: the next free slot, the earliest next start.
    booked: dt.datetime
    started: dt.datetime


def rate_slot(booked: dt.datetime, started: dt.datetime, now: dt.datetime, interval: float,
              burst: float, holds_slot: bool) -> RateSlot:
    """A claim under a type's rate (jobs.engine.limits): start now, or the slot to book.

    Two GCRA clocks: `booked`, the next free slot, gives each row a slot one interval after the
    last; `started`, the earliest next start counting the starts made, keeps starts from bunching
    when booked rows are claimed late together (workers busy, messages queued behind others): a
    booked row (`holds_slot`) that would start more than `burst` seconds ahead of it is booked
    again, on the next free slot, its missed slot left unused, as a rate must."""
    step, tolerance = dt.timedelta(seconds=interval), dt.timedelta(seconds=burst)
    start = holds_slot and started <= now + tolerance  # its slot, kept for it, has come
    slot = None
    if not start:
        slot = max(booked, now, started - tolerance)
        booked = slot + step
        start = slot <= now
    if start:
        started = max(started, now) + step
    return RateSlot(None if start else slot, booked, started)


# --- Why a job waits ----------------------------------------------------------------------------

#: The reasons a runnable job has not started, as `Why.code` says them.
PAUSED, LANE, RATE, SCHEDULED, BACKOFF = "paused", "lane", "rate", "scheduled", "retry_backoff"
KEY, CONCURRENCY, LEAKED_SLOT = "key", "concurrency", "leaked_slot"
NO_CONSUMER, RELAY, QUEUE, NEXT = "no_consumer", "relay", "queue", "next"


class WaitFacts(NamedTuple):
    """What is known of a job that has not started (plain values, gathered by jobs.engine.why)."""

    status: str
    now: dt.datetime
    run_after: dt.datetime
    queue: str
    type: str
    #: Attempts started so far (a retry's backoff follows one).
    attempt: int = 0
    #: The row's `held` ("", "rate", "concurrency", "key", "paused").
    held: str = ""
    #: Its message was published (and not yet claimed).
    published: bool = True
    #: The pauses of its queue and its type: {"kind", "name", "reason", "by", "since"}.
    pauses: tuple[dict[str, Any], ...] = ()
    #: Workers consuming its queue now (None: unknown, e.g. Redis away).
    consumers: int | None = None
    #: Jobs of its queue a worker takes before it.
    ahead: int = 0
    #: For held "concurrency" / "key": the running jobs holding the slots, and how many slots the
    #: type declares now (None: the limit is no longer declared).
    holders: tuple[int, ...] = ()
    slots: int | None = None
    limit_key: str | None = None
    #: How often the limits' sweep frees slots no end released (seconds).
    sweep_seconds: float = 5.0
    #: How often the relay publishes due rows (seconds).
    relay_seconds: float = 0.5
    #: For a delivery waiting for its key's lane: the delivery and the job that hold the lane.
    lane: dict[str, Any] | None = None


class Why(NamedTuple):
    """Why a job has not started: a code (one of the constants above), plain words, details."""

    code: str
    words: str
    details: dict[str, Any]
    #: Conditions an operator must act on, whatever the reason (a queue no worker consumes).
    alarms: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "words": self.words, "details": self.details, "alarms": list(self.alarms)}


def _when(at: dt.datetime, now: dt.datetime) -> str:
    seconds = max(0.0, (at - now).total_seconds())
    return f"{at.isoformat(timespec='seconds')} (in {_duration(seconds)})"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s" if seconds >= 1 else "under a second"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _ids(ids: tuple[int, ...], limit: int = 5) -> str:
    shown = ", ".join(str(i) for i in ids[:limit])
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


def why(facts: WaitFacts) -> Why | None:
    """Why the job has not started; None when it is not waiting (running or ended).

    The first reason that holds it back, in the order a claim meets them: a pause (nothing of a
    paused queue or type is claimed), its key's lane (a delivery), a booked rate slot, a time to
    wait for (a delay, a retry's backoff), a concurrency slot (by key, then by type; a slot that
    no running job holds has leaked, and the sweep frees it), then the queue itself: no worker
    consumes it, its message not yet published, other jobs ahead of it, or next in line. A queue
    that no worker consumes is also an alarm under any other reason."""
    if facts.status not in ("pending", "failed") and facts.lane is None:
        return None
    alarms = ()
    if facts.consumers == 0:
        alarms = (f"no worker consumes queue {facts.queue!r}: its jobs will not start until one does",)
    if facts.pauses:
        pause = facts.pauses[0]
        reason = f": {pause['reason']}" if pause.get("reason") else ""
        by = f" by {pause['by']}" if pause.get("by") else ""
        return Why(PAUSED, f"paused: its {pause['kind']} {pause['name']!r} was paused{by}{reason}; it starts when resumed",
                   {"pauses": list(facts.pauses)}, alarms)
    if facts.lane is not None:
        lane = facts.lane
        if lane.get("delivery") is None:
            return Why(LANE, f"its event key's lane ({lane.get('key')!r}) is stuck: its holder ended without handing it on; "
                             "the event bus's cleanup (every minute) sets it right", dict(lane), alarms)
        return Why(LANE, f"behind its event key's lane: delivery {lane['delivery']} (job {lane['job']}) of key "
                         f"{lane['key']!r} runs first; this one follows when it ends", dict(lane), alarms)
    if facts.held == "rate" and facts.run_after > facts.now:
        return Why(RATE, f"held by its type's rate limit: its start is booked for the next slot, {_when(facts.run_after, facts.now)}",
                   {"next_slot": facts.run_after.isoformat()}, alarms)
    if facts.run_after > facts.now and facts.held not in ("concurrency", "key"):
        if facts.status == "failed":
            return Why(BACKOFF, f"retry backoff after attempt {facts.attempt} failed: it runs again at {_when(facts.run_after, facts.now)}",
                       {"until": facts.run_after.isoformat(), "attempt": facts.attempt}, alarms)
        return Why(SCHEDULED, f"scheduled for later: {_when(facts.run_after, facts.now)}",
                   {"until": facts.run_after.isoformat()}, alarms)
    if facts.held in ("concurrency", "key"):
        scope = f"key {facts.limit_key!r}" if facts.held == "key" else "type"
        details = {"holders": list(facts.holders), "slots": facts.slots}
        if facts.held == "key":
            details["key"] = facts.limit_key
        if facts.slots is None or len(facts.holders) < facts.slots:
            slots = "no limit any more" if facts.slots is None else f"{len(facts.holders)} of {facts.slots} slots in use"
            return Why(LEAKED_SLOT, f"waits for a slot of its {scope} that no running job holds ({slots}): a release was "
                                    f"missed; the limits' sweep frees it within {facts.sweep_seconds:g} s",
                       {**details, "sweep_seconds": facts.sweep_seconds}, alarms)
        code = KEY if facts.held == "key" else CONCURRENCY
        return Why(code, f"held by its {scope}'s concurrency limit ({facts.slots}): job(s) {_ids(facts.holders)} hold the slots; "
                         "the first to end releases it", details, alarms)
    if facts.consumers == 0:
        return Why(NO_CONSUMER, f"no worker consumes its queue {facts.queue!r}: start a worker for it "
                                f"(manage.py start --queues {facts.queue})", {"queue": facts.queue}, alarms)
    if facts.held == "paused":  # its pause is gone: the resume (or the next one's sweep) publishes it
        return Why(RELAY, "its pause was lifted: the resume publishes it now", {"queue": facts.queue}, alarms)
    if not facts.published:
        return Why(RELAY, f"due, its message not yet published: the relay sends it within {facts.relay_seconds:g} s",
                   {"queue": facts.queue}, alarms)
    if facts.ahead > 0:
        more = "+" if facts.ahead >= 10_000 else ""
        return Why(QUEUE, f"behind {facts.ahead}{more} job(s) of its queue {facts.queue!r}: the workers take them first",
                   {"queue": facts.queue, "ahead": facts.ahead, "consumers": facts.consumers}, alarms)
    return Why(NEXT, f"next in its queue {facts.queue!r}: a worker takes it as soon as one is free",
               {"queue": facts.queue, "consumers": facts.consumers}, alarms)


# --- Autoscaling: how many workers a pool should run ----------------------------------------------


def workers_wanted(waiting: int, running: int, per_worker: int) -> int:
    """The workers that would run every job due now at once: ceil((waiting + running) / per_worker),
    `per_worker` being the jobs one worker runs at once (its concurrency). KEDA's and the HPA's own
    arithmetic over an AverageValue target (desired = ceil(metric / target)), so the figure the
    endpoint reports and the one a ScaledObject computes from `waiting + running` agree."""
    if per_worker < 1:
        raise ValueError(f"per_worker must be at least 1, not {per_worker}")
    jobs = max(0, waiting) + max(0, running)
    return -(-jobs // per_worker)


class ScaleState(NamedTuple):
    """What the autoscaler remembers between two decisions (times: a monotonic clock, seconds)."""

    #: The workers it runs now (what the last decision set).
    workers: int
    #: When it last changed `workers` (grew or shrank); None: never.
    changed_at: float | None = None
    #: Since when the wanted count has stayed below `workers` (None: it is not below).
    low_since: float | None = None
    #: The highest wanted count seen since `low_since`: a shrink goes down to it, no lower.
    low_peak: int = 0


class ScaleDecision(NamedTuple):
    #: The workers to run from now on.
    workers: int
    #: grow, shrink, bounds (brought within MIN..MAX), cooldown (would grow, too soon after the
    #: last change), hold (would shrink, not yet: the wanted count must stay low `shrink_after`
    #: seconds), steady.
    action: str
    #: The decision in words, for the log.
    words: str
    state: ScaleState


def scale(wanted: int, state: ScaleState, low: int, high: int, now: float,
          grow_cooldown: float = 0.0, shrink_after: float = 30.0) -> ScaleDecision:
    """How many workers to run, given the workers wanted now (`workers_wanted`), between the bounds
    `low` and `high`.

    Growing is fast (a burst is work waiting: every worker added is a job started sooner): up to the
    wanted count at once, unless the last change is less than `grow_cooldown` seconds old (the
    workers just started may not consume yet). Shrinking is slow, so that a queue emptied between
    two bursts does not flap: only once the wanted count has stayed below the workers for
    `shrink_after` seconds (and the last change is that old), and then down to the highest count
    wanted during that time (the HPA's scale-down stabilization window), never below `low`.
    """
    if not 0 <= low <= high or high < 1:
        raise ValueError(f"bounds must be 0 <= MIN <= MAX and MAX >= 1, not {low},{high}")
    want = min(high, max(low, wanted))
    current = state.workers
    if current < low or current > high:
        target = min(high, max(low, current))
        return ScaleDecision(target, "bounds", f"{current} worker(s) outside {low}..{high}: {target}",
                             ScaleState(target, now))
    since_change = float("inf") if state.changed_at is None else now - state.changed_at
    if want > current:
        calm = state._replace(low_since=None, low_peak=0)
        if since_change < grow_cooldown:
            return ScaleDecision(current, "cooldown", f"{wanted} wanted, {current} worker(s): the last change was "
                                 f"{since_change:.1f}s ago (cooldown {grow_cooldown:g}s)", calm)
        return ScaleDecision(want, "grow", f"{wanted} wanted: {current} -> {want} worker(s)", ScaleState(want, now))
    if want == current:
        return ScaleDecision(current, "steady", f"{wanted} wanted, {current} worker(s)",
                             state._replace(low_since=None, low_peak=0))
    low_since = now if state.low_since is None else state.low_since
    peak = want if state.low_since is None else max(state.low_peak, want)
    waited = min(now - low_since, since_change)
    if waited < shrink_after:
        return ScaleDecision(current, "hold", f"{wanted} wanted, {current} worker(s): shrinking after {shrink_after:g}s "
                             f"low ({waited:.1f}s so far)", state._replace(low_since=low_since, low_peak=peak))
    return ScaleDecision(peak, "shrink", f"at most {peak} wanted for {waited:.1f}s: {current} -> {peak} worker(s)",
                         ScaleState(peak, now))


# --- Coalescing one-by-one publishes (jobs.engine.coalesce) --------------------------------------


def coalesce_deadline(last_sent: float | None, now: float, window: float) -> float | None:
    """When the message of a job committed alone goes out, Nagle-style (issue 28): None, at once,
    when this process sent nothing of its (queue, priority, type) in the last `window` seconds (an
    idle system waits for nothing); otherwise at the end of the window that send opened, with the
    ids of that kind committed meanwhile in the same message. `last_sent` and `now` on one
    monotonic clock; `window` 0 turns it off."""
    if window <= 0 or last_sent is None or now - last_sent >= window:
        return None
    return last_sent + window


def coalescable(in_commit: int, chain_id: int | None, window: float, spread: int) -> bool:
    """Whether a committed job's message may wait to share one with the next commits': coalescing
    on, a job outside any chain (a chain's next step and a group's members go at once: the handoff
    must not wait), published by a commit of fewer than `spread` messages (more already share
    messages: publish.batches)."""
    return window > 0 and chain_id is None and in_commit < spread


def gives_back_rest(elapsed: float, left: int, hold: float) -> bool:
    """Whether a worker running a message of several job ids one after the other gives the ids it
    has not started back to their queue (a new message, for any worker) instead of running them
    itself: once the message has taken `hold` seconds. Short jobs (what coalescing and
    enqueue_many batch for speed) still run in a row; long ones, enqueued together, spread over the
    idle workers after one job's time instead of waiting in one process's turn."""
    return left > 0 and elapsed >= hold


def coalesce_full(waiting: int, cap: int) -> bool:
    """Whether the ids waiting for one message are as many as a coalesced message takes: send them
    now. The cap bounds how many jobs run one after the other in one worker process while another
    may be idle (a message's ids are not shared out: jobs.tasks)."""
    return waiting >= cap


# --- A multi-id message: claims in chunks, outcomes committed together (jobs.engine.batchrun) ----

#: A job that ran at most this long is "fast": the next claim may take more ids, and outcomes may
#: wait for the next round trip while a job of its type runs.
BATCH_FAST_SECONDS = 0.02
#: The most ids one claim takes ahead of their run: a job that turns out slow holds at most this
#: many minus one claimed and not started (kept leased by the heartbeat, given back with the rest).
BATCH_CHUNK_CAP = 8
#: The longest a successful outcome waits, uncommitted, for the round trip that carries it.
BATCH_PENDING_SECONDS = 0.05


def claim_chunk(previous: int, last_run_seconds: float | None, left: int,
                cap: int = BATCH_CHUNK_CAP, fast: float = BATCH_FAST_SECONDS) -> int:
    """How many of a message's next ids one claim takes (at least 1, at most `left`): 1 at first
    and after a slow job, twice the previous chunk while the jobs run fast, at most `cap`."""
    if left <= 0:
        return 0
    grown = 1 if last_run_seconds is None or last_run_seconds > fast else max(1, previous) * 2
    return max(1, min(grown, cap, left))


def outcome_deferrable(in_chain: bool, continued: bool, hook: bool, holds_slots: bool, atomic: bool) -> bool:
    """Whether a success may wait (uncommitted, bounded by BATCH_PENDING_SECONDS) to be committed
    with others and the next claim in one round trip: only the one-statement success, whose end
    nothing follows. A chain's step (its next step is inserted by its outcome), a continuation,
    an on_finish hook, a concurrency slot to free, and an atomic type (its writes commit with its
    outcome) take the existing path, committed before the next job starts."""
    return not (in_chain or continued or hook or holds_slots or atomic)


def keeps_outcomes_pending(pending: int, oldest_age: float, next_type_last_run: float | None,
                           cap: int = BATCH_CHUNK_CAP, bound: float = BATCH_PENDING_SECONDS,
                           fast: float = BATCH_FAST_SECONDS) -> bool:
    """Whether the deferred outcomes may stay uncommitted while the next claimed job runs: only
    when that job's type last ran fast in this process (a job of unknown or slow duration never
    starts with outcomes held), the oldest is younger than `bound` and fewer than `cap` wait.
    Otherwise they are committed first."""
    if pending <= 0:
        return True
    if next_type_last_run is None or next_type_last_run > fast:
        return False
    return pending < cap and oldest_age < bound
