"""The web servers' Django ASGI handler (project/asgi.py serves it)."""
from __future__ import annotations

from django.core.handlers.asgi import ASGIHandler

from project.onehop import OneHopMiddleware


class Handler(OneHopMiddleware, ASGIHandler):
    """Django's ASGI handler, its plain sync middleware run in one thread hop each way (project/onehop.py)."""
