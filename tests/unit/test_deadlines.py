"""The process's deadlines (jobs.engine.deadlines): one thread for every run's time limit."""
from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest
from celery.exceptions import SoftTimeLimitExceeded

from jobs.engine.deadlines import Deadlines


def test_a_deadline_calls_back_at_its_time_and_a_cancelled_one_never():
    # given two deadlines, one cancelled
    deadlines, fired = Deadlines(), []
    deadlines.after(0.05, lambda: fired.append("kept"))
    cancelled = deadlines.after(0.05, lambda: fired.append("cancelled"))
    deadlines.cancel(cancelled)

    # when their time has passed
    time.sleep(0.3)

    # then only the kept one ran
    assert fired == ["kept"]


def test_an_earlier_deadline_added_later_wakes_the_thread_sooner():
    # given the thread asleep until a deadline an hour away
    deadlines, fired = Deadlines(), threading.Event()
    deadlines.after(3600, lambda: None)

    # when a deadline 50 ms away is added
    started = time.monotonic()
    deadlines.after(0.05, fired.set)

    # then it runs at its time, not in an hour
    assert fired.wait(2) and time.monotonic() - started < 2


def test_many_runs_share_one_thread_and_cancelled_deadlines_do_not_pile_up():
    # given a process's deadlines (its thread started by the first one)
    deadlines = Deadlines()
    deadlines.cancel(deadlines.after(600, lambda: None))
    threads = threading.active_count()

    # when 5,000 runs each set a long limit and end long before it
    for _ in range(5_000):
        deadlines.cancel(deadlines.after(600, lambda: None))
    live = deadlines.after(600, lambda: None)

    # then no thread was started for them, and the heap holds the live deadline and few others
    assert threading.active_count() == threads
    assert deadlines.pending() == 1 and len(deadlines._heap) <= 2
    deadlines.cancel(live)


def test_a_run_past_its_time_limit_gets_soft_time_limit_exceeded_without_a_thread_of_its_own():
    from jobs.engine import runner

    # given a TimeLimit of 0.1 s around a busy loop in this thread (the threads pool's case)
    ctx = SimpleNamespace(job_id=1, attempt=1)
    runner.TimeLimit(ctx, 60, None).stop()  # the process's deadlines' thread, started once
    threads = threading.active_count()
    limit = runner.TimeLimit(ctx, 0.1, None)
    assert threading.active_count() == threads

    # when the loop passes the limit, then SoftTimeLimitExceeded interrupts it
    with pytest.raises(SoftTimeLimitExceeded):
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            pass
    limit.stop()  # its hard limit (the kill) is cancelled with it
    assert runner.deadlines.pending() == 0
