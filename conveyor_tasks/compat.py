"""One import place for the tasks framework: Django's own `django.tasks` (Django 6.0+) when it is
there, else the `django-tasks` backport (`django_tasks`, Django 4.2-5.2). The two share their API;
only the exception names differ (`InvalidTask` / `InvalidTaskError`)."""
from __future__ import annotations

try:  # Django 6.0+
    from django.tasks import TaskContext, TaskResult, TaskResultStatus, task, task_backends
    from django.tasks.backends.base import BaseTaskBackend
    from django.tasks.base import Task, TaskError
    from django.tasks import exceptions
    from django.tasks.signals import task_enqueued, task_finished, task_started

    BUILT_IN = True
except ImportError:  # the backport
    from django_tasks import TaskContext, TaskResult, TaskResultStatus, task, task_backends  # type: ignore[no-redef]
    from django_tasks.backends.base import BaseTaskBackend  # type: ignore[no-redef]
    from django_tasks.base import Task, TaskError  # type: ignore[no-redef]
    from django_tasks import exceptions  # type: ignore[no-redef]
    from django_tasks.signals import task_enqueued, task_finished, task_started  # type: ignore[no-redef]

    BUILT_IN = False

InvalidTask = getattr(exceptions, "InvalidTask", None) or getattr(exceptions, "InvalidTaskError")
TaskResultDoesNotExist = exceptions.TaskResultDoesNotExist

__all__ = [
    "BUILT_IN", "BaseTaskBackend", "InvalidTask", "Task", "TaskContext", "TaskError", "TaskResult",
    "TaskResultDoesNotExist", "TaskResultStatus", "task", "task_backends", "task_enqueued",
    "task_finished", "task_started",
]
