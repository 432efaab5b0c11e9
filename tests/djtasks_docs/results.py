"""The Django docs' tasks topic, "Enqueueing Tasks", "Transactions" and "Task results": its tasks
copied unchanged (the topic's `Thing` model is the demo app's `Run`; `process_data` is named there
and not shown: any task taking one argument)."""
try:
    from django.tasks import task
except ImportError:  # Django < 6: the backport
    from django_tasks import task

from examples.djtasks.models import Run as Thing


@task()
def double_dictionary(key):
    return {key: key * 2}


@task
def process_data(data):
    return data


@task
def my_task(thing_num):
    Thing.objects.get(pid=thing_num)  # the topic's Thing.objects.get(num=thing_num)
