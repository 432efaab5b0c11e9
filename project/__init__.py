"""The Conveyor Django project: settings, the Celery app, roles, embedded services, `start`."""
from .celery import app as celery_app

__all__ = ("celery_app",)
