"""The NinjaAPI at /api/ assembled: api.root's API (auth, errors, the document) with the routers
of each capability. Here, above them all, so that `api` imports neither jobs nor subscribers."""
from __future__ import annotations

from api.root import api
from jobs.interfaces import http as jobs_http
from jobs.interfaces import queues_http
from subscribers import http as events_http

api.add_router("/jobs", jobs_http.router)
api.add_router("/chains", jobs_http.chains)
api.add_router("/events", events_http.router)
api.add_router("", jobs_http.catalog)
api.add_router("", events_http.catalog)
api.add_router("", queues_http.router)

__all__ = ["api"]
