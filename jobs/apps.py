from django.apps import AppConfig


class JobsConfig(AppConfig):
    name = "jobs"
    verbose_name = "Jobs and chains"

    def ready(self) -> None:
        from jobs import registry

        # Every installed app's `jobs` module declares its job types (one feature slice each).
        registry.autodiscover()
        from jobs import signals  # noqa: F401 - connects the worker's recovery loop
