"""The Django docs' tasks topic, on Conveyor: its examples (tests/djtasks_docs, copied unchanged)
enqueued and read back as the docs do, run by a real worker that sends the e-mails to files."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from conveyor_tasks import compat
from jobs.models import Job
from tests.djtasks_docs import basic, queued, with_context

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
