"""Tables the demo slice writes: an e-mail outbox and a side-effect log for diagnostics."""
from __future__ import annotations

from django.db import models
from django.utils import timezone


class OutboxEmail(models.Model):
    """What notifications.send-email "sends": one row per idempotency key, so a re-run is harmless."""

    idempotency_key = models.CharField(max_length=255, unique=True)
    to = models.CharField(max_length=254)
    subject = models.CharField(max_length=200)
    body = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"to {self.to}: {self.subject}"


class Effect(models.Model):
    """One row per run of examples.count: the tests count these to see each job ran once."""

    job_id = models.BigIntegerField(db_index=True)
    attempt = models.PositiveIntegerField()
    worker_pid = models.PositiveIntegerField()
    created_at = models.DateTimeField(default=timezone.now)


class AuditEntry(models.Model):
    """Kept by the `order.*` subscriber: one row per order event it saw."""

    event_id = models.BigIntegerField(unique=True)
    name = models.CharField(max_length=200)
    key = models.CharField(max_length=200, null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)


class Arrival(models.Model):
    """Kept by diagnostics subscribers: which subscriber saw which event, in arrival order."""

    subscriber = models.CharField(max_length=200)
    event_id = models.BigIntegerField()
    key = models.CharField(max_length=200, null=True, blank=True)
    sequence = models.IntegerField(null=True)
    attempt = models.PositiveIntegerField(default=1)
    created_at = models.DateTimeField(default=timezone.now)
