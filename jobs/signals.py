"""Worker life cycle: every worker runs the relay and the reaper in its main process.

Both claim rows with SKIP LOCKED, so every worker of every machine may run them at once; a
deployment with no beat still recovers lost messages and dead workers' jobs.
"""
from __future__ import annotations

import logging
import threading

from celery.signals import task_postrun, task_prerun, worker_ready, worker_shutting_down
from django.conf import settings
from django.db import close_old_connections, connections

log = logging.getLogger("conveyor.recovery")
_stop = threading.Event()


def recovery_loop(stop: threading.Event, interval: float) -> None:
    from jobs import runner

    while not stop.wait(interval):
        try:
            runner.recover_once()
        except Exception as exc:  # PostgreSQL or Redis away: try again next tick
            log.warning("recovery pass failed: %s", exc)
            for conn in connections.all():
                conn.close()


@worker_ready.connect
def start_recovery(sender: object = None, **kwargs: object) -> None:
    _stop.clear()
    interval = float(settings.CONVEYOR["RECOVERY_INTERVAL"])
    threading.Thread(target=recovery_loop, args=(_stop, interval), name="conveyor-recovery", daemon=True).start()
    log.info("relay and reaper running every %.2fs", interval)


@worker_shutting_down.connect
def stop_recovery(sender: object = None, **kwargs: object) -> None:
    _stop.set()


@task_prerun.connect
@task_postrun.connect
def drop_unusable_connections(sender: object = None, **kwargs: object) -> None:
    """Connections live across tasks (CELERY_DB_REUSE_MAX); one that failed or grew older than
    CONN_MAX_AGE is closed here, so a restarted PostgreSQL costs one failed task at most."""
    close_old_connections()
