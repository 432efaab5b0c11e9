# Issue 22: a token's scopes are families (api.scopes), several per token, space-separated.
# The scopes before it are rewritten to what they allowed: read -> jobs:read; write -> every
# family (write included read). Reversed: a token with jobs:write is write again, any other read.

from django.db import migrations, models

FAMILIES = "events:emit jobs:read jobs:write operate"


def forward(apps, schema_editor):
    ApiToken = apps.get_model("api", "ApiToken")
    ApiToken.objects.filter(scope="read").update(scope="jobs:read")
    ApiToken.objects.filter(scope="write").update(scope=FAMILIES)


def backward(apps, schema_editor):
    ApiToken = apps.get_model("api", "ApiToken")
    ApiToken.objects.filter(scope__regex=r"(^| )jobs:write( |$)").update(scope="write")
    ApiToken.objects.exclude(scope="write").update(scope="read")


class Migration(migrations.Migration):

    dependencies = [
        ("api", "0002_scope_expiry"),
    ]

    operations = [
        migrations.AlterField(model_name="apitoken", name="scope", field=models.TextField()),
        migrations.RunPython(forward, backward),
    ]
