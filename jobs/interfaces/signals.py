"""Worker life-cycle signals: the recovery loop starts and stops with the worker; connections
are checked around each task."""
from __future__ import annotations

import os

from celery.signals import (
    task_postrun,
    task_prerun,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutting_down,
)
from django.conf import settings
from django.db import close_old_connections

from jobs.engine import consumers, handoff, recovery, runner, telemetry, tracing


@worker_init.connect
def be_nice(sender: object = None, **kwargs: object) -> None:
    """Lower the worker's priority to WORKER_NICE before its pool starts (the pool inherits it):
    beside HTTP servers, jobs yield the CPU to requests (project.roles.worker_nice)."""
    wanted = settings.WORKER_NICE or 0
    current = os.nice(0)
    if wanted > current:  # (raising it back would need privileges: a nicer parent stays so)
        os.nice(wanted - current)


@worker_ready.connect
def start_recovery(sender: object = None, **kwargs: object) -> None:
    recovery.start()


@worker_ready.connect
def start_consumer_heartbeat(sender: object = None, **kwargs: object) -> None:
    """Say in Redis which queues this worker consumes (jobs.engine.consumers), read each beat from
    its task consumer (a queue added or cancelled at run time shows at the next beat)."""
    def queues() -> list[str]:
        task_consumer = getattr(sender, "task_consumer", None)
        if task_consumer is not None:
            return [queue.name for queue in task_consumer.queues]
        return list(sender.app.amqp.queues.consume_from)

    consumers.start(sender.hostname, queues)


@worker_init.connect
def local_handoff_queues(sender: object = None, **kwargs: object) -> None:
    """The queues this worker was started with (its pool processes inherit them): a chain's next
    step on one of them may run here, with no message (jobs.engine.handoff)."""
    app = getattr(sender, "app", None)
    if app is not None:
        handoff.consuming(app.amqp.queues.consume_from)


@worker_process_init.connect
def in_a_prefork_pool_process(sender: object = None, **kwargs: object) -> None:
    """Celery sends this in each prefork pool process, the one pool that enforces time limits,
    and in the solo pool's main process too (which enforces none)."""
    from billiard.process import current_process

    runner.POOL_ENFORCES_TIME_LIMITS = current_process().name != "MainProcess"


@worker_shutting_down.connect
def stop_recovery(sender: object = None, **kwargs: object) -> None:
    consumers.stop()  # first: its queues show unconsumed at once, not after the key's expiry
    recovery.stop()
    telemetry.runs.flush()


@worker_process_shutdown.connect
def send_last_metrics(sender: object = None, **kwargs: object) -> None:
    """A prefork pool process ends without atexit: its runs' last increments go now, and its
    last batched spans (tracing on)."""
    telemetry.runs.flush()
    tracing.flush()


@task_prerun.connect
@task_postrun.connect
def drop_unusable_connections(sender: object = None, **kwargs: object) -> None:
    """Connections live across tasks (CELERY_DB_REUSE_MAX); one that failed or grew older than
    CONN_MAX_AGE is closed here, so a restarted PostgreSQL costs one failed task at most."""
    close_old_connections()
