from django.apps import AppConfig


class ChaosConfig(AppConfig):
    """The multi-host chaos run's job types and table (installed by CONVEYOR_TEST_APPS=hosts)."""

    name = "hosts"
    label = "chaos"
    verbose_name = "Chaos run (tests only)"
