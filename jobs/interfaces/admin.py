"""Admin for jobs and chains: read-only pages with UTC timestamps to the second, retry and cancel
(bulk actions and buttons on a job's page), a chain's planned steps with timings and handoffs."""
from __future__ import annotations

import datetime as dt
import json
from typing import Any, Callable

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.db.models.expressions import RawSQL
from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from jobs.engine import control, why
from jobs.engine.chainview import chain_view
from jobs.engine.creation import MAX_MEMBERS
from jobs.models import RUNNABLE, Chain, Job, Status
from jobs.interfaces.permissions import can_operate

STAMP = "%Y-%m-%d %H:%M:%S UTC"
#: Members of each group listed on a chain's page at a time (`?members_from=` pages through).
ADMIN_MEMBERS = 50


def stamp_text(value: dt.datetime | None) -> str:
    """A timestamp to the second, in UTC, saying so."""
    return value.astimezone(dt.timezone.utc).strftime(STAMP) if value else "-"


def stamp(field: str, description: str | None = None) -> Callable[[Any, Any], str]:
    """A ModelAdmin method showing `field` as stamp_text (sortable by the field)."""

    @admin.display(description=description or field.replace("_", " "), ordering=field)
    def show(self: Any, obj: Any) -> str:
        return stamp_text(getattr(obj, field))

    show.__name__ = f"{field}_utc"
    return show


def pre(text: str) -> str:
    return format_html('<pre class="conveyor-pre">{}</pre>', text) if text else "-"


def pretty_json(value: Any) -> str:
    return pre(json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)) if value is not None else "-"


class ReadOnly:
    """Rows written by the platform only: viewable, never changed or deleted from the admin."""

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


class Operate:
    """A ModelAdmin whose actions declare `permissions=["operate"]`: Django shows and runs such an
    action only when `has_operate_permission` says yes (jobs.interfaces.permissions)."""

    def has_operate_permission(self, request: HttpRequest) -> bool:
        return can_operate(request)


@admin.action(description="Retry selected jobs (dead, failed or cancelled)", permissions=["operate"])
def retry_jobs(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[Job]) -> None:
    done = sum(control.retry(job) for job in queryset)
    modeladmin.message_user(request, f"{done} job(s) queued again", messages.SUCCESS)


@admin.action(description="Cancel selected jobs", permissions=["operate"])
def cancel_jobs(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[Job]) -> None:
    done = sum(control.cancel(job) for job in queryset)
    modeladmin.message_user(request, f"{done} job(s) cancelled or asked to stop", messages.SUCCESS)


RETRYABLE = (Status.DEAD, Status.FAILED, Status.CANCELLED)
CANCELLABLE = (*RUNNABLE, Status.RUNNING)


