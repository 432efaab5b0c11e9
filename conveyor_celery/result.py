"""Celery's result handles, backed by the rows: `AsyncResult`, `GroupResult`.

An id is the job's id (`"42"`), `"chain:7"` for a chain (its last step's result; `"chain:7:1"`
its step 1's, what `res.parent` gives) or
`"group:7"` for a group started alone; a task called with `task_id=` has the id it was given (the
job's idempotency key `celery:<id>`). `AsyncResult(id)` in any process reads the same row.
`get()` waits with `jobs.wait` / `jobs.wait_chain` (LISTEN/NOTIFY: no polling).
"""
from __future__ import annotations

import math
import time
from typing import Any, Iterator

from celery import states
from celery.backends.base import BaseBackend
from celery.contrib.abortable import ABORTED
from celery.exceptions import TaskRevokedError, TimeoutError as CeleryTimeoutError
from django.db import DatabaseError

from conveyor_celery.errors import exception_from

#: A row's status as Celery's state.
STATES = {
    "pending": states.PENDING,
    "running": states.STARTED,
    "failed": states.RETRY,
    "succeeded": states.SUCCESS,
    "dead": states.FAILURE,
    "cancelled": states.REVOKED,
}
#: The longest one `jobs.wait` is asked for; a longer get() waits again.
WAIT_SLICE = 300.0


def _remaining(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic()) if math.isfinite(deadline) else WAIT_SLICE


def _deadline(timeout: float | None) -> float:
    return time.monotonic() + float(timeout) if timeout is not None else math.inf


class Rows:
    """The result backend an `AsyncResult` names (`result.backend`): the job rows, where the result
    is. Tools that ask a result for its backend before reading it (Flower's `/api/task/apply` and
    `/api/task/async-apply`: a `DisabledBackend` means "no state to show", and `connection_errors`
    what a wait may raise) found none and failed with AttributeError (a 500)."""

    #: Waiting on a row raises what the row's reads raise: Flower answers them 503.
    connection_errors: tuple[type[BaseException], ...] = ()

    def __repr__(self) -> str:
        return "<conveyor_celery.Rows: the job rows in PostgreSQL>"


ROWS = Rows()


def _reported(job: Any) -> tuple[str, Any] | None:
    """The state and meta a running task gave `update_state` (conveyor_celery.task.report_state)."""
    import json

    from conveyor_celery.declarations import STATE_MARK

    if not job.progress_message.startswith(STATE_MARK):
        return None
    found = json.loads(job.progress_message[len(STATE_MARK):])
    return found["state"], found["meta"]


def _of_job(task_id: str) -> AsyncResult | None:
    """The row-backed result of an id that can name a job or a chain (None for one that cannot:
    a `chain:` id without a number, a number past PostgreSQL's bigint), Django set up."""
    if task_id.startswith("chain:") and not task_id[6:].isdigit():
        return None
    if task_id.isdigit() and int(task_id) > 2**63 - 1:
        return None
    django_ready()
    return AsyncResult(task_id)


def django_ready() -> None:
    """Set Django up in a process that only built the Celery app (`celery result`, `celery call`,
    Flower): the rows are read through its models."""
    from django.apps import apps

    if not apps.ready:
        import django

        django.setup()


