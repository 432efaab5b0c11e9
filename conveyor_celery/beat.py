"""Beat entries naming a converted task: one job per tick, written by the leading beat.

`beat_schedule` / `CELERY_BEAT_SCHEDULE` entries are copied into django-celery-beat's tables by
its DatabaseScheduler (as ever), so they and the `PeriodicTask` rows made in the admin reach
`apply_async` the same way. An entry whose task is durable becomes the tick's job row with the
platform key of `jobs.interfaces.beat.enqueue_tick` (`conveyor:schedule:celery:<entry>:<tick time>`): two
beats, or a beat restarted mid-tick, make one job. Any other entry is sent as Celery sends it.
"""
from __future__ import annotations

import datetime as dt
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

    _warned: set[str] = set()

    def apply_async(self, entry: Any, producer: Any = None, advance: bool = True, **kwargs: Any) -> Any:
        if entry.task not in tasks.declared:
            return super().apply_async(entry, producer=producer, advance=advance, **kwargs)
        entry = self.reserve(entry) if advance else entry
        at = tick_time(entry)
        extra, priority = self._options(entry, at)
        data = tasks.encode(entry.task, entry.args, entry.kwargs, extra)
        job = enqueue_tick(f"celery:{entry.name}", entry.task, data, at, priority=priority)
        log.info("beat: %s tick %s -> job %s (%s)", entry.name, at.isoformat(), job.pk, entry.task)
        self.sync()  # as LeaderScheduler: a re-read must not see a stale last run
        return _Sent(job.pk)

    def _options(self, entry: Any, at: dt.datetime) -> tuple[dict[str, Any], int | None]:
        """The entry's options a tick's job applies: `expires` (seconds counted from the tick's
        time, the same in every beat, so two beats write the same job) and `priority`. A `queue`
        other than the task's is not applied (a job type has one queue): said once per entry."""
        from conveyor_celery.canvas import _expires

        options = entry.options or {}
        extra: dict[str, Any] = {}
        expires = options.get("expires")
        if expires is not None:
            if isinstance(expires, (int, float)):
                expires = at + dt.timedelta(seconds=float(expires))
            extra["expires"] = _expires(expires)
        priority = options.get("priority")
        queue = options.get("queue")
        queue = getattr(queue, "name", queue)
        if queue and queue != tasks.task_queue(entry.task) and entry.name not in self._warned:
            self._warned.add(entry.name)
            log.warning("beat: entry %s: queue=%r is not applied: durable task %s runs on its own queue %r "
                        "(declare it with queue= or task_routes)", entry.name, queue, entry.task, tasks.task_queue(entry.task))
        return extra, None if priority is None else min(9, max(0, int(priority)))
