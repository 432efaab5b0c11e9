"""An index of events by key, newest first, for GET /api/events?key= (partial: keyed events only)."""

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('subscribers', '0004_lanes'),
    ]

    operations = [
        migrations.AddIndex(
            model_name='event',
            index=models.Index(condition=models.Q(('key__isnull', False)), fields=['key', '-id'], name='event_key_idx'),
        ),
    ]
