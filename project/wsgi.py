"""WSGI entry point for gunicorn (`gunicorn project.wsgi`)."""
import os

from django.core.wsgi import get_wsgi_application

from project import embedded

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
embedded.start()  # the embedded servers, unless DATABASE_URL / REDIS_URL name others
application = get_wsgi_application()
