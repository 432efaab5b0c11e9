"""What a chain does when one of its steps is done: release the next step, or end.

A step is one job or a group of jobs run side by side. Everything here runs inside the
transaction that records a job's outcome, with the chain's row locked (store.succeed locks it in
the same statement; jobs.engine.ending through store.chain_step), so the ends of one group's members
are recorded one after the other. The member whose outcome takes the lock last sees every other
member's end and releases the next step: no task polls for it, and the next step is inserted
once whether two members end at the same instant on two workers, a member's message is
duplicated, or a member's worker dies and its job runs again (a member counts by its row's
status, not by how many times it ended). The next step's message goes out while the
commit, in a run's success (jobs.engine.early; after it otherwise: creation.submit ->
publish_on_commit), unless the worker claimed the step in that transaction to run it next
(jobs.engine.handoff: a one-job step on a queue it consumes).

What a group hands on is stored once for the next step (store.hand_on: `jobs_stepresult` rows,
copied from the members' rows inside PostgreSQL), and each of the next step's rows holds only
their count: a group of N after a group of N stores N entries, not N x N.
"""
from __future__ import annotations

from typing import Any

from jobs.engine import decisions, handoff, store, tracing
from jobs.engine.creation import step_jobs, submit
from jobs.models import ChainStatus


def advance(chain_id: int, index: int, steps: list[dict[str, Any]], parent_id: int) -> None:
    """Step `index` (one job) is done: insert step `index + 1`, or, past the last step, end the
    chain succeeded."""
    release(chain_id, index, steps[index + 1] if index + 1 < len(steps) else None, parent_id)


def release(chain_id: int, index: int, following: dict[str, Any] | None, parent_id: int,
            failures: dict[int, Any] | None = None) -> None:
    """Insert the step after step `index`, planned as `following` (None: there is none, the
    chain ends succeeded). `failures` (after a group: the entries of its members that did not
    succeed, possibly none) hands the group's results on to it (store.hand_on)."""
    if following is None:
        store.finish_chain(chain_id, ChainStatus.SUCCEEDED)
        return
    # Traced: the handoff is a span of the run that ended the step (a group's last member's),
    # and the next step's rows are enqueued under it.
    with tracing.span("conveyor.handoff", {"conveyor.chain.id": chain_id, "conveyor.chain.step": index + 1,
                                           "conveyor.group": "group" in following, "conveyor.job.id": parent_id}):
        count = None if failures is None else store.hand_on(chain_id, index, failures)
        # The worker whose outcome this is may claim the step to run it next (jobs.engine.handoff).
        submit(step_jobs(following, chain_id, index + 1, parent_id=parent_id, results_count=count), claim_here=handoff.take)


def member_ended(chain_id: int, index: int, status: str, parent_id: int) -> None:
    """A member of group step `index` has ended (its row written in this transaction): when it is
    the last, hand the members' outputs, in member order, to the next step. Only that last one
    reads the plan, and only its step's rule and the next step (store.chain_step).

    `status` is the chain's, read under its lock: a chain that failed or was cancelled releases
    nothing (its other members were left to finish). In a group that fails on failure, a member
    that ended badly fails the chain at once (jobs.engine.ending), so only a chain reopened by a retry
    gets here with one: it fails again. In a group that collects failures, each such member's
    place holds {"error", "status", "job"} instead of an output."""
    if status != ChainStatus.RUNNING:
        return
    ends = store.group_ends(chain_id, index)
    if ends is None or store.step_released(chain_id, index + 1):
        return  # a member may still run; or a member retried after the fan-in ended again
    step = store.chain_step(chain_id, index)
    if step is None:
        return
    decided = decisions.group_end(ends, step.on_failure)
    if decided.action is decisions.GroupEnd.RELEASE:
        release(chain_id, index, step.next, parent_id, decided.failures)
    else:
        store.finish_chain(chain_id, ChainStatus.FAILED if decided.action is decisions.GroupEnd.FAIL else ChainStatus.CANCELLED)
