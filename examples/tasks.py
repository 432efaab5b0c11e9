"""A Celery task written as Celery's documentation writes it ("First steps with Django"), made
durable by its one import: `bench.jobs`' row "Celery's .delay() on Conveyor, one by one" calls it.

Declared only in the benchmark's processes (CONVEYOR_BENCH, set by bench/common.py), as the
bench's subscribers are (examples/subscribers.py): not in the development catalog.
`conveyor_celery`'s app imports every installed app's `tasks` module at start, so the enqueuing
process and every worker know it.
"""
from django.conf import settings

from conveyor_celery import shared_task  # was: from celery import shared_task

if settings.BENCH:

    @shared_task
    def add(x: int, y: int) -> int:
        return x + y
