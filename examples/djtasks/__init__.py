"""A plain Django app whose `@task` functions run durably on Conveyor: it imports nothing from
Conveyor, only the tasks framework (`django.tasks`, or the `django_tasks` backport on Django < 6).
The one line that makes them durable is the TASKS setting (project/settings.py)."""
