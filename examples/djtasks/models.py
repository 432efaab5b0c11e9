"""One row per run of a demo task: what the tests count to see each task ran once."""
from django.db import models
from django.utils import timezone


class Run(models.Model):
    task = models.CharField(max_length=200)
    result_id = models.CharField(max_length=64, db_index=True)
    attempt = models.PositiveIntegerField()
    pid = models.PositiveIntegerField()
    created_at = models.DateTimeField(default=timezone.now)
