"""WSGI entry point for gunicorn (`gunicorn project.wsgi`)."""
import os

from django.core.wsgi import get_wsgi_application

from project import embedded

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
embedded.start()  # the embedded servers, unless DATABASE_URL / REDIS_URL name others
from project import tracing  # noqa: E402

tracing.setup("web")  # OTEL_* asked for it: before Django loads its middleware
application = get_wsgi_application()
