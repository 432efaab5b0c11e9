from django.apps import AppConfig


class JobsConfig(AppConfig):
    name = "jobs"
    verbose_name = "Jobs and chains"

    def ready(self) -> None:
        from jobs.engine import registry
        # Declare the housekeeping job types, connect the signals, and register the admin (its
        # module is jobs/interfaces/admin.py, not the jobs/admin.py Django's autodiscover imports).
        from jobs.interfaces import admin, housekeeping, pause_admin, signals  # noqa: F401

        # Every installed app's `jobs` module declares its job types (one feature slice each).
        registry.autodiscover()
