"""Celery settings chosen on purpose, checked where the worker reads them (the app's config)."""
from __future__ import annotations

from django.conf import settings

from project.celery import app


def test_worker_cancel_long_running_tasks_on_connection_loss_is_set_false_on_purpose():
    # Set explicitly (Celery 5 warns it will default to True in 6.0): a running job is fenced by
    # its attempt, so a Redis loss lets it finish and record once instead of cancelling it.
    assert settings.CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS is False
    assert app.conf.worker_cancel_long_running_tasks_on_connection_loss is False
