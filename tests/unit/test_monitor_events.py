"""What a monitor (Flower) shows of a skipped or cancelled run it did not see received."""
from __future__ import annotations

import time

from celery.app.task import Context
from celery.events.state import State

from jobs.interfaces.monitoring import shown


def test_a_skipped_run_whose_receipt_a_monitor_missed_shows_its_job_type_and_arguments():
    # given a run's request as the pool has it (the job type in `shadow`, the arguments' reprs
    # from the message: jobs.engine.publish)
    request = Context(id="u-1", shadow="examples.echo", args=[12], kwargs={}, argsrepr="(12,)",
                      kwargsrepr="{'chain': 3, 'step': 1}")
    # when a monitor that never got its task-received (Flower started after the worker took the
    # message) gets the task-skipped event, through Celery's own event state (Flower's)
    state = State()
    state.event({"type": "task-skipped", "uuid": "u-1", "hostname": "w@test", "timestamp": time.time(),
                 "local_received": time.time(), "clock": 1, "result": "job 12 skipped", **shown(request)})
    # then it shows the task by its job type and arguments (it showed the name null)
    task = state.tasks["u-1"]
    assert (task.name, task.args, task.kwargs, task.state) == ("examples.echo", "(12,)", "{'chain': 3, 'step': 1}", "SKIPPED")


def test_without_the_messages_reprs_the_arguments_are_shown_as_celery_shows_them():
    assert shown(Context(args=[7, 8], kwargs={"jobs": 2})) == {"args": "(7, 8)", "kwargs": "{'jobs': 2}"}


def test_a_runs_success_names_its_job_type_for_a_monitor_that_missed_its_receipt():
    # Flower listed a SUCCESS named None: it got the run's task-succeeded (sent by the worker's
    # main process) but not its task-received, which alone carries the name
    from kombu import Message

    from jobs.interfaces.monitoring import Request
    from project.celery import app

    headers = {"id": "u-9", "task": "conveyor.run", "shadow": "examples.echo", "argsrepr": "(12,)",
               "kwargsrepr": "{'chain': 3, 'step': 1}", "lang": "py", "retries": 0, "timelimit": [None, None],
               "root_id": "u-9", "parent_id": None, "group": None, "eta": None, "expires": None}
    message = Message(body=b'[[12], {}, {}]', content_type="application/json", content_encoding="utf-8",
                      headers=headers, delivery_info={"exchange": "", "routing_key": "default"}, properties={})
    sent: list[tuple[str, dict]] = []

    class Events:  # where the worker's event dispatcher would publish
        enabled = True

        def send(self, type_: str, **fields: object) -> None:
            sent.append((type_, fields))

    request = Request(message, app=app, task=app.tasks["conveyor.run"], hostname="w@test", eventer=Events())
    request.send_event("task-succeeded", result="'job 12 attempt 1/4 succeeded'", runtime=0.01)
    state = State()
    for type_, fields in sent:
        state.event({"type": type_, "hostname": "w@test", "timestamp": time.time(), "local_received": time.time(),
                     "clock": 1, **fields})
    task = state.tasks["u-9"]
    assert (task.name, task.args, task.kwargs, task.state) == ("examples.echo", "(12,)", "{'chain': 3, 'step': 1}", "SUCCESS")
