"""Pausing a queue or a job type: its jobs stay in the table, not claimed, until it is resumed.

A pause is a row of `jobs_pause` (a handful at most). Every claim reads it (store.PAUSED: an index
probe in the claim's own statement, so a pause takes effect at its commit, on every worker of
every host, with nothing cached). A claim that finds its job paused holds the row
(`held = 'paused'`, no message, store.hold_paused): it leaves Redis and the relay's indexes, so a
paused backlog costs nothing while it waits. Pausing never loses a job: the rows are all there,
and a job not yet claimed keeps its message in Redis (its claim will hold it).

A resume deletes the pause, then publishes the rows held for it in batches (each batch's
messages after its commit), so they are runnable at once. A row of a queue and a type both
paused stays held until both are resumed.

A claim that read the pause just before a resume committed skips its job without holding it (the
hold re-reads the pause, locked FOR SHARE, and finds it gone): that job's message is acked, and
the relay sends it again as a stale row (RELAY_STALE_SECONDS later). Nothing is lost either way.
"""
from __future__ import annotations

import datetime as dt
import logging

from django.db import transaction

from jobs.engine import registry, store
from jobs.engine.publish import publish_on_commit

log = logging.getLogger("conveyor.pauses")

KINDS = ("queue", "type")
RESUME_BATCH = 1000


class UnknownTarget(ValueError):
    """A queue no job type uses, or a job type the code does not declare."""


def check(kind: str, name: str) -> None:
    """Refuse a kind other than queue/type, or a name this code does not know."""
    if kind not in KINDS:
        raise UnknownTarget(f"kind: {kind!r} is neither 'queue' nor 'type'")
    if kind == "queue" and name not in registry.queues():
        raise UnknownTarget(f"no job type uses queue {name!r} (known queues: {', '.join(registry.queues())})")
    if kind == "type":
        try:
            registry.get(name)
        except registry.InvalidJob:
            raise UnknownTarget(f"unknown job type {name!r}") from None


def pause(kind: str, name: str, reason: str = "", by: str = "") -> dt.datetime:
    """Pause a queue or a job type; return since when it is paused (pausing again keeps the start
    and updates the reason)."""
    check(kind, name)
    since = store.pause(kind, name, reason, by)
    log.warning("%s %s paused by %s: %s", kind, name, by or "?", reason or "(no reason given)")
    return since


def resume(kind: str, name: str) -> int | None:
    """Resume a queue or a job type; return how many held jobs were published (None: it was not
    paused). Jobs held also by another pause (their type and their queue) stay held."""
    check(kind, name)
    with transaction.atomic():
        if not store.resume(kind, name):
            return None
    log.warning("%s %s resumed", kind, name)
    return release()


def release(batch: int = RESUME_BATCH) -> int:
    """Publish the rows held for pauses that are gone, a batch per transaction; return how many."""
    released = 0
    while True:
        with transaction.atomic():
            messages = store.release_paused(batch)
            publish_on_commit(messages)
        released += len(messages)
        if len(messages) < batch:
            return released


def paused() -> list[store.PauseRow]:
    return store.pauses()
