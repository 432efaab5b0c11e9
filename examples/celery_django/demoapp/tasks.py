"""The sample's tasks, written as Celery's documentation writes them (the canvas guide's add, mul
and xsum; a task with autoretry_for and backoff; bind=True and self.retry).

The one line that makes them durable on Conveyor is the import below: it was
`from celery import shared_task`.
"""
import time

import celery
import celery.exceptions
import celery.states
from django.core.cache import cache

from conveyor_celery import shared_task  # was: from celery import shared_task


@shared_task
def add(x, y):
    return x + y


@shared_task
def mul(x, y):
    return x * y


@shared_task
def xsum(numbers):
    return sum(numbers)


@shared_task
def div(x, y):
    return x / y


@shared_task(bind=True, autoretry_for=(ConnectionError,), retry_backoff=1, retry_backoff_max=2,
             retry_jitter=False, max_retries=3)
def fetch(self, url, failures):
    """Fails with ConnectionError `failures` times (a flaky service), then answers."""
    if self.request.retries < failures:
        raise ConnectionError(f"{url} is unreachable")
    return {"url": url, "id": self.request.id, "retries": self.request.retries}


@shared_task(bind=True, max_retries=2, default_retry_delay=1)
def charge(self, order, declines):
    """Retries itself with self.retry(exc=..., countdown=...) while the card is declined."""
    try:
        if self.request.retries < declines:
            raise ValueError(f"card declined for order {order}")
    except ValueError as exc:
        raise self.retry(exc=exc, countdown=0.2)
    return {"order": order, "retries": self.request.retries}


@shared_task(name="demo.resize", queue="images", priority=3)
def resize(width):
    return {"width": width, "queue": "images"}


@shared_task(soft_time_limit=1)
def slow(seconds):
    time.sleep(seconds)
    return "finished"


@shared_task(rate_limit="2/s")
def ping(n):
    return time.time()


@shared_task(ignore_result=True)
def remember(key, value):
    cache.set(key, value, 300)


@shared_task
def on_error(task_id, key):
    """An errback (Celery's `errback(task_id)` form): records the failed task's id."""
    cache.set(key, task_id, 300)


@shared_task
def sleep_then_remember(seconds, key):
    for _ in range(int(seconds * 10)):  # work in small steps (a revoke stops it between two)
        time.sleep(0.1)
    cache.set(key, "ran", 300)
    return seconds


@celery.shared_task
def legacy_remember(key, value):
    """Not converted yet: a plain Celery task, run by the same workers."""
    cache.set(key, value, 300)


@shared_task
def slow_add(x, y, seconds):
    time.sleep(seconds)
    return x + y


@shared_task
def tsum(numbers):
    """The canvas guide's `tsum` (its map example: `~tsum.map([list(range(10)), list(range(100))])`)."""
    return sum(numbers)


@shared_task
def error_handler(request, exc, traceback):
    """The calling guide's error callback (`link_error=error_handler.s()`): Celery calls it with the
    failed task's request, exception and traceback. It prints them there; here it records them."""
    cache.set(f"demo:error_handler:{request.id}", {"id": request.id, "exc": repr(exc), "traceback": traceback}, 300)


class MyTask(celery.Task):
    """The tasks guide's handlers (`class MyTask(Task)` with `@app.task(base=MyTask)`): they print
    there; here each records what it was given, under the task's first argument."""

    def before_start(self, task_id, args, kwargs):
        cache.set(f"demo:handlers:{args[0]}:before_start", task_id, 300)

    def on_success(self, retval, task_id, args, kwargs):
        cache.set(f"demo:handlers:{args[0]}:on_success", retval, 300)

    def on_failure(self, exc, task_id, args, kwargs, einfo):
        cache.set(f"demo:handlers:{args[0]}:on_failure", repr(exc), 300)

    def after_return(self, status, retval, task_id, args, kwargs, einfo):
        cache.set(f"demo:handlers:{args[0]}:after_return", status, 300)


@shared_task(base=MyTask)
def my_task(x, y):
    return x + y


@shared_task(bind=True)
def upload_files(self, filenames):
    """The tasks guide's custom state: update_state(state='PROGRESS', meta={'current', 'total'})."""
    for i, file in enumerate(filenames):
        if not self.request.called_directly:
            self.update_state(state='PROGRESS',
                              meta={'current': i, 'total': len(filenames)})
        time.sleep(0.3)  # the upload
    return len(filenames)


@shared_task(bind=True)
def get_tweets(self, user):
    """The tasks guide's result stored by hand: update_state(state=SUCCESS, meta=...) then Ignore."""
    timeline = [f"{user}: hello", f"{user}: again"]  # twitter.get_timeline(user)
    if not self.request.called_directly:
        self.update_state(state=celery.states.SUCCESS, meta=timeline)
    raise celery.exceptions.Ignore()


@shared_task(bind=True, acks_late=True)
def requeues(self):
    """The tasks guide's Reject(requeue=True): runs again once, redelivered the second time."""
    if not self.request.delivery_info['redelivered']:
        raise celery.exceptions.Reject('no reason', requeue=True)
    return 'received two times'


@shared_task
def raising_task():
    """The canvas guide's failing chord member."""
    raise KeyError("raising_task")


@shared_task
def on_chord_error(request, exc, traceback):
    """The canvas guide's chord errback (`tsum.s().on_error(on_chord_error.s())`): prints there."""
    cache.set(f"demo:on_chord_error:{request.id}", repr(exc), 300)


@shared_task(bind=True)
def hello(self, a, b):
    """The calling guide's "On message" task (its sleeps of 1 s halved), read with
    `r.get(on_message=on_raw_message, propagate=False)`."""
    time.sleep(0.5)
    self.update_state(state="PROGRESS", meta={'progress': 50})
    time.sleep(0.5)
    self.update_state(state="PROGRESS", meta={'progress': 90})
    time.sleep(0.5)
    return 'hello world: %i' % (a+b)
