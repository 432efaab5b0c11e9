"""A `django.tasks` backend on Conveyor: every `@task` function of any Django app runs as a
durable Conveyor job (a row in PostgreSQL, claimed by a worker, retried, recovered).

An adapter at the edge: it translates between the tasks framework and the engine's public API
(`jobs.new_job`, `jobs.submit`, `jobs.wait`, `jobs.engine.control`) and never writes the job tables
itself. `TASKS = {"default": {"BACKEND": "conveyor_tasks.backend.ConveyorBackend"}}`; see
docs/django-tasks.md.
"""
