"""What a handler receives besides its input: identity, continuation, progress, cancellation."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from jobs import registry, store


@dataclass
class Context:
    job_id: int
    type: str
    attempt: int
    max_attempts: int
    chain_id: int | None
    chain_index: int | None
    parent_id: int | None
    #: Stable across attempts: give it to outside systems so a re-run has no double effect.
    idempotency_key: str
    #: Set by the heartbeat when the job is cancelled while it runs, or when this run lost its
    #: row (`lost`); check it in long loops and stop early.
    cancelled: bool = False
    #: Set by the heartbeat when the row is no longer this run's (its lease lapsed and it was
    #: reaped, handed back or claimed again): whatever this run returns will not be recorded.
    lost: bool = False
    continuations: list[dict[str, Any]] = field(default_factory=list)
    #: time.monotonic() after which the heartbeat stops extending the lease (timeout + grace):
    #: a run stuck past its time limit loses the job to the reaper instead of holding it forever.
    lease_deadline: float = float("inf")
    #: False when the run knows its type's on_finish hook has nothing to do after a success (an
    #: unkeyed event's delivery holds no lane): the outcome is then one statement, no transaction.
    finish_hook_needed: bool = True

    def continue_with(self, type: str, input: dict[str, Any] | None = None) -> None:  # noqa: A002 - the API's names
        """After this handler succeeds, run `type` as the next step of the chain.

        The input is validated now, so a wrong continuation fails this attempt, not a later one.
        """
        jt = registry.get(type)
        self.continuations.append({"type": jt.name, "input": jt.validate(input)})

    def progress(self, percent: int, message: str = "") -> None:
        """Record progress (0-100) on the row, visible in the API and the admin."""
        store.progress(self.job_id, self.attempt, percent, message)