class RowsBackend(BaseBackend):
    """The Celery app's result backend (`CELERY_RESULT_BACKEND`): reads a task's state and result
    from its job's row, stores nothing (the runner writes the row; nothing grows in Redis).

    What reads results by id through the app, not through a task's call, finds the job: Flower's
    `/api/task/result/<id>` (it answered 503, "result backend is not configured"), `celery result
    <id>`, `celery.result.AsyncResult("42").state`. An id is what `AsyncResult` above takes: a job's
    id (also the task id of its message, jobs.engine.envelope), `chain:<id>`, or a `task_id=` given
    to a durable task's call; any other id is PENDING, as Celery answers for an id it never saw."""

    #: A database away: Flower answers 503 ("result backend unavailable"), not 500.
    connection_errors = (DatabaseError,)

    def __init__(self, app: Any = None, url: str | None = None, **kwargs: Any) -> None:
        super().__init__(app, url=url, **kwargs)

    def as_uri(self, include_password: bool = False) -> str:
        return "conveyor-rows://"

    def _get_task_meta_for(self, task_id: str) -> dict[str, Any]:
        pending = {"task_id": task_id, "status": states.PENDING, "result": None, "traceback": None, "children": []}
        result = _of_job(task_id)
        job = result._job() if result is not None else None  # noqa: SLF001 - this module's own class
        if job is None:
            return pending
        return {"task_id": task_id, "status": result.state, "result": result._value(job), "traceback": result.traceback,  # noqa: SLF001
                "children": [], "date_done": job.finished_at, "name": job.type}

    def store_result(self, task_id: str, result: Any, state: str, traceback: Any = None, request: Any = None,
                     **kwargs: Any) -> Any:
        """Nothing is stored (the runner wrote the row), but for an abort: Celery's
        `AbortableAsyncResult.abort()` (Flower's `POST /api/task/abort/<id>`) stores the state
        ABORTED for the task to notice; a job's is Conveyor's cancel (a waiting job ends cancelled,
        a running one is asked to stop: `ctx.cancelled`). Flower answered "Aborted" and nothing
        happened."""
        if state == ABORTED:
            job = _of_job(task_id)
            if job is not None:
                job.revoke()
        return result

    def _store_result(self, task_id: str, result: Any, state: str, traceback: Any = None, request: Any = None,
                      **kwargs: Any) -> Any:
        return result

    def _forget(self, task_id: str) -> None:
        """Results live in the row until retention removes it: nothing to forget."""

    def _save_group(self, group_id: str, result: Any) -> Any:
        return result

    def _restore_group(self, group_id: str) -> Any:
        return None

    def _delete_group(self, group_id: str) -> None:
        return None


