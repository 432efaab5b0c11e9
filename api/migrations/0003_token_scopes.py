# Issue 22: a token's scopes are families (api.scopes), several per token, space-separated, each
# needing a Django permission of the token's user. The scopes before it are rewritten to what they
# allowed: read -> jobs:read; write -> every family (write included read). Reversed: a token with
# jobs:write is write again, any other read.
#
# So that the tokens of API-only users (not staff, not superuser: a plain `manage.py user`)
# keep working, each such user is given the permissions behind its tokens' scopes (which cannot
# open the admin to them: they are not staff). A staff user who is not a superuser is given
# nothing: permissions would widen what they may do in the admin; their tokens answer 403 naming
# the permission until it is given (the admin, or `manage.py grant`). Superusers hold them all.

from django.db import migrations, models

FAMILIES = "events:emit jobs:read jobs:write operate"
# api.scopes.PERMISSIONS as (app label, model, codename, name), frozen here as migrations are.
PERMISSIONS = {
    "events:emit": ("subscribers", "event", "add_event", "Can add event"),
    "jobs:read": ("jobs", "job", "view_job", "Can view job"),
    "jobs:write": ("jobs", "job", "add_job", "Can add job"),
    "operate": ("jobs", "job", "operate", "Can retry and cancel jobs and replay events"),
}


def _permission(apps, family):
    ContentType = apps.get_model("contenttypes", "ContentType")
    Permission = apps.get_model("auth", "Permission")
    app_label, model, codename, name = PERMISSIONS[family]
    content_type, _ = ContentType.objects.get_or_create(app_label=app_label, model=model)
    permission, _ = Permission.objects.get_or_create(content_type=content_type, codename=codename, defaults={"name": name})
    return permission


def forward(apps, schema_editor):
    ApiToken = apps.get_model("api", "ApiToken")
    ApiToken.objects.filter(scope="read").update(scope="jobs:read")
    ApiToken.objects.filter(scope="write").update(scope=FAMILIES)
    api_only = ApiToken.objects.filter(user__is_staff=False, user__is_superuser=False).select_related("user")
    for token in api_only:
        families = {"events:emit" if word.startswith("events:emit") else word for word in token.scope.split()}
        token.user.user_permissions.add(*(_permission(apps, family) for family in sorted(families & PERMISSIONS.keys())))


def backward(apps, schema_editor):
    ApiToken = apps.get_model("api", "ApiToken")
    ApiToken.objects.filter(scope__regex=r"(^| )jobs:write( |$)").update(scope="write")
    ApiToken.objects.exclude(scope="write").update(scope="read")


class Migration(migrations.Migration):

    dependencies = [
        ("api", "0002_scope_expiry"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("jobs", "0008_operate_permission"),
        ("subscribers", "0001_initial"),
    ]

    operations = [
        migrations.AlterField(model_name="apitoken", name="scope", field=models.TextField()),
        migrations.RunPython(forward, backward),
    ]
