"""jobs.engine.decisions: what an end, a retry, a backoff and a rate slot decide, over plain values.

No server: each test calls a pure function and reads its answer (the statements that apply the
answers are tested against PostgreSQL in tests/integration/)."""
from __future__ import annotations

import datetime as dt
from typing import NamedTuple

import pytest

from jobs.engine import decisions
from jobs.engine.decisions import GroupEnd


class End(NamedTuple):
    id: int
    member: int
    status: str
    error: str = ""


T0 = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=dt.timezone.utc)


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


# --- the last attempt ---------------------------------------------------------------------------


@pytest.mark.parametrize(("attempt", "max_attempts", "permanent", "last"), [
    (1, 3, False, False), (2, 3, False, False), (3, 3, False, True), (4, 3, False, True),
    (1, 3, True, True), (1, 1, False, True),
])
def test_a_failed_attempt_is_the_last_when_out_of_attempts_or_permanent(attempt, max_attempts, permanent, last):
    assert decisions.is_last_attempt(attempt, max_attempts, permanent) is last


# --- a job's end and its chain ------------------------------------------------------------------


def test_only_a_dead_or_cancelled_job_ends_its_chain_and_the_chain_says_which():
    assert [s for s in ("succeeded", "failed", "pending", "running", "dead", "cancelled") if decisions.ends_chain(s)] == [
        "dead", "cancelled"]
    assert decisions.chain_status_after("dead") == "failed"
    assert decisions.chain_status_after("cancelled") == "cancelled"


def test_continuations_are_spliced_right_after_the_handlers_step_and_the_plan_is_not_changed_in_place():
    plan = [{"type": "a"}, {"type": "b"}, {"type": "c"}]
    assert decisions.spliced(plan, 1, [{"type": "x"}, {"type": "y"}]) == [
        {"type": "a"}, {"type": "b"}, {"type": "x"}, {"type": "y"}, {"type": "c"}]
    assert decisions.spliced(plan, 2, [{"type": "z"}])[-1] == {"type": "z"}
    assert decisions.spliced(plan, 0, []) == plan
    assert plan == [{"type": "a"}, {"type": "b"}, {"type": "c"}]


# --- a group's fan-in ---------------------------------------------------------------------------


def test_a_bad_member_counts_in_its_group_only_when_the_group_collects():
    assert decisions.counts_in_group("collect") is True
    assert decisions.counts_in_group("fail") is False


def test_a_group_whose_members_all_succeeded_releases_the_next_step_with_no_failures():
    decided = decisions.group_end([End(1, 0, "succeeded"), End(2, 1, "succeeded")], "fail")
    assert decided == (GroupEnd.RELEASE, {})


def test_a_group_that_fails_on_failure_fails_its_chain_when_a_member_is_dead():
    ends = [End(1, 0, "succeeded"), End(2, 1, "cancelled"), End(3, 2, "dead")]
    assert decisions.group_end(ends, "fail").action is GroupEnd.FAIL


def test_a_group_that_fails_on_failure_cancels_its_chain_when_its_only_bad_members_were_cancelled():
    ends = [End(1, 0, "succeeded"), End(2, 1, "cancelled")]
    assert decisions.group_end(ends, "fail").action is GroupEnd.CANCEL


def test_a_group_that_collects_hands_each_bad_members_last_error_line_in_its_place():
    ends = [End(1, 0, "succeeded"), End(7, 1, "dead", "Traceback (most recent call last):\n  ...\nValueError: no\n\n"),
            End(8, 2, "cancelled")]
    decided = decisions.group_end(ends, "collect")
    assert decided.action is GroupEnd.RELEASE
    assert decided.failures == {1: {"error": "ValueError: no", "status": "dead", "job": 7},
                                2: {"error": "", "status": "cancelled", "job": 8}}


# --- a retry and its chain ----------------------------------------------------------------------


def test_a_retry_reopens_its_chain_unless_its_group_has_already_handed_its_results_on():
    assert decisions.retry_reopens_chain(None, None, False) is False  # a lone job
    assert decisions.retry_reopens_chain(5, None, False) is True  # a step of one job
    assert decisions.retry_reopens_chain(5, 2, False) is True  # a member, its group still waiting
    assert decisions.retry_reopens_chain(5, 2, True) is False  # a collected member: the chain went on


# --- backoff ------------------------------------------------------------------------------------


def test_backoff_doubles_per_attempt_up_to_its_cap_scaled_by_the_jitter():
    assert [decisions.backoff(a, 1.0, 10.0, jitter=1.0) for a in (0, 1, 2, 3, 4, 5, 9)] == [1, 1, 2, 4, 8, 10, 10]
    assert decisions.backoff(3, 1.0, 10.0, jitter=0.5) == 2.0
    assert all(2.0 <= decisions.backoff(3, 1.0, 10.0) <= 4.0 for _ in range(50))


