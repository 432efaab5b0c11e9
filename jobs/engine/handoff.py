"""Local handoff: a worker that succeeds a chain step runs the next step itself, with no message.

When the outcome's transaction inserts the chain's next step (chains.release), and that step is
one job on a queue this worker consumes (decisions.hands_off_here), the job is claimed in that
same transaction, for this worker (store.claim on `default`): the outcome, the next step's row
and its claim commit together or not at all. No message is sent for it; after the commit the
runner runs it next, in the same task (jobs.engine.runner.execute).

Nothing new can be lost or run twice:
- the claimed row is a running job like any other, with a lease: a worker that dies before or
  while running it has it reaped (or handed back by its supervisor) and published again;
- a message for it (a relay's, a duplicate) finds it running and claims nothing (skipped);
- a rolled-back outcome rolls the claim back too: the runner only runs a claim whose outcome
  committed (`Context.handed`, cleared before each outcome's attempt).

A worker that sends task events (Flower turned them on) sends every step's message instead: a
step run here would be no task of its own, and the monitor would not show it.

The queues a worker consumes are those it was started with (`consuming`, set on `worker_init`
by jobs.interfaces.signals); a queue added or cancelled at run time through Celery's remote
control is not seen here (a queue that must stop taking jobs is paused: jobs.engine.pauses, which
the claim reads).
"""
from __future__ import annotations

import contextvars
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

from jobs.engine import decisions, registry, store

if TYPE_CHECKING:  # pragma: no cover
    from jobs.models import Job

#: The queues this process's worker consumes (empty outside a worker: no local handoff).
LOCAL_QUEUES: frozenset[str] = frozenset()
#: Steps of one chain a worker runs in a row before it goes back to its queue.
MAX_STEPS = 100


#: Whether the worker sends task events now (a monitor, Flower, turned them on): read from the
#: worker's main process, which knows, through memory its pool processes share (`watch_events`).
def _no_events() -> bool:
    return False


_events_on: Callable[[], bool] = _no_events


def watch_events(events_on: Callable[[], bool]) -> None:
    """Say how to know whether the worker sends task events (jobs.interfaces.signals)."""
    global _events_on
    _events_on = events_on


def consuming(queues: Iterable[str]) -> None:
    """Say which queues this worker consumes (jobs.interfaces.signals, on worker_init)."""
    global LOCAL_QUEUES
    LOCAL_QUEUES = frozenset(queues)


@dataclass
class Offer:
    """An outcome's transaction may claim the chain's next step for `worker`."""

    worker: str
    lease_seconds: float
    runner_keeps_limits: bool
    steps_so_far: int
    claimed: store.Claimed | None = None


_offer: contextvars.ContextVar[Offer | None] = contextvars.ContextVar("conveyor_handoff", default=None)


@contextmanager
def offered(offer: Offer | None) -> Iterator[Offer | None]:
    """Around `ending.ended` of a success: the next step inserted meanwhile may be taken here."""
    token = _offer.set(offer)
    try:
        yield offer
    finally:
        _offer.reset(token)


def local_queues(offer: Offer | None) -> frozenset[str]:
    """The queues whose next step `offer` may take here (`take`, for a one-job step of a type
    without limits): none without an offer, past MAX_STEPS, without the runner's own time limits
    or while the worker sends task events (jobs.engine.continuing: a next step on one of them is left
    to the general path, which claims it)."""
    if offer is None or not offer.runner_keeps_limits or offer.steps_so_far >= MAX_STEPS or _events_on():
        return frozenset()
    return LOCAL_QUEUES


def take(inserted: list[Job]) -> set[int]:
    """In the outcome's transaction, with the next step's rows just inserted: claim the step for
    this worker when it may run here; the ids claimed (whose messages are not to be sent)."""
    offer = _offer.get()
    if offer is None or offer.claimed is not None or not inserted:
        return set()
    job = inserted[0]
    limited = registry.limited()
    if not decisions.hands_off_here(
        queue=job.queue, consumed=LOCAL_QUEUES, one_job=len(inserted) == 1 and job.member is None,
        due=job.published_at is not None, limited=job.type in limited,
        runner_keeps_limits=offer.runner_keeps_limits, steps_so_far=offer.steps_so_far, max_steps=MAX_STEPS,
        monitored=_events_on(),
    ):
        return set()
    claimed = store.claim(job.pk, offer.worker, offer.lease_seconds, limited, alias="default")
    if claimed is None:  # paused, or of a type another worker's code limits: its message goes
        return set()
    offer.claimed = claimed
    return {job.pk}
