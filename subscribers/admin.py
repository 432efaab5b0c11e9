"""Admin for events and deliveries: each event with its deliveries; replay to one or to all."""
from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from subscribers import bus
from subscribers.models import Delivery, Event, Lane


class DeliveryInline(admin.TabularInline):
    model = Delivery
    fields = ("subscriber", "status", "job", "replays", "created_at")
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.action(description="Replay selected events to all their subscribers")
def replay_events(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[Event]) -> None:
    count = sum(len(bus.replay(event)) for event in queryset)
    modeladmin.message_user(request, f"{count} delivery(ies) replayed", messages.SUCCESS)


@admin.register(Event)
class EventAdmin(admin.ModelAdmin):
    list_display = ("id", "name", "key", "created_at")
    list_filter = ("name",)
    search_fields = ("=id", "name", "key")
    readonly_fields = ("name", "data", "key", "created_at")
    inlines = (DeliveryInline,)
    actions = (replay_events,)
    show_full_result_count = False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.action(description="Replay selected deliveries (to their subscriber only)")
def replay_deliveries(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[Delivery]) -> None:
    for delivery in queryset.select_related("event"):
        bus.replay(delivery.event, delivery.subscriber)
    modeladmin.message_user(request, f"{queryset.count()} delivery(ies) replayed", messages.SUCCESS)


@admin.register(Delivery)
class DeliveryAdmin(admin.ModelAdmin):
    list_display = ("id", "event", "subscriber", "key", "status", "job", "replays")
    list_filter = ("subscriber",)
    list_select_related = ("event", "job")
    readonly_fields = ("event", "subscriber", "key", "job", "replays", "created_at")
    actions = (replay_deliveries,)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(Lane)
class LaneAdmin(admin.ModelAdmin):
    """Which job holds each (subscriber, key)'s turn (read only: the bus moves lanes itself)."""

    list_display = ("subscriber", "key", "job", "delivery")
    list_filter = ("subscriber",)
    search_fields = ("=key",)
    readonly_fields = ("subscriber", "key", "job", "delivery")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False