# --- rate slots ---------------------------------------------------------------------------------


def test_an_idle_rate_starts_now_and_sets_both_clocks_one_interval_ahead():
    decided = decisions.rate_slot(booked=at(-100), started=at(-100), now=T0, interval=0.5, burst=1.0, holds_slot=False)
    assert decided == (None, at(0.5), at(0.5))


def test_claims_within_one_interval_are_booked_one_interval_apart():
    booked = started = at(-100)
    slots = []
    for _ in range(4):  # four claims at the same instant, a rate of 2/s
        slot, booked, started = decisions.rate_slot(booked, started, T0, interval=0.5, burst=0.5, holds_slot=False)
        slots.append(slot)
    assert slots == [None, at(0.5), at(1.0), at(1.5)]
    assert booked == at(2.0)


def test_a_booked_row_starts_on_its_slot_when_it_comes():
    # one row started at T0, the next booked on T0 + 1; claimed at its slot
    decided = decisions.rate_slot(booked=at(2), started=at(1), now=at(1), interval=1.0, burst=1.0, holds_slot=True)
    assert decided.slot is None and decided.booked == at(2) and decided.started == at(2)


def test_booked_rows_claimed_late_together_start_no_faster_than_the_rate_allows_the_rest_booked_again():
    # given a type allowing 2 starts a second (one every 500 ms; bursts of at most 500 ms ahead),
    # four claims at T0: the first starts, three are booked on T0 + 0.5 s, + 1 s, + 1.5 s
    booked = started = at(-100)
    slots = []
    for _ in range(4):
        slot, booked, started = decisions.rate_slot(booked, started, T0, interval=0.5, burst=0.5, holds_slot=False)
        slots.append(slot)
    assert slots == [None, at(0.5), at(1.0), at(1.5)]
    booked_until = booked

    # when the three booked rows are claimed together at T0 + 2.5 s (their workers were busy)
    answers = []
    for _ in range(3):
        slot, booked, started = decisions.rate_slot(booked, started, at(2.5), interval=0.5, burst=0.5, holds_slot=True)
        answers.append(slot)

    # then two start (one in its turn, one within the burst) and the third is booked again, one
    # interval after the first late start (past every slot booked before): missed slots are not
    # made up
    assert answers[:2] == [None, None]
    assert answers[2] == at(3.0) and answers[2] > booked_until
    assert booked == at(3.5)  # the type's next free slot: one interval after the new booking


def test_a_step_without_a_job_waits_while_its_chain_runs_and_is_not_reached_once_it_ended():
    from jobs.engine.decisions import unstarted_status

    assert unstarted_status("running") == "waiting"
    assert [unstarted_status(s) for s in ("cancelled", "failed", "succeeded")] == ["not reached"] * 3


# --- An atomic run ---------------------------------------------------------------------------------


def test_an_atomic_run_commits_its_writes_only_with_its_own_success():
    # the success's fenced statement found the row still this attempt's: writes and outcome commit
    assert decisions.atomic_end("", recorded="succeeded") is decisions.AtomicEnd.COMMIT


def test_an_atomic_run_that_lost_its_row_rolls_its_writes_back_and_records_nothing():
    # reaped, handed back or claimed again while it ran: the fenced statement found nothing
    assert decisions.atomic_end("", recorded="") is decisions.AtomicEnd.LOST


def test_an_atomic_run_whose_output_cannot_be_stored_rolls_back_and_fails_the_attempt():
    # its writes go with it, as a raising handler's do; the attempt is recorded as failed
    assert decisions.atomic_end("the handler's output cannot be stored as JSON", recorded="") is decisions.AtomicEnd.FAIL


def test_an_atomic_run_cancelled_while_it_ran_rolls_its_writes_back():
    # the success's statement ended it cancelled (a cancel was asked): a cancelled job has no effect
    assert decisions.atomic_end("", recorded="cancelled") is decisions.AtomicEnd.CANCEL


def test_an_atomic_transaction_is_bounded_in_postgresql_by_the_types_timeout_plus_the_grace():
    assert decisions.transaction_bound_ms(timeout=60, grace=15) == 75_000
    assert decisions.transaction_bound_ms(timeout=1, grace=0) == 1_000
    assert decisions.transaction_bound_ms(timeout=0.2, grace=0) == 1_000  # never below a second


