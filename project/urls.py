"""URLs. The admin is mounted only where the role serves HTTP and ADMIN_DISABLED is not true."""
from django.conf import settings
from django.contrib import admin
from django.urls import include, path

from project import front, health, metrics
from project.api import api
from api.token_http import auth_api

urlpatterns = [
    path("", front.root, name="root"),
    path("favicon.ico", front.favicon, name="favicon"),
    path("health/live", health.live, name="health-live"),
    path("health/ready", health.ready, name="health-ready"),
    path("metrics", metrics.view, name="metrics"),
    path("api/", api.urls),
    path("auth/", auth_api.urls),
]
if not settings.ADMIN_DISABLED:
    # The operations page (jobs.interfaces.operations) before the admin's own URLs, under its prefix.
    urlpatterns += [path("admin/operations/", include("jobs.interfaces.operations")), path("admin/", admin.site.urls)]
