"""Admin for jobs and chains: filters, retry and cancel actions, a chain's steps with timings."""
from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from jobs import control
from jobs.models import Chain, Job


@admin.action(description="Retry selected jobs (dead, failed or cancelled)")
def retry_jobs(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[Job]) -> None:
    done = sum(control.retry(job) for job in queryset)
    modeladmin.message_user(request, f"{done} job(s) queued again", messages.SUCCESS)


@admin.action(description="Cancel selected jobs")
def cancel_jobs(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[Job]) -> None:
    done = sum(control.cancel(job) for job in queryset)
    modeladmin.message_user(request, f"{done} job(s) cancelled or asked to stop", messages.SUCCESS)


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = ("id", "type", "queue", "status", "attempt", "max_attempts", "priority", "progress", "worker", "chain", "created_at", "finished_at")
    list_filter = ("status", "type", "queue")
    search_fields = ("=id", "type", "idempotency_key")
    actions = (retry_jobs, cancel_jobs)
    readonly_fields = tuple(f.name for f in Job._meta.fields)
    list_select_related = ("chain",)
    show_full_result_count = False  # no COUNT(*) over a large table on every page

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # jobs are enqueued by code or the API, with validation


class StepInline(admin.TabularInline):
    model = Job
    fk_name = "chain"
    fields = ("chain_index", "type", "queue", "status", "attempt", "worker", "started_at", "finished_at", "duration", "error")
    readonly_fields = fields
    ordering = ("chain_index", "id")
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    @admin.display(description="seconds")
    def duration(self, job: Job) -> str:
        return f"{job.duration:.3f}" if job.duration is not None else "-"


@admin.register(Chain)
class ChainAdmin(admin.ModelAdmin):
    list_display = ("id", "__str__", "status", "created_at", "finished_at")
    list_filter = ("status",)
    readonly_fields = ("steps", "status", "created_at", "finished_at")
    inlines = (StepInline,)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


# --- Schedules: django-celery-beat's admin, with each schedule's next run and last job ------------
from django.utils import timezone  # noqa: E402
from django.utils.html import format_html  # noqa: E402
from django_celery_beat.admin import PeriodicTaskAdmin  # noqa: E402
from django_celery_beat.models import PeriodicTask  # noqa: E402

from jobs.creation import platform_key  # noqa: E402
from jobs.schedules import PREFIX  # noqa: E402


class ScheduleAdmin(PeriodicTaskAdmin):
    list_display = ("name", "enabled", "scheduler", "next_run", "last_job", "last_run_at", "total_run_count")

    @admin.display(description="next run")
    def next_run(self, task: PeriodicTask) -> str:
        if not task.enabled:
            return "disabled"
        try:
            remaining = task.schedule.remaining_estimate(task.last_run_at or timezone.now())
        except Exception:  # a schedule django-celery-beat cannot evaluate (removed row...)
            return "-"
        return (timezone.now() + remaining).strftime("%Y-%m-%d %H:%M:%S UTC")

    @admin.display(description="last job")
    def last_job(self, task: PeriodicTask) -> str:
        if not task.name.startswith(PREFIX):
            return "-"
        key = platform_key("schedule", task.name[len(PREFIX) :], "")
        job = Job.objects.filter(idempotency_key__startswith=key).order_by("-id").only("id", "status").first()
        if job is None:
            return "-"
        return format_html('<a href="../../jobs/job/{}/change/">#{} {}</a>', job.pk, job.pk, job.status)


admin.site.unregister(PeriodicTask)
admin.site.register(PeriodicTask, ScheduleAdmin)
