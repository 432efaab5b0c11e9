from django.apps import AppConfig


class JobsConfig(AppConfig):
    name = "jobs"
    verbose_name = "Jobs and chains"

    def ready(self) -> None:
        from jobs import housekeeping, registry, signals  # noqa: F401 - declare and connect

        # Every installed app's `jobs` module declares its job types (one feature slice each).
        registry.autodiscover()
