from __future__ import annotations

from django.apps import AppConfig


class ConveyorTasksConfig(AppConfig):
    name = "conveyor_tasks"
    verbose_name = "django.tasks on Conveyor"

    def ready(self) -> None:
        # Every process (a worker above all) declares a task's job type when it first meets its
        # name: a worker knows no task module until a job of it arrives.
        from conveyor_tasks import types
        from jobs.engine import registry

        registry.add_resolver(types.resolve)
        registry.add_queues(types.configured_queues())
        types.declare_configured()
