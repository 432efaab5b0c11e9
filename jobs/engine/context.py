"""What a handler receives besides its input: identity, continuation, progress, cancellation."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from jobs.engine import registry, store
from jobs.engine.creation import Group, Step, plan_step


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
    #: Its place in its chain step's group (0, 1, ...); None for a step that is one job.
    member: int | None = None
    #: How many entries the group before this step handed on (None: the step before was one job,
    #: or there was none). The entries themselves are read by `results`, when first asked for.
    results_count: int | None = None
    _results: list[Any] | None = field(default=None, init=False, repr=False)
    #: The runner's: may this run's success claim the chain's next step here (jobs.engine.handoff),
    #: and the step it claimed, once its outcome committed.
    offer: Any = field(default=None, repr=False)
    handed: Any = field(default=None, repr=False)
    #: The row as its claim returned it (store.Claimed), set by the runner: what a handler that
    #: shows the run as a whole reads instead of the row again (conveyor_tasks.worker). None where
    #: a Context is made by hand.
    claimed: store.Claimed | None = field(default=None, repr=False)

    @property
    def results(self) -> list[Any] | None:
        """What the group before this step handed on: each member's output in member order (in a
        group that collects failures, {"error", "status", "job"} in a failed member's place).
        None when the step before was one job (or there was none).

        Stored once for the whole step (jobs_stepresult), read from there on first use, then kept
        for the run: a handler that never asks reads nothing."""
        if self._results is None and self.results_count is not None and self.chain_id is not None:
            self._results = store.step_results(self.chain_id, self.chain_index or 0)
        return self._results

    def continue_with(self, type: str, input: dict[str, Any] | None = None) -> None:  # noqa: A002 - the API's names
        """After this handler succeeds, run `type` as the next step of the chain.

        The input is validated now, so a wrong continuation fails this attempt, not a later one.
        """
        self._may_continue("continue_with")
        jt = registry.get(type)
        self.continuations.append({"type": jt.name, "input": jt.validate(input)})

    def fan_out(self, steps: list[Step | dict[str, Any]], on_failure: str = "fail") -> None:
        """After this handler succeeds, run `steps` side by side as the chain's next step: a group,
        as if it had been declared there up front. The step after it (the chain's next, or a
        later continue_with) gets their outputs in order as ctx.results.

        Outside a chain the job becomes step 0 of a new chain, as with continue_with: the chain
        succeeds when every member has (or, with on_failure="collect", when every member ended).
        Validated now: a wrong step fails this attempt. A group's member cannot fan out."""
        self._may_continue("fan_out")
        self.continuations.append(plan_step(Group(list(steps), on_failure), "fan_out"))

    def _may_continue(self, what: str) -> None:
        # Permanent: every attempt of a member would fail the same way (dead at once, not retried).
        # A type that declares `continues` is refused as a member before it runs (creation.plan_step).
        if self.member is not None:
            raise registry.Permanent(
                f"{what}: job {self.job_id} is a member of a group; its chain goes on when every member has ended"
            )

    def progress(self, percent: int, message: str = "") -> None:
        """Record progress (0-100) on the row, visible in the API and the admin."""
        store.progress(self.job_id, self.attempt, percent, message)
