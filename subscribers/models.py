"""The event log: every emitted event and every (event, subscriber) delivery is a row."""
from __future__ import annotations

from django.db import models
from django.utils import timezone

from jobs.models import Job


class Event(models.Model):
    name = models.CharField(max_length=200)
    data = models.JSONField(default=dict)
    #: Events with one key reach each subscriber one at a time, in the order they were emitted.
    key = models.CharField(max_length=200, null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["name", "-id"], name="event_name_idx")]

    def __str__(self) -> str:
        return f"{self.name} #{self.pk}" + (f" [{self.key}]" if self.key else "")


class Delivery(models.Model):
    """One subscriber's copy of an event: a job on the subscriber's queue once it may run.

    A keyed delivery waits (released_at is null) while an earlier delivery of the same key to
    the same subscriber is unfinished; that one's outcome releases it, in the same transaction.
    """

    event = models.ForeignKey(Event, on_delete=models.CASCADE, related_name="deliveries")
    subscriber = models.CharField(max_length=200)
    key = models.CharField(max_length=200, null=True, blank=True)
    #: The latest job carrying this delivery (a replay makes a new one).
    job = models.ForeignKey(Job, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    #: When its job was made; null while it waits for an earlier delivery of its key.
    released_at = models.DateTimeField(null=True, blank=True)
    replays = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["id"]
        verbose_name_plural = "deliveries"
        constraints = [models.UniqueConstraint(fields=["event", "subscriber"], name="one_delivery_per_subscriber")]
        indexes = [
            # The latest and the next waiting delivery of a (subscriber, key).
            models.Index(fields=["subscriber", "key", "id"], name="delivery_key_idx"),
            models.Index(fields=["job"], name="delivery_job_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.event} -> {self.subscriber}"

    @property
    def status(self) -> str:
        if self.released_at is None:
            return "waiting"
        # A released delivery whose job row is gone was finished and removed by retention.
        return self.job.status if self.job_id else "expired"

    @property
    def attempt(self) -> int | None:
        return self.job.attempt if self.job_id else None

    @property
    def error(self) -> str:
        return self.job.error if self.job_id else ""

    @property
    def finished_at(self):  # noqa: ANN201
        return self.job.finished_at if self.job_id else None
