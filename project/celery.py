"""The one place that builds the Celery app (configured from Django settings, CELERY_ namespace)."""
from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

app = Celery("conveyor")
app.config_from_object("django.conf:settings", namespace="CELERY")
# The runner's task lives in jobs.tasks; job types are discovered by the jobs app itself.
app.autodiscover_tasks(["jobs"])
