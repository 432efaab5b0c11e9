"""What jobs.interfaces.beat.LeaderScheduler relies on in the pinned Celery and django-celery-beat.

On taking the lead it sets two private attributes to force a full re-read of the schedule; if an
upgrade renames them, the standby that takes over would fire from stale state. These tests fail
on such an upgrade instead.
"""
from __future__ import annotations

import inspect

from celery import beat
from django_celery_beat.schedulers import DatabaseScheduler

from jobs.interfaces.beat import LeaderScheduler


def test_database_scheduler_rereads_every_entry_when_initial_read_is_set():
    source = inspect.getsource(DatabaseScheduler.schedule.fget)
    assert "if self._initial_read:" in source
    assert "self._schedule = self.all_as_schedule()" in source


def test_celery_scheduler_rebuilds_its_heap_when_heap_is_none():
    source = inspect.getsource(beat.Scheduler.tick)
    assert "self._heap is None" in source
    assert "self.populate_heap()" in source


def test_leader_scheduler_saves_last_runs_through_the_public_sync():
    assert "sync" in vars(DatabaseScheduler)
    source = inspect.getsource(LeaderScheduler.apply_async)
    assert "self.sync()" in source
    assert "_do_sync" not in source and "_tasks_since_sync" not in source
