from __future__ import annotations

from django.apps import AppConfig


class CrashingConfig(AppConfig):
    """Job types whose handler ends its worker process, or waits for the test to, and one with a
    short time limit (installed by CONVEYOR_TEST_APPS=tests.crashing in the processes a test
    starts; the test declares its type in its own process for the time it runs)."""

    name = "tests.crashing"
    label = "crashing"
    verbose_name = "Crashing jobs (tests only)"

    def ready(self) -> None:
        from jobs.engine import registry
        from tests.crashing.jobs import ATOMIC, CRASH, SHORT_LIMIT

        registry.add(CRASH)
        registry.add(ATOMIC)
        registry.add(SHORT_LIMIT)
