from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True
    dependencies: list = []

    operations = [
        migrations.CreateModel(
            name="Effect",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("job_id", models.BigIntegerField()),
                ("effect", models.CharField(max_length=64)),
                ("times", models.IntegerField(default=1)),
                ("host", models.CharField(default="", max_length=64)),
                ("key", models.CharField(max_length=200, null=True)),
                ("seq", models.IntegerField(null=True)),
                ("at", models.DateTimeField()),
            ],
            options={"db_table": "chaos_effect"},
        ),
        migrations.AddConstraint(
            model_name="effect",
            constraint=models.UniqueConstraint(fields=("job_id", "effect"), name="chaos_effect_once"),
        ),
    ]
