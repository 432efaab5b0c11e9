"""Hand back the jobs of a worker that is gone for sure (its process tree was killed)."""
from __future__ import annotations

import logging

from django.db import connections
from django.db.models import F
from django.db.models.functions import Greatest
from django.utils import timezone

from jobs.models import Job, Status

log = logging.getLogger("conveyor.handback")


def hand_back(node: str) -> int:
    """Return `node`'s running jobs to pending, their interrupted attempt not counted.

    Only for a worker whose processes are all dead: none of them can record an outcome later.
    """
    if not node:
        return 0
    try:
        count = Job.objects.filter(status=Status.RUNNING, worker__startswith=f"{node}/").update(
            status=Status.PENDING,
            attempt=Greatest(F("attempt") - 1, 0),
            lease_expires_at=None,
            published_at=None,  # the relay publishes them within a tick
            run_after=timezone.now(),
            error=f"handed back: worker {node} stopped before finishing",
            updated_at=timezone.now(),
        )
    except Exception as exc:  # the database is away: the reaper returns them when leases expire
        log.warning("could not hand back the jobs of %s (%s); their leases will expire", node, exc)
        for conn in connections.all():
            conn.close()
        return 0
    if count:
        log.warning("handed back %d running job(s) of %s", count, node)
    return count
