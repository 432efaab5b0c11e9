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

app = Celery("conveyor")
app.config_from_object("django.conf:settings", namespace="CELERY")
# The runner's task lives in jobs.tasks; job types are discovered by the jobs app itself.
app.autodiscover_tasks(["jobs"])
