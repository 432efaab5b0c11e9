"""Beat entries naming a converted task: one job per tick, written by the leading beat.

`beat_schedule` / `CELERY_BEAT_SCHEDULE` entries are copied into django-celery-beat's tables by
its DatabaseScheduler (as ever), so they and the `PeriodicTask` rows made in the admin reach
`apply_async` the same way. An entry whose task is durable becomes the tick's job row with the
platform key of `jobs.interfaces.beat.enqueue_tick` (`conveyor:schedule:celery:<entry>:<tick time>`): two
beats, or a beat restarted mid-tick, make one job. Any other entry is sent as Celery sends it.
"""
from __future__ import annotations

import logging
from typing import Any

from jobs.interfaces.beat import LeaderScheduler, enqueue_tick, tick_time

from conveyor_celery import declarations as tasks

log = logging.getLogger("conveyor.beat")


class _Sent:
    def __init__(self, job_id: int) -> None:
        self.id = str(job_id)


class Scheduler(LeaderScheduler):
    """jobs.interfaces.beat.LeaderScheduler, and durable Celery tasks' entries as job rows."""

    def apply_async(self, entry: Any, producer: Any = None, advance: bool = True, **kwargs: Any) -> Any:
        if entry.task not in tasks.declared:
            return super().apply_async(entry, producer=producer, advance=advance, **kwargs)
        entry = self.reserve(entry) if advance else entry
        at = tick_time(entry)
        data = tasks.encode(entry.task, entry.args, entry.kwargs)
        job = enqueue_tick(f"celery:{entry.name}", entry.task, data, at)
        log.info("beat: %s tick %s -> job %s (%s)", entry.name, at.isoformat(), job.pk, entry.task)
        self.sync()  # as LeaderScheduler: a re-read must not see a stale last run
        return _Sent(job.pk)