def test_a_rate_of_10_per_second_holds_over_30_seconds_of_claims_by_late_workers():
    """The arithmetic of tests/acceptance/test_limits_live.py's rate, over 30 s (the live run is
    shorter: it checks that two real instances share the clocks, not the arithmetic over time).

    360 rows claimed at once (the relay's messages), the booked ones claimed again at their slot
    by a busy worker, late by 0 to 0.3 s (a fixed pseudo-random sequence): every
    row starts once, 300 start in the 30 s from the first start, no second holds more than 10
    starts plus the burst (0.5 s of them: the relay's period, limits.burst)."""
    import heapq
    import random
    from collections import Counter

    interval, burst = 0.1, 0.5
    late = random.Random(23)
    booked = started = at(-100)
    claims: list[tuple[dt.datetime, int, bool]] = [(T0, row, False) for row in range(360)]
    heapq.heapify(claims)
    starts: dict[int, dt.datetime] = {}
    while claims:
        now, row, holds_slot = heapq.heappop(claims)
        slot, booked, started = decisions.rate_slot(booked, started, now, interval, burst, holds_slot)
        if slot is None:
            assert row not in starts, f"row {row} started twice"
            starts[row] = now
        else:  # booked: claimed again when its slot comes, by a worker late by up to 0.3 s
            heapq.heappush(claims, (slot + dt.timedelta(seconds=late.uniform(0, 0.3)), row, True))

    assert len(starts) == 360
    first = min(starts.values())
    seconds = Counter(int((s - first).total_seconds()) for s in starts.values())
    in_30 = sum(seconds[i] for i in range(30))
    assert 297 <= in_30 <= 300 + burst / interval, (in_30, sorted(seconds.items()))
    assert max(seconds.values()) <= 10 + burst / interval, sorted(seconds.items())


# --- Autoscaling -------------------------------------------------------------------------------


def test_workers_wanted_is_the_jobs_due_or_running_over_a_workers_concurrency_rounded_up():
    assert decisions.workers_wanted(0, 0, 4) == 0
    assert decisions.workers_wanted(1, 0, 4) == 1
    assert decisions.workers_wanted(5, 3, 4) == 2
    assert decisions.workers_wanted(5, 4, 4) == 3
    assert decisions.workers_wanted(-1, 2, 1) == 2  # a negative count (a race) counts as none
    with pytest.raises(ValueError, match="per_worker"):
        decisions.workers_wanted(1, 1, 0)


def test_a_burst_grows_the_workers_at_once_up_to_max():
    decision = decisions.scale(7, decisions.ScaleState(1, changed_at=0.0), low=1, high=4, now=100.0)
    assert (decision.workers, decision.action) == (4, "grow")
    assert decision.state == decisions.ScaleState(4, changed_at=100.0)
    assert decisions.scale(3, decisions.ScaleState(1), 1, 4, now=1.0).workers == 3


def test_growing_again_waits_out_the_cooldown_after_a_change():
    state = decisions.ScaleState(2, changed_at=100.0)
    held = decisions.scale(4, state, 1, 4, now=102.0, grow_cooldown=5.0)
    assert (held.workers, held.action) == (2, "cooldown")
    assert decisions.scale(4, held.state, 1, 4, now=105.0, grow_cooldown=5.0).workers == 4


def test_a_drained_queue_shrinks_to_min_only_after_staying_low_for_shrink_after():
    state = decisions.ScaleState(4, changed_at=0.0)
    first = decisions.scale(0, state, 1, 4, now=100.0, shrink_after=10.0)
    assert (first.workers, first.action) == (4, "hold")
    later = decisions.scale(0, first.state, 1, 4, now=109.0, shrink_after=10.0)
    assert later.workers == 4
    done = decisions.scale(0, later.state, 1, 4, now=110.0, shrink_after=10.0)
    assert (done.workers, done.action) == (1, "shrink")
    assert done.state == decisions.ScaleState(1, changed_at=110.0)


def test_a_shrink_goes_down_only_to_the_highest_count_wanted_while_low():
    state = decisions.ScaleState(4, changed_at=0.0)
    for now, wanted in ((100.0, 1), (103.0, 3), (106.0, 2)):
        state = decisions.scale(wanted, state, 1, 4, now=now, shrink_after=10.0).state
    decision = decisions.scale(1, state, 1, 4, now=110.0, shrink_after=10.0)
    assert (decision.workers, decision.action) == (3, "shrink")


def test_a_dip_shorter_than_shrink_after_does_not_flap():
    state = decisions.ScaleState(4, changed_at=0.0)
    state = decisions.scale(0, state, 1, 4, now=100.0, shrink_after=10.0).state
    back = decisions.scale(4, state, 1, 4, now=105.0, shrink_after=10.0)
    assert (back.workers, back.action) == (4, "steady")
    # the low spell starts again from zero
    again = decisions.scale(0, back.state, 1, 4, now=112.0, shrink_after=10.0)
    assert (again.workers, again.action) == (4, "hold")


