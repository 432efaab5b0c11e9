"""Subscribers: declared with @subscriber in each app's `subscribers` module.

Each subscriber is also a job type (`deliver:<name>`) on its own queue, so every delivery has
its own retries, backoff, timeout, dead-lettering and admin entry.
"""
from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from typing import Any, Callable

from api.errors import BadInput
from jobs.engine import registry as job_registry
from jobs.engine.registry import Backoff, JobType
from subscribers import delivery
from subscribers.delivery import EventData

__all__ = ["EventData", "InvalidEvent", "Subscriber", "subscriber", "matching", "all_subscribers", "get", "autodiscover"]

NAME = re.compile(r"^[a-z0-9][a-z0-9_.\-]*$")
PATTERN = re.compile(r"^[a-z0-9*][a-z0-9_.\-*]*$")


class InvalidEvent(BadInput):
    """An event that cannot be emitted or replayed: bad name, data or key, unknown subscriber."""


@dataclass(frozen=True)
class Subscriber:
    #: Unique, stable name (`examples.audit`), also the delivery job type's suffix.
    name: str
    #: An event name, or a pattern with `*` (`order.*` follows every `order.` event).
    pattern: str
    handler: Callable[..., Any]
    queue: str

    @property
    def job_type(self) -> str:
        return delivery.job_type(self.name)

    def matches(self, event_name: str) -> bool:
        return fnmatch.fnmatchcase(event_name, self.pattern)


_subscribers: dict[str, Subscriber] = {}


def subscriber(
    pattern: str,
    *,
    name: str | None = None,
    queue: str = "default",
    retries: int = 3,
    backoff: Backoff | None = None,
    timeout: int = 60,
    priority: int = job_registry.PRIORITY_DEFAULT,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Declare a subscriber: `@subscriber("order.placed", name="shop.confirm", queue="notifications")`.

    The handler is called as `handler(ctx, event)` with a jobs Context and an EventData.
    """

    def register(handler: Callable[..., Any]) -> Callable[..., Any]:
        sub_name = name or f"{handler.__module__.split('.')[0]}.{handler.__name__.replace('_', '-')}"
        if not PATTERN.match(pattern):
            raise job_registry.ImproperlyDeclared(f"subscriber {sub_name!r}: bad event pattern {pattern!r}")
        if not NAME.match(sub_name):
            raise job_registry.ImproperlyDeclared(f"subscriber name {sub_name!r}: use lowercase letters, digits, . _ -")
        if sub_name in _subscribers:
            raise job_registry.ImproperlyDeclared(f"subscriber {sub_name!r} is declared twice")
        sub = Subscriber(sub_name, pattern, handler, queue)
        job_registry.add(
            JobType(
                name=sub.job_type,
                handler=delivery.handler(handler, sub_name),
                queue=queue,
                retries=retries,
                backoff=backoff or Backoff(),
                timeout=timeout,
                priority=priority,
                on_finish=delivery.release_next,
            )
        )
        _subscribers[sub_name] = sub
        return handler

    return register


def matching(event_name: str) -> list[Subscriber]:
    return [sub for sub in all_subscribers() if sub.matches(event_name)]


def all_subscribers() -> list[Subscriber]:
    """Every subscriber, by name (the catalog, GET /api/subscribers)."""
    return sorted(_subscribers.values(), key=lambda s: s.name)


def get(name: str) -> Subscriber:
    try:
        return _subscribers[name]
    except KeyError:
        raise InvalidEvent(f"unknown subscriber {name!r}", {"subscriber": f"unknown subscriber {name!r}"}) from None


def autodiscover() -> None:
    from django.utils.module_loading import autodiscover_modules

    autodiscover_modules("subscribers")
