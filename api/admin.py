from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from api.models import ApiToken


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ("id", "user", "scope", "created_at", "expires_at", "last_used_at", "state")
    list_filter = ("scope",)
    list_select_related = ("user",)
    search_fields = ("user__email", "user__username")
    readonly_fields = ("user", "key_hash", "scope", "created_at", "expires_at", "last_used_at")
    actions = ("revoke",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # `manage.py token --email E` prints a new token once

    def has_change_permission(self, request: HttpRequest, obj: ApiToken | None = None) -> bool:
        return False  # a token is shown and revoked, never edited

    @admin.display(description="state")
    def state(self, token: ApiToken) -> str:
        return "expired" if token.expired else "active"

    @admin.action(description="Revoke the selected tokens", permissions=["delete"])
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiToken]) -> None:
        count, _ = queryset.delete()
        self.message_user(request, f"revoked {count} token(s)", messages.SUCCESS)
