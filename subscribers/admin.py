"""Admin for events and deliveries: each event with its deliveries; replay to one or to all.

Read-only pages (the bus writes these rows), with UTC timestamps to the second; deliveries filter
by status (waiting, each job status, expired). Replaying runs subscribers' side effects again, so
its actions need the jobs.operate permission (jobs.interfaces.admin.Operate), not only view."""
from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from jobs.interfaces.admin import Operate, ReadOnly, pre, pretty_json, stamp, stamp_text
from jobs.models import Status
from subscribers import bus
from subscribers.models import Delivery, Event, Lane


class DeliveryInline(admin.TabularInline):
    model = Delivery
    fields = ("subscriber", "status", "job", "replays", "created")
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True

    created = stamp("created_at", "created at")

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def get_queryset(self, request: HttpRequest) -> QuerySet[Delivery]:
        return super().get_queryset(request).select_related("job")


@admin.action(description="Replay selected events to all their subscribers", permissions=["operate"])
def replay_events(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[Event]) -> None:
    count = sum(len(bus.replay(event)) for event in queryset)
    modeladmin.message_user(request, f"{count} delivery(ies) replayed", messages.SUCCESS)


@admin.register(Event)
class EventAdmin(Operate, ReadOnly, admin.ModelAdmin):
    list_display = ("id", "name", "key", "created_at_utc")
    list_filter = ("name",)
    search_fields = ("=id", "name", "key")
    fields = ("name", "key", "created_at_utc", "data_json")
    readonly_fields = fields
    inlines = (DeliveryInline,)
    actions = (replay_events,)
    show_full_result_count = False

    created_at_utc = stamp("created_at", "created at")

    @admin.display(description="data")
    def data_json(self, event: Event) -> str:
        return pretty_json(event.data)


@admin.action(description="Replay selected deliveries (to their subscriber only)", permissions=["operate"])
def replay_deliveries(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[Delivery]) -> None:
    for delivery in queryset.select_related("event"):
        bus.replay(delivery.event, delivery.subscriber)
    modeladmin.message_user(request, f"{queryset.count()} delivery(ies) replayed", messages.SUCCESS)


class DeliveryStatusFilter(admin.SimpleListFilter):
    """Delivery.status as a filter: waiting (not released), its job's status, or expired (released,
    its job removed by retention)."""

    title = "status"
    parameter_name = "status"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [("waiting", "waiting"), *((s.value, s.label) for s in Status), ("expired", "expired")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Delivery]) -> QuerySet[Delivery]:
        value = self.value()
        if value == "waiting":
            return queryset.filter(released_at__isnull=True)
        if value == "expired":
            return queryset.filter(released_at__isnull=False, job__isnull=True)
        if value in Status.values:
            return queryset.filter(released_at__isnull=False, job__status=value)
        return queryset


@admin.register(Delivery)
class DeliveryAdmin(Operate, ReadOnly, admin.ModelAdmin):
    list_display = ("id", "event", "subscriber", "key", "status", "job", "replays", "created_at_utc")
    list_filter = (DeliveryStatusFilter, "subscriber")
    list_select_related = ("event", "job")
    fields = (
        "event",
        "subscriber",
        "key",
        "status",
        "job",
        "attempt",
        "replays",
        "created_at_utc",
        "released_at_utc",
        "finished_at_utc",
        "error_text",
    )
    readonly_fields = fields
    actions = (replay_deliveries,)
    show_full_result_count = False

    created_at_utc = stamp("created_at", "created at")
    released_at_utc = stamp("released_at", "released at")

    @admin.display(description="finished at")
    def finished_at_utc(self, delivery: Delivery) -> str:
        return stamp_text(delivery.finished_at)

    @admin.display(description="error")
    def error_text(self, delivery: Delivery) -> str:
        return pre(delivery.error)


@admin.register(Lane)
class LaneAdmin(ReadOnly, admin.ModelAdmin):
    """Which job holds each (subscriber, key)'s turn (read only: the bus moves lanes itself)."""

    list_display = ("subscriber", "key", "job", "delivery")
    list_filter = ("subscriber",)
    search_fields = ("=key",)
    readonly_fields = ("subscriber", "key", "job", "delivery")
