"""Worker life-cycle signals: the recovery loop starts and stops with the worker; connections
are checked around each task."""
from __future__ import annotations

import multiprocessing

from celery.signals import (
    task_postrun,
    task_prerun,
    task_received,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
    worker_shutting_down,
)
from django.conf import settings
from django.db import close_old_connections

from jobs.engine import consumers, cpu_policy, handoff, orphan, recovery, runner, telemetry, tracing
from jobs.engine.deadlines import deadlines


@worker_ready.connect
def start_recovery(sender: object = None, **kwargs: object) -> None:
    recovery.start()


@worker_ready.connect
def watch_the_supervisor(sender: object = None, **kwargs: object) -> None:
    """A supervisor killed outright leaves this worker draining alone: it ends itself past the
    grace (jobs.engine.orphan)."""
    orphan.watch(str(getattr(sender, "hostname", "") or ""))


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


#: 1 while the worker sends task events (Flower turned them on, or TASK_EVENTS): a byte of shared
#: memory made at import, in the worker's main process before its pool forks, written there as each
#: task is received, before the pool runs it (`note_task_events`), read by the pool's processes: a
#: chain's next step runs here with no message only while no monitor watches (jobs.engine.handoff),
#: so that Flower shows every step as a task of its own.
EVENTS_ON = multiprocessing.RawValue("b", 0)


def sends_task_events() -> bool:
    """Whether this worker sent task events when the task being run was received."""
    return bool(EVENTS_ON.value)


@worker_init.connect
def worker_cpu_policy(sender: object = None, **kwargs: object) -> None:
    """In the worker's main process, before its pool starts: under WORKER_CPU_POLICY=idle, where
    no idle cgroup applies (jobs.engine.cpu_policy.idle_cgroup), its session's autogroup at the
    lowest weight (jobs.engine.cpu_policy.lower_own_autogroup)."""
    if cpu_policy.idle_cgroup() is None:  # else the job threads take the idle cgroup (enter_job_thread)
        cpu_policy.lower_own_autogroup(settings.WORKER_CPU_POLICY)


@worker_shutdown.connect
def worker_idle_cgroup(sender: object = None, **kwargs: object) -> None:
    """Under WORKER_CPU_POLICY=idle, at the worker's end: the idle cgroup its job threads took is
    removed once empty (jobs.engine.cpu_policy.remove_idle_cgroup)."""
    if settings.WORKER_CPU_POLICY == "idle":
        cpu_policy.remove_idle_cgroup(patience=0, leaving_patience=0)  # no wait: its pool may still be ending (the supervisor tries after)


@worker_init.connect
def local_handoff_queues(sender: object = None, **kwargs: object) -> None:
    """The queues this worker was started with (its pool processes inherit them): a chain's next
    step on one of them may run here, with no message (jobs.engine.handoff), unless the worker
    sends task events (a monitor watches: EVENTS_ON)."""
    app = getattr(sender, "app", None)
    if app is not None:
        handoff.consuming(app.amqp.queues.consume_from)
        handoff.watch_events(sends_task_events)


@task_received.connect
def note_task_events(sender: object = None, **kwargs: object) -> None:
    """In the worker's main process, as each task is received, before its pool runs it: whether
    the worker sends task events now (Flower turns them on at run time), for the pool to read.
    Celery's dispatcher is enabled for the worker's heartbeats alone, its groups then ["worker"];
    `enable_events` adds "task" (groups None: every group, TASK_EVENTS=true)."""
    dispatcher = getattr(sender, "event_dispatcher", None)
    groups = getattr(dispatcher, "groups", None)
    EVENTS_ON.value = 1 if dispatcher is not None and dispatcher.enabled and (not groups or "task" in groups) else 0


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
def job_thread_cpu_policy(sender: object = None, **kwargs: object) -> None:
    """In the thread about to run a task (a prefork pool process's, a threads pool's, the solo
    worker's), once: WORKER_CPU_POLICY (jobs.engine.cpu_policy). The heartbeat's and the
    deadlines' threads start first, at the normal policy: the leases never starve with the jobs."""
    policy = settings.WORKER_CPU_POLICY
    if cpu_policy.pending(policy):
        runner.heartbeat.start()
        deadlines.start()
        cpu_policy.enter_job_thread(policy)


@task_prerun.connect
@task_postrun.connect
def drop_unusable_connections(sender: object = None, **kwargs: object) -> None:
    """Connections live across tasks (CELERY_DB_REUSE_MAX); one that failed or grew older than
    CONN_MAX_AGE is closed here, so a restarted PostgreSQL costs one failed task at most."""
    close_old_connections()
