"""The relay's stale rows by publish time (issue 29): `job_stale_idx`, built CONCURRENTLY.

On a table of millions of finished rows a plain CREATE INDEX would stop every enqueue and outcome
for as long as it reads the table; CONCURRENTLY lets the work go on (it waits for the transactions
open when it starts, then builds), hence outside a transaction (`atomic = False`).
"""
from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    atomic = False

    dependencies = [("jobs", "0012_trace_context")]

    operations = [
        AddIndexConcurrently(
            model_name="job",
            index=models.Index(
                condition=models.Q(("published_at__isnull", False), ("status__in", ("pending", "failed"))),
                fields=["published_at"],
                name="job_stale_idx",
            ),
        ),
    ]
