"""The chaos run's ledger: every side effect of its jobs, one row per (job, effect)."""
from __future__ import annotations

from django.db import models


class Effect(models.Model):
    """Written by the jobs themselves (hosts/jobs.py), `INSERT ... ON CONFLICT (job_id,
    effect) DO UPDATE SET times = times + 1`: a second write of the same effect is counted in
    `times`, never hidden. Effects: `run:<attempt>` (a handler ran that attempt), `done` (the
    outcome's transaction committed), `seen:<attempt>` (a keyed event's delivery ran), `atomic`
    (an atomic type's write, committed with its outcome; `seq`: the attempt that wrote it)."""

    job_id = models.BigIntegerField()
    effect = models.CharField(max_length=64)
    times = models.IntegerField(default=1)
    host = models.CharField(max_length=64, default="")
    key = models.CharField(max_length=200, null=True)
    seq = models.IntegerField(null=True)
    at = models.DateTimeField()

    class Meta:
        db_table = "chaos_effect"
        constraints = [models.UniqueConstraint(fields=["job_id", "effect"], name="chaos_effect_once")]
