"""jobs_job.trace_context: the OpenTelemetry context a job was created in (issue 30).

A nullable column with no default: PostgreSQL adds it without rewriting the table."""
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('jobs', '0011_pauses'),
    ]

    operations = [
        migrations.AddField(
            model_name='job',
            name='trace_context',
            field=models.JSONField(blank=True, null=True),
        ),
    ]
