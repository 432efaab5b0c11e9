"""Who may operate: retry and cancel jobs, replay events (the admin's actions and buttons, the
operations page). These change state (a job runs again, a subscriber's side effects happen again),
so viewing is not enough: `jobs.operate` (Job.Meta.permissions). Superusers have it; give it to
operators, directly or through a group."""
from __future__ import annotations

from django.http import HttpRequest

OPERATE = "jobs.operate"


def can_operate(request: HttpRequest) -> bool:
    return request.user.is_active and request.user.has_perm(OPERATE)
