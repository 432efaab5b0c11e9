from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from api.models import ApiToken


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ("id", "user", "created_at")
    readonly_fields = ("user", "key_hash", "created_at")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # `manage.py token --email E` prints a new token once
