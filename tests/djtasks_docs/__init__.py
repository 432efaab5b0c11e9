"""The Django docs' tasks topic examples (docs.djangoproject.com/en/6.0/topics/tasks/), copied
unchanged, one module per example (each defines `email_users`); only the import of `task` goes
through the backport on Django < 6. Run on Conveyor by tests/acceptance/test_django_tasks_docs_live.py."""
