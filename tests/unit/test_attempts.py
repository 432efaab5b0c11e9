"""A job's attempts as its page shows them (jobs.interfaces.attempts), from rows in memory: the
failed attempts' entries, then the row's own attempt; waiting times that are true of the row."""
from __future__ import annotations

import datetime as dt

from jobs.interfaces.attempts import history, published_text, run_after_text
from jobs.models import Held, Job, Status

T0 = dt.datetime(2026, 3, 4, 5, 6, 0, tzinfo=dt.timezone.utc)


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def entry(attempt: int, error: str, start: float, end: float, worker: str = "w@h/1/a") -> dict:
    # as PostgreSQL writes it (jobs.engine.store._error_entry): timestamps as JSON text
    return {"attempt": attempt, "error": error, "worker": worker, "started_at": at(start).isoformat(), "at": at(end).isoformat()}


def test_a_job_that_failed_then_succeeded_has_two_attempts_the_second_from_its_row():
    job = Job(status=Status.SUCCEEDED, attempt=2, worker="w@h/2/a", started_at=at(5), finished_at=at(7),
              errors=[entry(1, "Traceback\nRuntimeError: boom", 0, 1)])
    rows = history(job)
    assert [(a.number, a.outcome, a.seconds, a.worker) for a in rows] == [(1, "failed", 1.0, "w@h/1/a"), (2, "succeeded", 2.0, "w@h/2/a")]
    assert rows[0].started_at == T0 and rows[1].error == ""


def test_a_dead_jobs_last_entry_is_its_dead_attempt_and_no_row_is_added():
    job = Job(status=Status.DEAD, attempt=2, started_at=at(3), finished_at=at(4), error="E: two",
              errors=[entry(1, "E: one", 0, 1), entry(2, "E: two", 3, 4)])
    assert [(a.number, a.outcome, a.error) for a in history(job)] == [(1, "failed", "E: one"), (2, "dead", "E: two")]


def test_a_lost_run_and_a_handed_back_one_say_so():
    job = Job(status=Status.RUNNING, attempt=3, started_at=at(20), worker="w@h/3/a", errors=[
        entry(1, "lease expired: the worker running attempt 1 (w@h/1/a) was lost", 0, 10),
        entry(2, "handed back: worker w@h was stopped before finishing", 11, 12),
    ])
    assert [(a.number, a.outcome, a.ended_at, a.seconds) for a in history(job)] == [
        (1, "lost", at(10), 10.0), (2, "handed back", at(12), 1.0), (3, "running", None, None)]


def test_a_job_cancelled_after_a_failed_attempt_and_one_never_started():
    failed_then = Job(status=Status.CANCELLED, attempt=1, started_at=at(0), finished_at=at(30), errors=[entry(1, "E", 0, 1)])
    assert [a.outcome for a in history(failed_then)] == ["failed, then cancelled"]
    assert history(Job(status=Status.CANCELLED, attempt=0, finished_at=at(1))) == []


def test_a_row_from_before_the_history_shows_its_last_attempt():
    job = Job(status=Status.DEAD, attempt=4, started_at=at(0), finished_at=at(2), error="E: old", errors=[])
    assert [(a.number, a.outcome, a.error) for a in history(job)] == [(4, "dead", "E: old")]


def test_a_dead_job_is_not_due_after_its_end_and_has_no_message():
    job = Job(status=Status.DEAD, run_after=at(60), finished_at=at(4), published_at=None)
    assert run_after_text(job) == "- (dead: no run is due)"
    assert published_text(job) == "- (dead: no message waits for it)"
    done = Job(status=Status.SUCCEEDED, run_after=at(0), finished_at=at(4), published_at=at(0))
    assert run_after_text(done) == published_text(done) == "2026-03-04 05:06:00 UTC"


def test_a_waiting_job_says_what_it_waits_for():
    assert run_after_text(Job(status=Status.PENDING, held=Held.CONCURRENCY, run_after=at(0))).startswith("- (waits for a slot")
    assert published_text(Job(status=Status.PENDING, held=Held.RATE)).startswith("- (held by its type's limits")
    assert published_text(Job(status=Status.FAILED, run_after=at(9))) == "- (the relay publishes it when it is due)"
    assert run_after_text(Job(status=Status.FAILED, run_after=at(9))) == "2026-03-04 05:06:09 UTC"
