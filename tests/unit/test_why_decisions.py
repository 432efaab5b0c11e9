"""jobs.engine.decisions.why: the reason a job has not started, from plain facts (no server)."""
from __future__ import annotations

import datetime as dt

import pytest

from jobs.engine import decisions
from jobs.engine.decisions import WaitFacts

T0 = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=dt.timezone.utc)


def facts(**given: object) -> WaitFacts:
    base = {"status": "pending", "now": T0, "run_after": T0, "queue": "default", "type": "t", "consumers": 1}
    return WaitFacts(**{**base, **given})


def test_a_running_or_ended_job_is_not_waiting() -> None:
    for status in ("running", "succeeded", "dead", "cancelled"):
        assert decisions.why(facts(status=status)) is None


def test_a_delayed_job_is_scheduled_until_its_run_after() -> None:
    why = decisions.why(facts(run_after=T0 + dt.timedelta(seconds=30)))
    assert why.code == "scheduled"
    assert why.details["until"] == "2026-01-01T12:00:30+00:00"
    assert "in 30 s" in why.words


def test_a_failed_attempt_waits_its_backoff() -> None:
    why = decisions.why(facts(status="failed", attempt=2, run_after=T0 + dt.timedelta(minutes=10)))
    assert why.code == "retry_backoff"
    assert why.details == {"until": "2026-01-01T12:10:00+00:00", "attempt": 2}


def test_a_booked_rate_slot_names_the_next_slot() -> None:
    why = decisions.why(facts(held="rate", run_after=T0 + dt.timedelta(seconds=2), published=False))
    assert why.code == "rate"
    assert why.details["next_slot"] == "2026-01-01T12:00:02+00:00"


def test_a_full_concurrency_scope_names_the_jobs_holding_its_slots() -> None:
    why = decisions.why(facts(held="concurrency", holders=(7, 9), slots=2, published=False))
    assert why.code == "concurrency"
    assert why.details["holders"] == [7, 9]
    assert "7, 9" in why.words


def test_a_full_key_names_the_job_running_for_the_key() -> None:
    why = decisions.why(facts(held="key", limit_key="customer-7", holders=(12,), slots=1, published=False))
    assert why.code == "key"
    assert why.details == {"holders": [12], "slots": 1, "key": "customer-7"}


@pytest.mark.parametrize("holders, slots", [((), 1), ((4,), 3), ((4,), None)])
def test_a_slot_nobody_holds_has_leaked_and_the_sweep_frees_it(holders: tuple[int, ...], slots: int | None) -> None:
    why = decisions.why(facts(held="concurrency", holders=holders, slots=slots, sweep_seconds=5.0))
    assert why.code == "leaked_slot"
    assert why.details["sweep_seconds"] == 5.0
    assert "sweep" in why.words


def test_a_pause_outranks_every_other_reason() -> None:
    pause = {"kind": "queue", "name": "default", "reason": "db migration", "by": "ann", "since": "2026-01-01T11:00:00"}
    why = decisions.why(facts(pauses=(pause,), held="concurrency", run_after=T0 + dt.timedelta(hours=1), consumers=0))
    assert why.code == "paused"
    assert "db migration" in why.words and "ann" in why.words
    assert why.alarms  # the queue has no consumer: still said


def test_a_queue_no_worker_consumes_is_the_reason_of_a_due_job_and_an_alarm() -> None:
    why = decisions.why(facts(consumers=0, ahead=3))
    assert why.code == "no_consumer"
    assert why.alarms and "no worker consumes queue 'default'" in why.alarms[0]


def test_a_scheduled_job_of_a_queue_without_consumer_carries_the_alarm() -> None:
    why = decisions.why(facts(consumers=0, run_after=T0 + dt.timedelta(seconds=5)))
    assert why.code == "scheduled" and len(why.alarms) == 1


def test_unknown_consumers_raise_no_alarm() -> None:
    assert decisions.why(facts(consumers=None)).alarms == ()


def test_a_due_job_behind_others_counts_them() -> None:
    why = decisions.why(facts(ahead=41))
    assert why.code == "queue" and why.details["ahead"] == 41 and "41" in why.words


def test_a_due_job_not_yet_published_waits_for_the_relay() -> None:
    assert decisions.why(facts(published=False)).code == "relay"


def test_a_due_published_job_first_in_line_is_next() -> None:
    assert decisions.why(facts()).code == "next"


def test_a_delivery_behind_its_keys_lane_names_the_delivery_holding_it() -> None:
    lane = {"delivery": 5, "job": 50, "key": "order-1", "subscriber": "s"}
    why = decisions.why(facts(status="waiting", lane=lane))
    assert why.code == "lane" and why.details["delivery"] == 5 and "delivery 5" in why.words


def test_why_as_a_dict_is_json_ready() -> None:
    import json

    assert json.loads(json.dumps(decisions.why(facts(ahead=2)).as_dict()))["code"] == "queue"
