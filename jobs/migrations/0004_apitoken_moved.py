# ApiToken moved to the api app (api 0001); the table stays, only Django's state changes.

from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ('jobs', '0003_scheduledeclaration'),
        ('api', '0001_initial'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.DeleteModel(name='ApiToken')],
            database_operations=[],
        ),
    ]