class AsyncResult:
    """A task's result as Celery's `AsyncResult` shows it, read from its job's row."""

    backend = ROWS

    def __init__(self, id: str, backend: Any = None, task_name: str | None = None, app: Any = None, parent: Any = None) -> None:  # noqa: A002 - Celery's name
        self.id = str(id)
        self._parent = parent

    def _chain_ref(self) -> tuple[int, int | None]:
        """(chain id, step index) of a `chain:<id>` (None: the chain's last step) or `chain:<id>:<step>` id."""
        parts = self.id.split(":")
        return int(parts[1]), (int(parts[2]) if len(parts) > 2 else None)

    @property
    def parent(self) -> AsyncResult | None:
        """A chain's previous step's result (Celery's `res.parent`, `res.parent.parent`): a
        `chain:<id>:<step>` result; None for the first step and for a job called alone."""
        if self._parent is not None or not self.id.startswith("chain:"):
            return self._parent
        from jobs.models import Chain

        chain_id, step = self._chain_ref()
        if step is None:
            steps = Chain.objects.filter(pk=chain_id).values_list("steps", flat=True).first()
            step = len(steps or ()) - 1
        return AsyncResult(f"chain:{chain_id}:{step - 1}") if step > 0 else None

    @parent.setter
    def parent(self, value: Any) -> None:
        self._parent = value

    task_id = property(lambda self: self.id)

    def __repr__(self) -> str:
        return f"<AsyncResult: {self.id}>"

    def __eq__(self, other: object) -> bool:
        other_id = getattr(other, "id", other)
        return isinstance(other_id, str) and other_id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    # -- the row --------------------------------------------------------------------------

    def _job(self) -> Any:
        """The job row (None while it is unknown: not committed yet, or never made)."""
        from jobs.models import Job

        if self.id.startswith("chain:"):
            return self._chain_job()
        query = Job.objects.filter(pk=int(self.id)) if self.id.isdigit() else Job.objects.filter(idempotency_key=f"celery:{self.id}")
        return query.first()

    def _chain_job(self) -> Any:
        """A chain's deciding job: its failed step's if it failed, else its last job. For one step
        (`chain:<id>:<step>`): a member that ended badly, else one not ended, else its last."""
        from jobs.models import Job

        chain_id, step = self._chain_ref()
        jobs = Job.objects.filter(chain_id=chain_id)
        if step is not None:
            jobs = jobs.filter(chain_index=step)
            unfinished = jobs.filter(status__in=("pending", "running", "failed")).order_by("member").first()
            bad = jobs.filter(status__in=("dead", "cancelled")).order_by("member").first()
            return bad or unfinished or jobs.order_by("-member", "-id").first()
        bad = jobs.filter(status__in=("dead", "cancelled")).order_by("chain_index", "member").first()
        return bad or jobs.order_by("-chain_index", "-member", "-id").first()

    def _chain_finished(self) -> bool | None:
        from jobs.models import Chain

        status = Chain.objects.filter(pk=self._chain_ref()[0]).values_list("status", flat=True).first()
        return None if status is None else status != "running"

    @property
    def state(self) -> str:
        job = self._job()
        if job is None:
            return states.PENDING
        if self.id.startswith("chain:") and self._chain_ref()[1] is None and job.status == "succeeded" and not self._chain_finished():
            return states.STARTED
        if job.status == "running" and (reported := _reported(job)) is not None:
            return reported[0]
        return STATES[job.status]

    status = state

    def ready(self) -> bool:
        return self.state in states.READY_STATES

    def successful(self) -> bool:
        return self.state == states.SUCCESS

    def failed(self) -> bool:
        return self.state == states.FAILURE

    @property
    def result(self) -> Any:
        """The return value after SUCCESS; the exception after FAILURE or while it waits to RETRY."""
        job = self._job()
        return None if job is None else self._value(job)

    info = result

    def _value(self, job: Any) -> Any:
        if job.status == "running" and (reported := _reported(job)) is not None:
            return reported[1]  # update_state's meta, as Celery's `info` of a PROGRESS state
        if job.status == "succeeded":
            return self._output(job)
        if job.status in ("dead", "failed") and job.error:
            return exception_from(job.error)
        if job.status == "cancelled":
            return TaskRevokedError(f"task {self.id} was revoked")
        return None

    def _output(self, job: Any) -> Any:
        if self.id.startswith("chain:") and job.member is not None:  # a chain ending with a group
            from jobs.models import Job

            members = Job.objects.filter(chain_id=job.chain_id, chain_index=job.chain_index).order_by("member")
            return list(members.values_list("output", flat=True))
        return job.output

    @property
    def traceback(self) -> str | None:
        job = self._job()
        return job.error if job is not None and job.status in ("dead", "failed") and job.error else None

    @property
    def date_done(self) -> Any:
        job = self._job()
        return job.finished_at if job is not None else None

    @property
    def name(self) -> str | None:
        job = self._job()
        return job.type if job is not None else None

    @property
    def retries(self) -> int:
        job = self._job()
        return max(0, job.attempt - 1) if job is not None else 0

    @property
    def args(self) -> list[Any] | None:
        job = self._job()
        return job.input.get("args") if job is not None else None

    @property
    def kwargs(self) -> dict[str, Any] | None:
        job = self._job()
        return job.input.get("kwargs") if job is not None else None

    # -- waiting and revoking ---------------------------------------------------------------

    def get(self, timeout: float | None = None, propagate: bool = True, interval: float = 0.5, no_ack: bool = True,
            follow_parents: bool = True, callback: Any = None, on_message: Any = None, on_interval: Any = None,
            disable_sync_subtasks: bool = True, **more: Any) -> Any:
        """Wait until the task is ready (SUCCESS, FAILURE or REVOKED) and return its result;
        FAILURE and REVOKED are raised unless `propagate=False`. celery.exceptions.TimeoutError
        after `timeout` seconds (None: wait as long as it takes)."""
        if on_message is not None:
            job = self._watch(on_message, _deadline(timeout), timeout, interval)
        else:
            job = self._wait(_deadline(timeout), timeout)
        value = self._value(job)
        if propagate and job.status in ("dead", "cancelled"):
            raise value
        return value

    wait = get

    def _watch(self, on_message: Any, deadline: float, timeout: float | None, interval: float) -> Any:
        """`get(on_message=...)` (the calling guide's "On message"): each state the task goes
        through (`update_state`'s PROGRESS and its meta, then its end) is handed to `on_message` as
        Celery's result messages are, read from the row every `interval` seconds while it runs (a
        state shorter than that may be missed; its end is still heard at once: the wait is the same)."""
        last = None
        while True:
            step = min(deadline, time.monotonic() + max(0.05, float(interval)))
            try:
                job, done = self._wait(step, timeout), True
            except CeleryTimeoutError:
                if time.monotonic() >= deadline:
                    raise
                job, done = self._job(), False
            state = self.state
            message = {"task_id": self.id, "status": state, "result": self._value(job) if job is not None else None,
                       "traceback": self.traceback if state == states.FAILURE else None, "children": []}
            if (state, repr(message["result"])) != last:
                last = (state, repr(message["result"]))
                on_message(message)
            if done:
                return job

    def _wait(self, deadline: float, timeout: float | None) -> Any:
        from jobs import WaitTimeout, wait, wait_chain

        while True:
            try:
                if self.id.startswith("chain:") and self._chain_ref()[1] is not None:
                    job = self._job()
                    if job is None or job.status in ("pending", "running", "failed"):
                        # not made yet, or a member still running: wait for it, or the chain's end
                        if job is None:
                            wait_chain(self._chain_ref()[0], _remaining(deadline))
                            job = self._job()
                            if job is None:
                                raise ValueError(f"no task {self.id}: its chain ended before this step ran")
                            continue
                        wait(job, _remaining(deadline))
                        continue
                    return job
                if self.id.startswith("chain:"):
                    wait_chain(self._chain_ref()[0], _remaining(deadline))
                    return self._job()
                job = self._job()
                if job is None:
                    raise ValueError(f"no task {self.id} (unknown, or its transaction has not committed yet)")
                return wait(job, _remaining(deadline))
            except WaitTimeout:
                if time.monotonic() >= deadline:
                    raise CeleryTimeoutError(f"The operation timed out ({timeout}s): task {self.id}") from None

    def forget(self) -> None:
        """Results live in the row until retention removes it: nothing to forget."""

    def revoke(self, connection: Any = None, terminate: bool = False, signal: Any = None, wait: bool = False,
               timeout: float | None = None) -> None:
        """Conveyor's cancel: a waiting job ends REVOKED at once, a running one is asked to stop
        (its task sees it through `self.request`'s job: `jobs` ctx.cancelled) and ends REVOKED.
        `wait=True` waits (up to `timeout`) until it has ended."""
        from jobs.engine import control
        from jobs.models import Job

        if self.id.startswith("chain:"):
            chain_id, step = self._chain_ref()
            waiting = Job.objects.filter(chain_id=chain_id, status__in=("pending", "running", "failed"))
            for job in waiting if step is None else waiting.filter(chain_index=step):
                control.cancel(job)
        else:
            job = self._job()
            if job is not None:
                control.cancel(job)
        if wait:
            try:
                self._wait(_deadline(timeout), timeout)
            except CeleryTimeoutError:
                pass


