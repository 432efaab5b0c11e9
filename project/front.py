"""What a browser asks of the server's root: `/` and `/favicon.ico`.

`manage.py start` (and `make run`) print `HTTP on http://127.0.0.1:8000/`: opened in a browser,
that address was a bare 404, and every admin page asked for `/favicon.ico` (a 404 in the
browser's console on each first visit). The root now sends a browser where there is something to
see (the admin, or the API's documentation where the admin is not mounted), and the icon is a
small SVG.
"""
from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect

#: A rounded square with three boxes on a belt: the admin's blue, no file to serve.
ICON = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16">'
    '<rect width="16" height="16" rx="3" fill="#417690"/>'
    '<rect x="2" y="5" width="3" height="3" fill="#fff"/><rect x="6.5" y="5" width="3" height="3" fill="#fff"/>'
    '<rect x="11" y="5" width="3" height="3" fill="#fff"/><rect x="1.5" y="10" width="13" height="1.5" fill="#f5dd5d"/>'
    "</svg>"
)


def root(request: HttpRequest) -> HttpResponse:
    """`/`: the admin where it is mounted, else the API's documentation."""
    return HttpResponseRedirect("/api/docs" if settings.ADMIN_DISABLED else "/admin/")


def favicon(request: HttpRequest) -> HttpResponse:
    response = HttpResponse(ICON, content_type="image/svg+xml")
    response["Cache-Control"] = "public, max-age=86400"
    return response
