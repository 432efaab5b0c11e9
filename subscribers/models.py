"""The event log: every emitted event and every (event, subscriber) delivery is a row."""
from __future__ import annotations

from django.db import models
from django.db.models import Q
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
        indexes = [
            models.Index(fields=["name", "-id"], name="event_name_idx"),
            # GET /api/events?key=: one key's events, newest first (`key = %s [AND id < before]
            # ORDER BY id DESC LIMIT n`), a walk of the key's entries, not of the whole log. Unkeyed
            # events are left out of it (a `key =` filter never matches them).
            models.Index(fields=["key", "-id"], condition=Q(key__isnull=False), name="event_key_idx"),
            # Retention: the events older than the cutoff.
            models.Index(fields=["created_at"], name="event_created_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.name} #{self.pk}" + (f" [{self.key}]" if self.key else "")


class Delivery(models.Model):
    """One subscriber's copy of an event: a job on the subscriber's queue once it may run.

    A keyed delivery waits (released_at is null) while an earlier delivery of the same key to
    the same subscriber holds the key's lane; that one's outcome releases it, in the same
    transaction (subscribers.delivery).
    """

    event = models.ForeignKey(Event, on_delete=models.CASCADE, related_name="deliveries")
    subscriber = models.CharField(max_length=200)
    key = models.CharField(max_length=200, null=True, blank=True)
    #: The latest job carrying this delivery (a replay makes a new one; the lane, if this delivery
    #: holds it, stays with the job that runs it in its key's order).
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
            # The next waiting delivery of a (subscriber, key): a probe of the few that wait, never
            # a walk over the key's history.
            models.Index(
                fields=["subscriber", "key", "id"], condition=Q(released_at__isnull=True), name="delivery_waiting_idx"
            ),
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


class Lane(models.Model):
    """A (subscriber, key)'s turn: the one job running a delivery of the key in its order.

    Taken by a keyed delivery released while the key has no lane (emit), handed by that job's end
    to the key's next waiting delivery, or deleted when none waits (subscribers.delivery), always
    under the key's advisory lock. A retry of an ended job or a replay runs outside the key's
    order: it neither takes nor releases the lane, so a key never has two deliveries in its order
    running at once. There is a row only while the key has a delivery in its order unfinished.
    """

    subscriber = models.CharField(max_length=200)
    key = models.CharField(max_length=200)
    #: The holder: its end (succeeded, dead, cancelled) hands the lane on. Not a constraint: the
    #: job store alone deletes jobs, and it deletes only ended ones, whose lane has moved on.
    job = models.ForeignKey(Job, on_delete=models.DO_NOTHING, db_constraint=False, db_index=False, related_name="+")
    #: The delivery the holder carries (its event is kept while it holds the lane).
    delivery = models.ForeignKey(Delivery, on_delete=models.PROTECT, related_name="+")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["subscriber", "key"], name="one_lane_per_key"),
            models.UniqueConstraint(fields=["job"], name="one_lane_per_job"),
        ]

    def __str__(self) -> str:
        return f"{self.subscriber} [{self.key}] held by job {self.job_id}"
