"""Lanes: the one job holding each (subscriber, key)'s turn; a partial index of waiting deliveries;
an index of events by age for retention.

Existing rows: a key whose latest released delivery's job is unfinished gets a lane held by that
job. A key with deliveries waiting and no such job (left stuck by a replay before lanes) gets
none: its next emit, or the next `subscribers.cleanup` run, releases its first waiting delivery.
"""

import django.db.models.deletion
from django.db import migrations, models

OPEN_LANES = """
INSERT INTO subscribers_lane (subscriber, key, job_id, delivery_id)
SELECT latest.subscriber, latest.key, latest.job_id, latest.id
  FROM (SELECT DISTINCT ON (subscriber, key) id, subscriber, key, job_id
          FROM subscribers_delivery
         WHERE key IS NOT NULL AND released_at IS NOT NULL
         ORDER BY subscriber, key, id DESC) AS latest
  JOIN jobs_job j ON j.id = latest.job_id
 WHERE j.status NOT IN ('succeeded', 'dead', 'cancelled')
"""


class Migration(migrations.Migration):

    dependencies = [
        ('jobs', '0002_tune_jobs_table'),
        ('subscribers', '0003_delivery_released_at'),
    ]

    operations = [
        migrations.CreateModel(
            name='Lane',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('subscriber', models.CharField(max_length=200)),
                ('key', models.CharField(max_length=200)),
                ('delivery', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='+', to='subscribers.delivery')),
                ('job', models.ForeignKey(db_constraint=False, db_index=False, on_delete=django.db.models.deletion.DO_NOTHING, related_name='+', to='jobs.job')),
            ],
            options={
                'constraints': [
                    models.UniqueConstraint(fields=('subscriber', 'key'), name='one_lane_per_key'),
                    models.UniqueConstraint(fields=('job',), name='one_lane_per_job'),
                ],
            },
        ),
        migrations.AddIndex(
            model_name='delivery',
            index=models.Index(condition=models.Q(('released_at__isnull', True)), fields=['subscriber', 'key', 'id'], name='delivery_waiting_idx'),
        ),
        migrations.AddIndex(
            model_name='event',
            index=models.Index(fields=['created_at'], name='event_created_idx'),
        ),
        migrations.RunSQL(OPEN_LANES, migrations.RunSQL.noop),
        # Only the waiting deliveries are looked up by key now (the lane says whether a key is busy).
        migrations.RemoveIndex(
            model_name='delivery',
            name='delivery_key_idx',
        ),
    ]
