"""The Django app: every installed app's `tasks` module is imported when Django starts, so every
process (server, worker, beat) knows the job types of its converted tasks before any job runs."""
from __future__ import annotations

from django.apps import AppConfig


class ConveyorCeleryConfig(AppConfig):
    name = "conveyor_celery"
    label = "conveyor_celery"
    verbose_name = "Celery tasks on Conveyor"

    def ready(self) -> None:
        from django.utils.module_loading import autodiscover_modules

        import conveyor_celery  # noqa: F401 - wraps Celery's canvas classes

        autodiscover_modules("tasks")
