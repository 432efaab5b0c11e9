"""Tune the jobs table for a queue's churn (DESIGN.md, "Where the time goes").

Every job row is updated several times (claim, heartbeat, outcome): free space on each page
(fillfactor) lets PostgreSQL update in place, and autovacuum visits after 2% of rows changed
instead of 20%, so finished rows do not bloat the claim and relay indexes.
"""
from django.db import migrations

TUNE = """
ALTER TABLE jobs_job SET (fillfactor = 80,
    autovacuum_vacuum_scale_factor = 0.02, autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_insert_scale_factor = 0.05);
"""
UNTUNE = """
ALTER TABLE jobs_job RESET (fillfactor, autovacuum_vacuum_scale_factor,
    autovacuum_analyze_scale_factor, autovacuum_vacuum_insert_scale_factor);
"""


class Migration(migrations.Migration):
    dependencies = [("jobs", "0001_initial")]
    operations = [migrations.RunSQL(TUNE, UNTUNE)]
