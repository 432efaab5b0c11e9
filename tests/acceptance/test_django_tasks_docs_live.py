"""The Django docs' tasks topic, on Conveyor: its examples (tests/djtasks_docs, copied unchanged)
enqueued and read back as the docs do, run by a real worker that sends the e-mails to files."""
from __future__ import annotations

import os
import tempfile
from datetime import datetime
from functools import partial
from pathlib import Path

import pytest

from django.db import transaction

from conveyor_tasks import compat
from examples.djtasks.models import Run as Thing
from jobs.models import Job
from tests.djtasks_docs import basic, queued, results, with_context

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True, databases="__all__"), pytest.mark.usefixtures("stop_together")]
TaskResultStatus = compat.TaskResultStatus


@pytest.fixture
def worker(live):
    outbox = tempfile.mkdtemp(prefix="cv-mail-", dir=os.environ.get("CONVEYOR_DATA"))
    env = {"EMAIL_BACKEND": "django.core.mail.backends.filebased.EmailBackend", "EMAIL_FILE_PATH": outbox}
    live.start("--grace", "3", "--concurrency", "2", mode="worker", name="docs", env=env)
    return Path(outbox)


def _finished(result, timeout=30.0):
    """The docs read a result back with refresh(); Conveyor's backend can wait for it, no polling."""
    compat.task_backends["default"].wait(result, timeout)
    result.refresh()
    return result


async def _aenqueue():
    return await basic.email_users.aenqueue(emails=["a@example.com"], subject="async", message="Hello there!")


def test_the_docs_tasks_topic_examples_run_on_conveyor(worker):
    """One worker for every example (a worker's start is most of such a test's time)."""
    from asgiref.sync import async_to_sync

    # "Enqueueing Tasks"
    email_users = basic.email_users
    result = email_users.enqueue(
        emails=["user@example.com"],
        subject="You have a message",
        message="Hello there!",
    )
    # "Retrieving Task results": by id, later, somewhere else
    result_id = result.id
    result = email_users.get_result(result_id)
    assert result.status in (TaskResultStatus.READY, TaskResultStatus.RUNNING)
    _finished(result)
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.return_value == 1  # send_mail's count of messages sent
    assert result.is_finished and result.attempts == 1 and result.errors == []
    sent = "".join(p.read_text() for p in worker.iterdir())
    assert "Hello there!" in sent and "user@example.com" in sent

    # @task(priority=2, queue_name="emails"): a Conveyor queue the worker consumes
    queued_result = queued.email_users.enqueue(emails=["user@example.com"], subject="You have a message", message="Hello there!")
    assert Job.objects.get(pk=int(queued_result.id)).queue == "emails"
    assert _finished(queued_result).return_value == 1
    # "modified_task = email_users.using(priority=10)"
    again = queued.email_users.using(priority=10).enqueue(emails=["b@example.com"], subject="s", message="m")
    assert again.task.priority == 10 and _finished(again).status == TaskResultStatus.SUCCESSFUL

    # @task(takes_context=True): context.attempt and context.task_result.id in the worker
    in_context = with_context.email_users.enqueue(emails=["user@example.com"], subject="You have a message", message="Hello there!")
    assert _finished(in_context).status == TaskResultStatus.SUCCESSFUL and in_context.return_value == 1

    # aenqueue / aget_result
    awaited = async_to_sync(_aenqueue)()
    assert async_to_sync(basic.email_users.aget_result)(awaited.id).id == awaited.id
    assert _finished(awaited).return_value == 1

    # "Modifying Tasks": email_users.priority is 0, email_users.using(priority=10).priority 10
    assert (basic.email_users.priority, basic.email_users.using(priority=10).priority) == (0, 10)

    # "Enqueueing Tasks": arguments are JSON; a tuple comes back a list, and the task fails on it
    with pytest.raises(TypeError, match="datetime"):
        results.process_data.enqueue(datetime.now())
    doubled = results.double_dictionary.enqueue((1, 2, 3))
    with pytest.raises(ValueError):  # "Task has not finished yet" (or has failed)
        doubled.return_value
    assert _finished(doubled).status == TaskResultStatus.FAILED
    assert "TypeError: unhashable type: 'list'" in doubled.errors[0].traceback
    assert doubled.errors[0].exception_class is TypeError

    # "Transactions": the row is written in the caller's transaction, so both forms see the Thing
    with transaction.atomic():
        Thing.objects.create(task="docs", result_id="t1", attempt=1, pid=990001)
        inside = results.my_task.enqueue(thing_num=990001)
    with transaction.atomic():
        Thing.objects.create(task="docs", result_id="t2", attempt=1, pid=990002)
        transaction.on_commit(partial(results.my_task.enqueue, thing_num=990002))
    assert _finished(inside).status == TaskResultStatus.SUCCESSFUL
    [later] = Job.objects.filter(type=inside.task.module_path, input__kwargs__thing_num=990002)
    try:
        from django.tasks import default_task_backend
    except ImportError:  # Django < 6: the backport
        from django_tasks import default_task_backend
    got = default_task_backend.get_result(str(later.pk))  # "regardless of which kind of Task"
    assert _finished(got).status == TaskResultStatus.SUCCESSFUL

    # "Updating results": refresh(), or await arefresh()
    async def arefreshed():
        await got.arefresh()
        return got.status
    assert async_to_sync(arefreshed)() == TaskResultStatus.SUCCESSFUL
