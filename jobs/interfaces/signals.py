"""Worker life-cycle signals: the recovery loop starts and stops with the worker; connections
are checked around each task."""
from __future__ import annotations

import multiprocessing
import threading
import time

from celery.signals import (
    task_postrun,
    task_prerun,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutting_down,
)
from django.db import close_old_connections

from jobs.engine import consumers, handoff, recovery, runner, telemetry, tracing


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


#: 1 while the worker's main process sends task events: a byte of shared memory made before the
#: pool starts, so its processes (forked) read what the main process writes (`watch_task_events`).
_events_on = multiprocessing.RawValue("b", 0)
EVENTS_CHECK_SECONDS = 1.0


@worker_init.connect
def local_handoff_queues(sender: object = None, **kwargs: object) -> None:
    """The queues this worker was started with (its pool processes inherit them): a chain's next
    step on one of them may run here, with no message (jobs.engine.handoff), unless the worker
    sends task events."""
    app = getattr(sender, "app", None)
    if app is not None:
        handoff.consuming(app.amqp.queues.consume_from)
        handoff.watch_events(lambda: bool(_events_on.value))


@worker_ready.connect
def watch_task_events(sender: object = None, **kwargs: object) -> None:
    """Copy, every second, whether the worker sends task events (Flower turns them on and off in
    the main process at run time, Celery's `enable_events`) to where the pool processes read it."""
    dispatcher = getattr(sender, "event_dispatcher", None)
    if dispatcher is None:
        return

    def sends_task_events() -> int:
        # Celery's dispatcher is enabled for the worker's heartbeats alone, its groups then
        # ["worker"]; `enable_events` adds "task" (groups None: every group, TASK_EVENTS=true).
        groups = dispatcher.groups
        return 1 if dispatcher.enabled and (not groups or "task" in groups) else 0

    def copy() -> None:
        while True:
            _events_on.value = sends_task_events()
            time.sleep(EVENTS_CHECK_SECONDS)

    _events_on.value = sends_task_events()
    threading.Thread(target=copy, name="conveyor-task-events", daemon=True).start()


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
