"""`ConveyorBackend`: the django.tasks backend that makes each enqueued task a Conveyor job.

    TASKS = {"default": {"BACKEND": "conveyor_tasks.backend.ConveyorBackend",
                         "QUEUES": ["default", "emails"],
                         "OPTIONS": {"RETRIES": 3, "TASKS": {"app.tasks.sync": {"retries": 5}}}}}

`enqueue` writes the row in the caller's transaction (`jobs.new_job` + `jobs.submit`), so a
rolled-back transaction leaves no task, and its message and `task_enqueued` go after the commit.
"""
from __future__ import annotations

from typing import Any

from django.db import transaction

import jobs
from conveyor_tasks import compat, results, types
from jobs.engine import control
from jobs.models import Job


class ConveyorBackend(compat.BaseTaskBackend):
    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    supports_priority = True

    def __init__(self, alias: str, params: dict[str, Any]) -> None:
        super().__init__(alias, params)
        self.options = dict(params.get("OPTIONS", {}))

    # --- enqueue -------------------------------------------------------------------------------

    def enqueue(self, task: compat.Task, args: Any, kwargs: Any) -> compat.TaskResult:
        self.validate_task(task)  # queue in QUEUES, priority range, run_after aware...
        stored_args = types.plain(list(args), "args")
        stored_kwargs = types.plain(dict(kwargs), "kwargs")
        types.declare(task, self)
        data: dict[str, Any] = {"args": stored_args, "kwargs": stored_kwargs, "backend": self.alias, "priority": task.priority}
        if task.run_after is not None:
            data["run_after"] = task.run_after.isoformat()
        job = jobs.new_job(jobs.Step(task.module_path, data, run_after=task.run_after, priority=types.priority(task.priority)))
        job.queue = task.queue_name  # `task.using(queue_name=...)`: this job's queue, not its type's
        jobs.submit([job])
        result = results.from_row(job, task)
        transaction.on_commit(lambda: compat.task_enqueued.send(type(self), task_result=result))
        return result

    # --- results -------------------------------------------------------------------------------

    def _row(self, result_id: Any) -> Job:
        try:
            return Job.objects.get(pk=int(result_id))
        except (TypeError, ValueError, OverflowError, Job.DoesNotExist):
            raise compat.TaskResultDoesNotExist(result_id) from None

    def _result(self, job: Job) -> compat.TaskResult:
        task = types.load(job.type)
        if task is None:  # a job that is no task's (a Conveyor job type, a task removed since)
            raise compat.TaskResultDoesNotExist(job.pk)
        return results.from_row(job, task)

    def get_result(self, result_id: str) -> compat.TaskResult:
        return self._result(self._row(result_id))

    def wait(self, result: compat.TaskResult | str, timeout: float) -> compat.TaskResult:
        """Block until the task has finished (SUCCESSFUL or FAILED; READY between attempts is not
        finished) and return its result read again: LISTEN/NOTIFY on the row's end (`jobs.wait`),
        no polling. Raises TimeoutError (`jobs.WaitTimeout`) past `timeout` seconds."""
        job = self._row(getattr(result, "id", result))
        return self._result(jobs.wait(job, timeout))

    async def await_result(self, result: compat.TaskResult | str, timeout: float) -> compat.TaskResult:
        from asgiref.sync import sync_to_async

        return await sync_to_async(self.wait, thread_sensitive=False)(result, timeout)

    # --- beyond the framework ------------------------------------------------------------------

    def cancel(self, result: compat.TaskResult | str) -> bool:
        """Cancel the task: a waiting one at once (FAILED, its row `cancelled`); a running one is
        asked to stop (it ends cancelled, FAILED, whatever it returns). False once finished."""
        return control.cancel(self._row(getattr(result, "id", result)))

    def step(self, task: compat.Task, *args: Any, **kwargs: Any) -> jobs.Step:
        """The task as a step of a Conveyor chain or a member of a group:
        `jobs.start_chain([backend.step(a, 1), jobs.Group([backend.step(b), backend.step(c)])])`."""
        self.validate_task(task)
        types.declare(task, self)
        data = {"args": types.plain(list(args), "args"), "kwargs": types.plain(dict(kwargs), "kwargs"), "backend": self.alias,
                "priority": task.priority}
        return jobs.Step(task.module_path, data, run_after=task.run_after, priority=types.priority(task.priority))

