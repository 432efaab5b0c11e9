"""Celery settings chosen on purpose, checked where the worker reads them (the app's config)."""
from __future__ import annotations

from django.conf import settings

from project.celery import app


def test_worker_cancel_long_running_tasks_on_connection_loss_is_set_false_on_purpose():
    # Set explicitly (Celery 5 warns it will default to True in 6.0): a running job is fenced by
    # its attempt, so a Redis loss lets it finish and record once instead of cancelling it.
    assert settings.CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS is False
    assert app.conf.worker_cancel_long_running_tasks_on_connection_loss is False


def test_one_message_per_pool_process_acked_after_the_job():
    """celery#1933 (short tasks wait behind a long one a busy pool process prefetched) and
    celery#3541 (prefetched and running tasks lost with their worker): a pool process holds only
    the message it runs, and acks it once the job has ended (tests/acceptance/
    test_upstream_failure_modes.py runs both failure modes against real workers)."""
    assert app.conf.worker_prefetch_multiplier == 1
    assert app.conf.task_acks_late is True
    assert app.conf.task_reject_on_worker_lost is True
