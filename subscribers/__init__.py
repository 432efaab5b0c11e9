"""The event bus: emit(), @subscriber, events and deliveries (each delivery is a job)."""
from __future__ import annotations

from typing import Any

__all__ = ["emit", "subscriber", "EventData", "InvalidEvent", "replay"]


def __getattr__(name: str) -> Any:
    # Lazy: importing `subscribers` must not import models before the app registry is ready.
    if name in ("emit", "replay"):
        from subscribers import bus

        return getattr(bus, name)
    if name in ("subscriber", "EventData", "InvalidEvent"):
        from subscribers import registry

        return getattr(registry, name)
    raise AttributeError(name)
