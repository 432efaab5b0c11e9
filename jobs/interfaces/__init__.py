"""The interfaces over the engine: the HTTP API (http), the admin, the operations page and
monitoring, the wait listener, beat, the signals, housekeeping job types, permissions and progress
for the commands. The Celery task module stays at jobs/tasks.py (Celery's autodiscover imports
`jobs.tasks`) and the commands at jobs/management/commands/ (where Django finds them)."""