def test_no_shrink_sooner_than_shrink_after_since_the_last_change():
    grown = decisions.ScaleState(4, changed_at=100.0, low_since=90.0, low_peak=1)
    decision = decisions.scale(1, grown, 1, 4, now=105.0, shrink_after=10.0)
    assert (decision.workers, decision.action) == (4, "hold")


def test_the_workers_stay_within_the_bounds():
    assert decisions.scale(0, decisions.ScaleState(0), 2, 5, now=0.0).workers == 2
    assert decisions.scale(9, decisions.ScaleState(7), 2, 5, now=0.0)[:2] == (5, "bounds")
    assert decisions.scale(100, decisions.ScaleState(5, changed_at=0.0), 2, 5, now=50.0).action == "steady"
    # scaling to zero is allowed (MIN 0), and a burst grows from zero
    idle = decisions.scale(0, decisions.ScaleState(1, changed_at=0.0), 0, 3, now=100.0, shrink_after=0.0)
    assert idle.workers == 0
    assert decisions.scale(1, idle.state, 0, 3, now=101.0).workers == 1
    with pytest.raises(ValueError, match="bounds"):
        decisions.scale(1, decisions.ScaleState(1), 3, 2, now=0.0)


# --- Local handoff (jobs.engine.handoff) ----------------------------------------------------------

HANDOFF = dict(queue="default", consumed=frozenset({"default", "images"}), one_job=True, due=True, limited=False,
               runner_keeps_limits=True, steps_so_far=0, max_steps=100)


def test_a_due_one_job_step_without_limits_on_a_queue_consumed_here_is_handed_off_here():
    assert decisions.hands_off_here(**HANDOFF)


@pytest.mark.parametrize("change", [
    {"queue": "notifications"},  # a queue this worker does not consume
    {"one_job": False},  # a group: its members go to their queue, for several workers
    {"due": False},  # delayed: the relay publishes it when due
    {"limited": True},  # its type's limits claim it
    {"runner_keeps_limits": False},  # Celery's time limit of the message would run out during it
    {"steps_so_far": 100},  # the worker goes back to its queue
    {"monitored": True},  # Flower watching: each step a task of its own, shown as such
])
def test_a_next_step_goes_by_its_message_when(change):
    assert not decisions.hands_off_here(**{**HANDOFF, **change})


# --- A chain step's success and its next step in one statement (jobs.engine.continuing) ----------

CONTINUING = dict(in_chain=True, member=False, continuations=False, hook=False, holds_slots=False, traced=False,
                  publishing_early=True)


def test_a_chain_steps_success_with_nothing_else_to_do_continues_in_one_statement():
    assert decisions.continues_in_one_statement(**CONTINUING)


@pytest.mark.parametrize("change", [
    {"in_chain": False},  # a lone job: nothing follows it
    {"member": True},  # a group's member: its fan-in is the general path's
    {"continuations": True},  # ctx.continue_with: the plan changes
    {"hook": True},  # its type's on_finish runs in the transaction
    {"holds_slots": True},  # its limit slot is released at its end
    {"traced": True},  # the handoff's span, the row's trace context
    {"publishing_early": False},  # an atomic run's success: published after commit
])
def test_a_success_takes_the_general_path_when(change):
    assert not decisions.continues_in_one_statement(**{**CONTINUING, **change})


# --- Recovery's scans: the reaper and the relay's stale scan, a tenth of the lease ---------------


def test_the_slow_scans_run_on_the_first_pass():
    assert decisions.slow_scans_due(None, 100.0, 0.5, 30, 30)


def test_the_slow_scans_wait_a_tenth_of_the_shorter_of_lease_and_stale_age():
    # lease 30 s, stale 60 s: every 3 s, not every 0.5 s pass
    assert not decisions.slow_scans_due(100.0, 102.9, 0.5, 30, 60)
    assert decisions.slow_scans_due(100.0, 103.0, 0.5, 30, 60)
    assert decisions.slow_scans_due(100.0, 101.0, 0.5, 60, 10)  # stale 10 s: every 1 s


def test_the_slow_scans_never_wait_less_than_the_loop_and_run_every_pass_with_short_leases():
    # the test settings' 3 s lease and stale age: a tenth is 0.3 s, under the 0.5 s loop
    assert decisions.slow_scans_due(100.0, 100.5, 0.5, 3, 3)
    assert not decisions.slow_scans_due(100.0, 100.4, 0.5, 3, 3)