@admin.register(Job)
class JobAdmin(Operate, ReadOnly, admin.ModelAdmin):
    list_display = (
        "id",
        "type",
        "queue",
        "status",
        "attempt",
        "max_attempts",
        "priority",
        "progress_bar",
        "worker",
        "chain",
        "created_at_utc",
        "finished_at_utc",
    )
    list_filter = ("status", "held", "type", "queue")
    search_fields = ("=id", "type", "idempotency_key")
    actions = (retry_jobs, cancel_jobs)
    list_select_related = ("chain",)
    show_full_result_count = False  # no COUNT(*) over a large table on every page
    change_form_template = "admin/jobs/job/change_form.html"
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "type",
                    "queue",
                    "status",
                    "attempt",
                    "max_attempts",
                    "priority",
                    "worker",
                    "progress_bar",
                    "progress_message",
                    "cancel_requested",
                    "held",
                    "why_text",
                    "limit_key",
                )
            },
        ),
        (
            "Timing",
            {
                "fields": (
                    "created_at_utc",
                    "run_after_utc",
                    "published_at_utc",
                    "started_at_utc",
                    "finished_at_utc",
                    "duration_text",
                    "lease_expires_at_utc",
                    "updated_at_utc",
                )
            },
        ),
        ("Data", {"fields": ("input_json", "output_json", "error_text", "errors_text")}),
        ("Links", {"fields": ("chain", "chain_index", "parent", "idempotency_key")}),
    )
    readonly_fields = (
        "created_at_utc", "run_after_utc", "published_at_utc", "started_at_utc", "finished_at_utc", "lease_expires_at_utc",
        "updated_at_utc", "duration_text", "input_json", "output_json", "error_text", "errors_text", "progress_bar",
        "why_text",
    )

    created_at_utc = stamp("created_at", "created at")
    run_after_utc = stamp("run_after", "run after")
    published_at_utc = stamp("published_at", "published at")
    started_at_utc = stamp("started_at", "started at")
    finished_at_utc = stamp("finished_at", "finished at")
    lease_expires_at_utc = stamp("lease_expires_at", "lease expires at")
    updated_at_utc = stamp("updated_at", "updated at")

    def get_queryset(self, request: HttpRequest) -> QuerySet[Job]:
        # A list of jobs shows neither input nor output: read them only on a job's own page.
        return super().get_queryset(request).defer("input", "output", "errors")

    @admin.display(description="progress", ordering="progress")
    def progress_bar(self, job: Job) -> str:
        """ctx.progress as a bar, as on the operations page."""
        return format_html('<progress value="{}" max="100">{}%</progress> {}%', job.progress, job.progress, job.progress)

    @admin.display(description="duration")
    def duration_text(self, job: Job) -> str:
        if job.duration is not None:
            return f"{job.duration:.3f} s"
        return "running" if job.status == Status.RUNNING else "-"

    @admin.display(description="why waiting")
    def why_text(self, job: Job) -> str:
        """Why a job that has not started waits (jobs.engine.why): the reason, its details, alarms."""
        if job.status not in RUNNABLE:
            return "-"
        answer = why.why(job.pk)
        if answer is None:
            return "-"
        details = format_html_join("", "<li>{}: {}</li>", ((name, value) for name, value in answer.details.items()))
        alarms = format_html_join("", '<li class="conveyor-alarm"><strong>ALARM</strong>: {}</li>', ((a,) for a in answer.alarms))
        return format_html('<span class="conveyor-why" data-code="{}"><strong>{}</strong>: {}</span><ul>{}{}</ul>',
                           answer.code, answer.code, answer.words, details, alarms)

    @admin.display(description="input")
    def input_json(self, job: Job) -> str:
        return pretty_json(job.input)

    @admin.display(description="output")
    def output_json(self, job: Job) -> str:
        return pretty_json(job.output)

    @admin.display(description="error")
    def error_text(self, job: Job) -> str:
        return pre(job.error)

    @admin.display(description="errors, one per failed attempt")
    def errors_text(self, job: Job) -> str:
        return pretty_json(job.errors) if job.errors else "-"

    def change_view(self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict | None = None) -> HttpResponse:
        job = self.get_object(request, object_id)
        operate = job is not None and self.has_operate_permission(request)
        extra = {
            "can_retry": operate and job.status in RETRYABLE,
            "can_cancel": operate and job.status in CANCELLABLE,
        }
        return super().change_view(request, object_id, form_url, {**extra, **(extra_context or {})})


#: A chain's outline in the list of chains, made by PostgreSQL: each step's type, or a group's size
#: (the plan's members, with their inputs, never leave the database).
OUTLINE = """(SELECT string_agg(CASE WHEN s ? 'group' THEN 'group of ' || jsonb_array_length(s -> 'group')
                                 ELSE s ->> 'type' END, ' -> ' ORDER BY n)
               FROM jsonb_array_elements(jobs_chain.steps) WITH ORDINALITY AS e(s, n))"""


