"""The one place that builds the Celery app (configured from Django settings, CELERY_ namespace)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")


def run_by_celery_command(argv: list[str]) -> bool:
    """Whether this process is `celery -A project ...` (the script, or `python -m celery`)."""
    program = Path(argv[0]) if argv and argv[0] else Path()
    return program.name == "celery" or (program.name == "__main__.py" and program.parent.name == "celery")


if run_by_celery_command(sys.argv):
    # A worker, beat or flower started on its own: the embedded servers, unless DATABASE_URL /
    # REDIS_URL name others (every other importer of this module starts its own, or none).
    from project import embedded

    embedded.start()

# kombu's Redis transports with the closed-connection workaround (kombu#582): before any connection.
from project import broker  # noqa: E402

broker.install()

if run_by_celery_command(sys.argv) and ({"worker", "beat"} & set(sys.argv)):
    # OTEL_* asked for tracing (project/tracing.py): set up before the pool forks.
    from project import tracing

    tracing.setup("worker" if "worker" in sys.argv else "beat")

# `inspect conf` / `report` (and Flower's worker page) without the passwords in URLs (project/inspection.py).
from project import inspection  # noqa: E402

inspection.install()

class ConveyorCelery(Celery):
    """Celery's app, whose call by name of a job type makes the job: Flower's `POST
    /api/task/send-task/<job type>`, `celery call`, a project's `send_task`.

    The call is `settings.CONVEYOR_CALL_BY_NAME` (`conveyor_celery.calls:job_call`), named, as
    Celery names its result backend, so that this module (which the engine imports to publish)
    imports nothing above the engine; it returns a result, or None for a name that is no job type
    (Celery sends that call itself)."""

    def send_task(self, name, args=None, kwargs=None, **options):  # noqa: ANN001, ANN003, ANN201 - Celery's signature
        if name not in self.tasks:
            from celery.utils.imports import symbol_by_name
            from django.conf import settings

            result = symbol_by_name(settings.CONVEYOR_CALL_BY_NAME)(name, args, kwargs, options)
            if result is not None:
                return result
        return super().send_task(name, args, kwargs, **options)


app = ConveyorCelery("conveyor")
app.config_from_object("django.conf:settings", namespace="CELERY")
# The runner's task lives in jobs.tasks; job types are discovered by the jobs app itself.
app.autodiscover_tasks(["jobs"])