class GroupResult:
    """The results of a group's members, in member order; `id` is `group:<chain id>`."""

    def __init__(self, id: str | None = None, results: list[AsyncResult] | None = None, **more: Any) -> None:  # noqa: A002
        self.id = str(id)
        self.results = list(results) if results is not None else self._members()

    def _members(self) -> list[AsyncResult]:
        from jobs.models import Job

        chain_id = int(self.id.split(":", 1)[1])
        ids = Job.objects.filter(chain_id=chain_id, chain_index=0).order_by("member").values_list("pk", flat=True)
        return [AsyncResult(str(pk)) for pk in ids]

    @classmethod
    def restore(cls, id: str, backend: Any = None, app: Any = None) -> GroupResult:  # noqa: A002
        return cls(id)

    def save(self, backend: Any = None) -> GroupResult:
        return self  # the rows are the result

    def __repr__(self) -> str:
        return f"<GroupResult: {self.id} [{', '.join(r.id for r in self.results)}]>"

    def __len__(self) -> int:
        return len(self.results)

    def __iter__(self) -> Iterator[AsyncResult]:
        return iter(self.results)

    def __getitem__(self, index: int) -> AsyncResult:
        return self.results[index]

    def ready(self) -> bool:
        return all(r.ready() for r in self.results)

    def successful(self) -> bool:
        return all(r.successful() for r in self.results)

    def failed(self) -> bool:
        return any(r.failed() for r in self.results)

    def completed_count(self) -> int:
        return sum(1 for r in self.results if r.successful())

    def waiting(self) -> bool:
        return any(not r.ready() for r in self.results)

    def get(self, timeout: float | None = None, propagate: bool = True, **more: Any) -> list[Any]:
        """Every member's result in order (Celery's `join`): each waited for until the one deadline."""
        deadline = _deadline(timeout)
        out = []
        for r in self.results:
            left = None if timeout is None else max(0.0, deadline - time.monotonic())
            out.append(r.get(timeout=left, propagate=propagate))
        return out

    join = get

    join = get  # Celery's join: the members' results in order

    def revoke(self, **options: Any) -> None:
        for r in self.results:
            r.revoke()


def result_of(chain: Any, steps: list[Any]) -> Any:
    """What starting a canvas returns: a group alone, its GroupResult; otherwise the chain's last
    step's result (`chain:<id>`), as Celery returns the last task's AsyncResult."""
    from jobs import Group

    if len(steps) == 1 and isinstance(steps[0], Group):
        return GroupResult(f"group:{chain.pk}")
    return AsyncResult(f"chain:{chain.pk}")
