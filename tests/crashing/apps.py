from __future__ import annotations

from django.apps import AppConfig


class CrashingConfig(AppConfig):
    """A job type whose handler ends its worker process (installed by CONVEYOR_TEST_APPS=tests.crashing
    in the processes a test starts; the test declares it in its own process for the time it runs)."""

    name = "tests.crashing"
    label = "crashing"
    verbose_name = "Crashing jobs (tests only)"

    def ready(self) -> None:
        from jobs.engine import registry
        from tests.crashing.jobs import CRASH

        registry.add(CRASH)