# --- Coalescing one-by-one publishes ----------------------------------------------------------------


def test_a_job_committed_alone_goes_out_at_once_when_nothing_of_its_kind_went_out_within_the_window():
    assert decisions.coalesce_deadline(None, 100.0, 0.005) is None  # the process's first
    assert decisions.coalesce_deadline(100.0, 100.006, 0.005) is None  # the window has passed
    assert decisions.coalesce_deadline(100.0, 100.001, 0.0) is None  # coalescing off


def test_a_job_committed_within_the_window_of_the_last_send_waits_for_that_windows_end():
    assert decisions.coalesce_deadline(100.0, 100.002, 0.005) == pytest.approx(100.005)


def test_only_jobs_outside_chains_committed_among_few_may_wait_to_share_a_message():
    assert decisions.coalescable(1, None, 0.005, 16)
    assert not decisions.coalescable(1, 7, 0.005, 16)  # a chain's step: the handoff must not wait
    assert not decisions.coalescable(16, None, 0.005, 16)  # many at once already share messages
    assert not decisions.coalescable(1, None, 0.0, 16)  # off


def test_waiting_ids_go_out_once_they_fill_a_coalesced_message():
    assert not decisions.coalesce_full(7, 8)
    assert decisions.coalesce_full(8, 8)


# --- Early publish: the lock a claim of an early message waits on (jobs.engine.early) -------------


@pytest.mark.parametrize("job_id", [1, 2, 1_073_741_823, 2_147_483_646, 2_147_483_647, 2**40 + 5, 2**63 - 1])
def test_an_early_lock_key_fits_postgresql_int4_keys_for_any_job_id(job_id):
    space, key = decisions.early_lock_key(job_id)
    assert space == decisions.EARLY_LOCK_SPACE
    assert -(2**31) <= space < 2**31 and -(2**31) <= key < 2**31


def test_neighbouring_jobs_have_different_early_lock_keys():
    # a chain's next steps are inserted one after the other: consecutive ids never share a key
    # (a shared key would only make one claim wait for another outcome: harmless, but slower)
    keys = {decisions.early_lock_key(job_id)[1] for job_id in range(10_000, 20_000)}
    assert len(keys) == 10_000


def test_a_batch_message_gives_back_its_rest_once_it_has_run_its_hold_and_only_if_some_are_left():
    assert not decisions.gives_back_rest(0.05, 3, 0.1)  # short jobs run in a row
    assert decisions.gives_back_rest(0.1, 3, 0.1)
    assert not decisions.gives_back_rest(5.0, 0, 0.1)  # nothing left


# --- a multi-id message's chunked claims and grouped outcomes -----------------------------------


def test_a_batch_claims_one_id_first_and_after_a_slow_job_and_doubles_while_jobs_run_fast_up_to_the_cap():
    assert decisions.claim_chunk(0, None, 100) == 1
    assert decisions.claim_chunk(1, 0.001, 100) == 2
    assert decisions.claim_chunk(2, 0.001, 100) == 4
    assert decisions.claim_chunk(4, 0.001, 100) == 8
    assert decisions.claim_chunk(8, 0.001, 100) == decisions.BATCH_CHUNK_CAP == 8
    assert decisions.claim_chunk(8, 0.5, 100) == 1  # a slow job: one at a time again
    assert decisions.claim_chunk(4, 0.001, 3) == 3  # never more than the message has left
    assert decisions.claim_chunk(4, 0.001, 0) == 0


def test_only_a_success_that_nothing_follows_may_wait_to_be_committed_with_others():
    assert decisions.outcome_deferrable(False, False, False, False, False)
    for i in range(5):
        flags = [False] * 5
        flags[i] = True  # a chain step, a continuation, a hook, a slot, an atomic type
        assert not decisions.outcome_deferrable(*flags)


def test_outcomes_stay_uncommitted_only_while_a_job_of_a_type_known_fast_runs_and_within_the_bound():
    assert decisions.keeps_outcomes_pending(0, 10.0, None)  # nothing pending: nothing to commit first
    assert decisions.keeps_outcomes_pending(3, 0.01, 0.001)
    assert not decisions.keeps_outcomes_pending(3, 0.01, None)  # a type not yet run here: commit first
    assert not decisions.keeps_outcomes_pending(3, 0.01, 0.3)  # a type that ran slow
    assert not decisions.keeps_outcomes_pending(3, decisions.BATCH_PENDING_SECONDS, 0.001)  # too old
    assert not decisions.keeps_outcomes_pending(decisions.BATCH_CHUNK_CAP, 0.01, 0.001)  # too many