@admin.register(Chain)
class ChainAdmin(ReadOnly, admin.ModelAdmin):
    list_display = ("id", "outline", "status", "created_at_utc", "finished_at_utc")
    list_filter = ("status",)
    show_full_result_count = False
    fields = ("status", "created_at_utc", "finished_at_utc", "plan")
    readonly_fields = fields
    change_form_template = "admin/jobs/chain/change_form.html"

    created_at_utc = stamp("created_at", "created at")
    finished_at_utc = stamp("finished_at", "finished at")

    def get_queryset(self, request: HttpRequest) -> QuerySet[Chain]:
        # The plan (every member's planned input) is never loaded: its outline comes from SQL.
        return super().get_queryset(request).defer("steps").annotate(steps_outline=RawSQL(OUTLINE, []))

    @admin.display(description="steps")
    def outline(self, chain: Chain) -> str:
        return f"chain {chain.pk}: {getattr(chain, 'steps_outline', '') or ''}"

    def get_object(self, request: HttpRequest, object_id: str, from_field: str | None = None) -> Chain | None:
        chain = super().get_object(request, object_id, from_field)
        if chain is not None:  # the page of each group's members the chain's page lists
            try:
                chain.members_from = max(0, min(int(request.GET.get("members_from", 0)), MAX_MEMBERS))
            except ValueError:
                chain.members_from = 0
        return chain

    @admin.display(description="steps")
    def plan(self, chain: Chain) -> str:
        """Every planned step, with or without a job yet, as jobs.engine.chainview.chain_view computes it:
        a group step with its members counted by status and one page of them (`?members_from=`)."""
        members_from = getattr(chain, "members_from", 0)

        def seconds(value: float | None) -> str:
            return f"{value:.3f} s" if value is not None else "-"

        def job_cells(job: Job | None) -> tuple[str, ...]:
            if job is None:
                return ("-", "-", "-", "-", "-")
            link = format_html('<a href="{}">#{}</a>', reverse("admin:jobs_job_change", args=[job.pk]), job.pk)
            return (link, job.queue, job.worker or "-", stamp_text(job.started_at), stamp_text(job.finished_at))

        rows = []
        pages = []
        for step in chain_view(chain, members_from, ADMIN_MEMBERS, full_jobs=False)["steps"]:
            if step.get("members") is not None:  # a group: one row for the step, one per member shown
                counted = ", ".join(f"{n} {status}" for status, n in step["member_statuses"].items())
                name = f"group of {step['member_count']} (on failure: {step['on_failure']}; {counted})"
                rows.append(("chain-step chain-group", step["index"], name, "-", step["status"], "-", "-", "-", "-",
                             seconds(step["duration_seconds"]), seconds(step["handoff_seconds"])))
                for member in step["members"]:
                    link, queue, worker, started, finished = job_cells(member["job"])
                    rows.append(("chain-member", f"{step['index']}.{member['member']}", member["type"], link, member["status"],
                                 queue, worker, started, finished, seconds(member["duration_seconds"]), ""))
                if step["members_next"] is not None or members_from:
                    pages.append(step["member_count"])
                continue
            link, queue, worker, started, finished = job_cells(step["job"])
            rows.append(("chain-step", step["index"], step["type"], link, step["status"], queue, worker, started, finished,
                         seconds(step["duration_seconds"]), seconds(step["handoff_seconds"])))
        body = format_html_join(
            "", '<tr class="{0}" data-status="{4}"><td>{1}</td><td>{2}</td><td>{3}</td><td>{4}</td><td>{5}</td><td>{6}</td>'
            "<td>{7}</td><td>{8}</td><td class=\"n\">{9}</td><td class=\"n\">{10}</td></tr>", rows,
        )
        table = format_html(
            '<table class="chain-plan"><thead><tr><th>#</th><th>type</th><th>job</th><th>status</th><th>queue</th>'
            "<th>worker</th><th>started</th><th>finished</th><th>ran</th><th>handoff</th></tr></thead><tbody>{}</tbody></table>",
            body,
        )
        jobs = reverse("admin:jobs_job_changelist") + f"?chain__exact={chain.pk}"
        links = [format_html('<a href="{}">every job of the chain</a>', jobs)]
        if pages:  # members are listed a page at a time
            if members_from:
                links.insert(0, format_html('<a class="chain-members-previous" href="?members_from={}">previous members</a>',
                                            max(0, members_from - ADMIN_MEMBERS)))
            if members_from + ADMIN_MEMBERS < max(pages):
                links.insert(0, format_html('<a class="chain-members-next" href="?members_from={}">next members</a>',
                                            members_from + ADMIN_MEMBERS))
            links.insert(0, format_html("<span>members {} to {} of each group</span>", members_from,
                                        members_from + ADMIN_MEMBERS - 1))
        return format_html("{}<p class=\"chain-pages\">{}</p>", table, format_html_join(" | ", "{}", ((link,) for link in links)))


# --- Schedules: django-celery-beat's admin, with each schedule's next run and last job ------------
from django.utils import timezone  # noqa: E402
from django_celery_beat.admin import PeriodicTaskAdmin  # noqa: E402
from django_celery_beat.models import PeriodicTask  # noqa: E402

from jobs.engine.creation import platform_key  # noqa: E402
from jobs.engine.schedules import PREFIX  # noqa: E402


def _permitted(name: str, *permissions: str) -> Callable[..., None]:
    """django-celery-beat's action `name`, declaring the permissions it needs (it declares none:
    Django would list and run it for anyone who may view schedules)."""
    base = getattr(PeriodicTaskAdmin, name)

    @admin.action(description=base.short_description, permissions=list(permissions))
    def action(self: PeriodicTaskAdmin, request: HttpRequest, queryset: QuerySet[PeriodicTask]) -> None:
        base(self, request, queryset)

    action.__name__ = name
    return action


class ScheduleAdmin(Operate, PeriodicTaskAdmin):
    list_display = ("name", "enabled", "scheduler", "next_run", "last_job", "last_run_utc", "total_run_count")
    last_run_utc = stamp("last_run_at", "last run at")

    # Enabling, disabling and toggling edit the schedule (as its form does): change permission.
    # Running one now enqueues its job at once: operating.
    enable_tasks = _permitted("enable_tasks", "change")
    disable_tasks = _permitted("disable_tasks", "change")
    toggle_tasks = _permitted("toggle_tasks", "change")
    run_tasks = _permitted("run_tasks", "operate")

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
