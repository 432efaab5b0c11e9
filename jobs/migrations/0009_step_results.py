"""A group's outputs are stored once per chain step (jobs_stepresult), not copied into every job
of the step after it (`Job.results`, one copy per member: N x N for a group after a group).

The data moves: each (chain, step) that holds results gets its entries once, from one of its rows
(every row of a step held the same list), and every such row its count; then the column goes.
Backwards, the list is rebuilt into each row.
"""

import django.db.models.deletion
from django.db import migrations, models

FORWARD = """
INSERT INTO jobs_stepresult (chain_id, step, member, value)
SELECT one.chain_id, one.chain_index, e.n - 1, e.value
  FROM (SELECT DISTINCT ON (chain_id, chain_index) chain_id, chain_index, results
          FROM jobs_job
         WHERE results IS NOT NULL AND chain_id IS NOT NULL AND chain_index IS NOT NULL
           AND jsonb_typeof(results) = 'array'
         ORDER BY chain_id, chain_index, id) AS one,
       jsonb_array_elements(one.results) WITH ORDINALITY AS e(value, n)
    ON CONFLICT DO NOTHING;
UPDATE jobs_job SET results_count = jsonb_array_length(results)
 WHERE results IS NOT NULL AND chain_id IS NOT NULL AND jsonb_typeof(results) = 'array';
"""

BACKWARD = """
UPDATE jobs_job j SET results = (SELECT jsonb_agg(r.value ORDER BY r.member) FROM jobs_stepresult r
                                  WHERE r.chain_id = j.chain_id AND r.step = j.chain_index)
 WHERE j.results_count IS NOT NULL;
"""


class Migration(migrations.Migration):

    dependencies = [
        ('jobs', '0008_operate_permission'),
    ]

    operations = [
        migrations.CreateModel(
            name='StepResult',
            fields=[
                ('pk', models.CompositePrimaryKey('chain', 'step', 'member', blank=True, editable=False, primary_key=True, serialize=False)),
                ('step', models.PositiveIntegerField()),
                ('member', models.PositiveIntegerField()),
                ('value', models.JSONField(null=True)),
                ('chain', models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='+', to='jobs.chain')),
            ],
        ),
        migrations.AddField(
            model_name='job',
            name='results_count',
            field=models.PositiveIntegerField(blank=True, null=True),
        ),
        migrations.RunSQL(FORWARD, BACKWARD),
        migrations.RemoveField(
            model_name='job',
            name='results',
        ),
    ]
