"""Admin for jobs and chains, branded Conveyor: read-only pages with UTC timestamps to the second,
retry and cancel (bulk actions and buttons on a job's page), a jobs list that fits 1400 px with a
failed job's last error, a job's attempts as a history (jobs.interfaces.attempts), a chain's
planned steps with timings and handoffs; django-celery-beat's admin with each schedule's next run,
its Clocked and Solar schedules listed only while used."""
from __future__ import annotations

import datetime as dt
import functools
import json
from typing import Any, Callable

from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.db.models.expressions import RawSQL
from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe

from jobs.engine import control, why
from jobs.engine.chainview import chain_view
from jobs.engine.creation import MAX_MEMBERS
from jobs.models import RUNNABLE, Chain, Job, Status
from jobs.interfaces import attempts, tracelinks
from jobs.interfaces.attempts import last_line, short_worker
from jobs.interfaces.permissions import can_operate

STAMP = "%Y-%m-%d %H:%M:%S UTC"
#: A list's timestamps: the column's header says UTC and the year (a list has no room to say them
#: on each row); the whole timestamp on hover.
LIST_STAMP = "%m-%d %H:%M:%S"

# The admin is Conveyor's, not "Django administration" (login page, header, tab titles).
admin.site.site_header = "Conveyor administration"
admin.site.site_title = "Conveyor admin"
admin.site.index_title = "Conveyor: jobs, chains, events and schedules"
# No site stands behind this admin (Conveyor is a backend; `/` leads here): no "View site" link.
admin.site.site_url = None


def _refusing_nul(admin_view: Callable[..., Callable[..., HttpResponse]]) -> Callable[..., Callable[..., HttpResponse]]:
    """The site's `admin_view`, each view refusing a query parameter with a NUL character.

    PostgreSQL can neither store nor compare a NUL in text: a list filter or lookup carrying one
    (`/admin/jobs/job/?status=%00`, `?type=`, `?queue=`, any app's changelist, Django's own and the
    third-party admins too) failed with a 500 (psycopg's DataError) instead of a clear error."""

    def wrap(view: Callable[..., HttpResponse], cacheable: bool = False) -> Callable[..., HttpResponse]:
        wrapped = admin_view(view, cacheable)

        def refusing(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            for key, values in request.GET.lists():
                if "\x00" in key or any("\x00" in value for value in values):
                    name = key.replace("\x00", "\\u0000")
                    return HttpResponse(f"Bad request: the query parameter '{name}' contains the NUL character (\\u0000), "
                                        "which no field can hold; remove it from the address.\n",
                                        status=400, content_type="text/plain; charset=utf-8")
            return wrapped(request, *args, **kwargs)

        return functools.update_wrapper(refusing, wrapped)

    return wrap


admin.site.admin_view = _refusing_nul(admin.site.admin_view)  # type: ignore[method-assign]
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


def list_stamp(field: str, description: str) -> Callable[[Any, Any], str]:
    """A list's column showing `field` to the second (its header says UTC), never wrapped."""

    @admin.display(description=f"{description} (UTC)", ordering=field)
    def show(self: Any, obj: Any) -> str:
        value = getattr(obj, field)
        if not value:
            return "-"
        utc = value.astimezone(dt.timezone.utc)
        return format_html('<time class="cv-nowrap" datetime="{}" title="{}">{}</time>', utc.isoformat(), stamp_text(utc),
                           utc.strftime(LIST_STAMP))

    show.__name__ = f"{field}_list"
    return show


def clock(value: dt.datetime | None) -> str:
    """A time of day to the second, UTC, on one line; the whole timestamp on hover (a chain's page
    gives its date once, in its own "created at")."""
    if not value:
        return "-"
    utc = value.astimezone(dt.timezone.utc)
    return format_html('<time class="cv-nowrap" datetime="{}" title="{}">{}</time>', utc.isoformat(), stamp_text(utc),
                       utc.strftime("%H:%M:%S"))


def pre(text: str) -> str:
    return format_html('<pre class="conveyor-pre">{}</pre>', text) if text else "-"


def _error_cell(error: str) -> str:
    """An attempt's error: its last line, the whole traceback one click away."""
    if not error:
        return ""
    return format_html('<details class="cv-error-details"><summary>{}</summary>{}</details>', last_line(error), pre(error))


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
    # Fits 1400 px beside the filters, one line a job: attempts as "n/max", a running job's
    # progress beside its status, the worker's node, the chain as a link, timestamps in UTC
    # without the year and zone on every row, the last error's last line for a failed or dead job
    # (its page has the whole history). The queue is a filter (and on the job's page).
    list_display = (
        "id",
        "type",
        "status_progress",
        "attempts",
        "error_short",
        "worker_short",
        "chain_link",
        "created_at_list",
        "finished_at_list",
    )
    list_display_links = ("id", "type")
    list_filter = ("status", "held", "type", "queue")
    search_fields = ("=id", "type", "idempotency_key")
    actions = (retry_jobs, cancel_jobs)
    show_full_result_count = False  # no COUNT(*) over a large table on every page
    change_list_template = "admin/jobs/job/change_list.html"
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
        ("Attempts", {"fields": ("attempts_table",)}),
        ("Data", {"fields": ("input_json", "output_json", "error_text")}),
        ("Links", {"fields": ("chain", "chain_index", "parent", "idempotency_key", "trace_link")}),
    )
    readonly_fields = (
        "created_at_utc", "run_after_utc", "published_at_utc", "started_at_utc", "finished_at_utc", "lease_expires_at_utc",
        "updated_at_utc", "duration_text", "input_json", "output_json", "error_text", "attempts_table", "progress_bar",
        "why_text", "trace_link",
    )

    created_at_utc = stamp("created_at", "created at")
    created_at_list = list_stamp("created_at", "created")
    finished_at_list = list_stamp("finished_at", "finished")
    started_at_utc = stamp("started_at", "started at")
    finished_at_utc = stamp("finished_at", "finished at")
    lease_expires_at_utc = stamp("lease_expires_at", "lease expires at")
    updated_at_utc = stamp("updated_at", "updated at")

    def get_queryset(self, request: HttpRequest) -> QuerySet[Job]:
        # A list of jobs shows neither input, output nor the attempts' history (a job's page reads
        # them); of the last error only its tail, cut in PostgreSQL (a traceback may be 10 kB).
        return super().get_queryset(request).defer("input", "output", "errors", "error").annotate(
            error_tail=RawSQL("right(jobs_job.error, 400)", [])
        )

    def get_object(self, request: HttpRequest, object_id: str, from_field: str | None = None) -> Job | None:
        # The page reads the whole row: the list's deferrals and tail are not for it.
        queryset = Job.objects.all()
        model = queryset.model
        field = model._meta.pk if from_field is None else model._meta.get_field(from_field)
        try:
            return queryset.get(**{field.name: field.to_python(object_id)})
        except (model.DoesNotExist, ValueError, TypeError, ValidationError):
            return None

    def changelist_view(self, request: HttpRequest, extra_context: dict | None = None) -> HttpResponse:
        # The list needs the width: the app sidebar stays closed on it (the breadcrumbs lead back).
        return super().changelist_view(request, {"is_nav_sidebar_enabled": False, **(extra_context or {})})

    @admin.display(description="attempts", ordering="attempt")
    def attempts(self, job: Job) -> str:
        return f"{job.attempt}/{job.max_attempts}"

    @admin.display(description="status", ordering="status")
    def status_progress(self, job: Job) -> str:
        """The status; a running job's progress beside it (the only one whose progress changes)."""
        if job.status != Status.RUNNING:
            return job.get_status_display()
        return format_html('{} <progress class="cv-progress" value="{}" max="100">{}%</progress> {}%', job.get_status_display(),
                           job.progress, job.progress, job.progress)

    @admin.display(description="last error")
    def error_short(self, job: Job) -> str:
        """A failed or dead job's last error, its last line (the exception) cut to 80 characters."""
        if job.status not in (Status.FAILED, Status.DEAD):
            line = ""
        else:  # the list's tail (the row's `error` is deferred there: reading it would cost a query)
            line = last_line(job.error_tail if hasattr(job, "error_tail") else job.error)
        if not line:
            return mark_safe("<span></span>")  # not the admin's "-" on every row
        shown = line if len(line) <= 80 else line[:79] + "…"
        return format_html('<span class="cv-error" title="{}">{}</span>', line, shown)

    @admin.display(description="worker", ordering="worker")
    def worker_short(self, job: Job) -> str:
        # The node only (its process and start token on hover): the job's page has the whole name.
        return format_html('<span class="cv-nowrap" title="{}">{}</span>', job.worker, job.worker.split("/")[0]) if job.worker else "-"

    @admin.display(description="trace")
    def trace_link(self, job: Job) -> str:
        """Its trace in the viewer TRACE_VIEWER_URL names (its request, chain and every attempt), or
        the trace's id alone when no viewer is set; "-" for a job created while tracing was off."""
        from jobs.engine import tracing

        link = tracelinks.url(job.trace_context)
        if link:
            return format_html('<a id="job-trace" href="{}">{}</a>', link, tracing.trace_id_of(job.trace_context))
        return tracing.trace_id_of(job.trace_context) or "-"

    @admin.display(description="chain", ordering="chain")
    def chain_link(self, job: Job) -> str:
        """The chain and the job's step in it, from the row's own columns (no join, no plan read)."""
        if job.chain_id is None:
            return "-"
        step = f" step {job.chain_index}" + (f".{job.member}" if job.member is not None else "")
        return format_html('<a class="cv-nowrap" href="{}">#{}{}</a>', reverse("admin:jobs_chain_change", args=[job.chain_id]),
                           job.chain_id, step if job.chain_index is not None else "")

    @admin.display(description="progress", ordering="progress")
    def progress_bar(self, job: Job) -> str:
        """ctx.progress as a bar, as on the operations page."""
        return format_html('<progress value="{}" max="100">{}%</progress> {}%', job.progress, job.progress, job.progress)

    @admin.display(description="ran for")
    def duration_text(self, job: Job) -> str:
        """How long the last attempt ran (its start to its end)."""
        if job.duration is not None:
            return f"{job.duration:.3f} s"
        return "running" if job.status == Status.RUNNING else "-"

    @admin.display(description="run after")
    def run_after_utc(self, job: Job) -> str:
        return attempts.run_after_text(job)

    @admin.display(description="published at")
    def published_at_utc(self, job: Job) -> str:
        return attempts.published_text(job)

    @admin.display(description="attempts")
    def attempts_table(self, job: Job) -> str:
        """Every attempt, oldest first: its worker, start, end, how long it ran, how it ended, its error."""
        rows = attempts.history(job)
        if not rows:
            return "no attempt yet"
        body = format_html_join(
            "",
            '<tr class="cv-attempt" data-attempt="{}" data-outcome="{}"><td class="n">{}</td><td class="cv-nowrap" title="{}">{}</td>'
            '<td class="cv-nowrap">{}</td><td class="cv-nowrap">{}</td><td class="n">{}</td><td class="cv-outcome">{}</td><td>{}</td></tr>',
            (
                (a.number, a.outcome, a.number, a.worker, short_worker(a.worker), stamp_text(a.started_at),
                 stamp_text(a.ended_at), f"{a.seconds:.3f} s" if a.seconds is not None else "-", a.outcome, _error_cell(a.error))
                for a in rows
            ),
        )
        note = ""
        if rows[0].number > 1:
            note = format_html('<p class="cv-muted">Attempts before {} were recorded before the history was kept.</p>', rows[0].number)
        return format_html(
            '<table class="cv-attempts"><thead><tr><th>#</th><th>worker</th><th>started (UTC)</th><th>ended (UTC)</th>'
            "<th>ran</th><th>outcome</th><th>error</th></tr></thead><tbody>{}</tbody></table>{}",
            body, note,
        )

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

    @admin.display(description="last error")
    def error_text(self, job: Job) -> str:
        return pre(job.error)

    def change_view(self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict | None = None) -> HttpResponse:
        job = self.get_object(request, object_id)
        operate = job is not None and self.has_operate_permission(request)
        extra = {
            "can_retry": operate and job.status in RETRYABLE,
            "can_cancel": operate and job.status in CANCELLABLE,
            "trace_url": tracelinks.url(job.trace_context) if job is not None else None,
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
            worker = format_html('<span title="{}">{}</span>', job.worker, short_worker(job.worker)) if job.worker else "-"
            return (link, job.queue, worker, clock(job.started_at), clock(job.finished_at))

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
            '<div class="chain-plan-box"><table class="chain-plan"><thead><tr><th>#</th><th>type</th><th>job</th><th>status</th>'
            "<th>queue</th><th>worker</th><th>started (UTC)</th><th>finished (UTC)</th><th>ran</th><th>handoff</th></tr></thead>"
            "<tbody>{}</tbody></table></div>",
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


# --- django-celery-beat's Clocked and Solar schedules: listed only when a row uses them ----------
from django_celery_beat.admin import ClockedScheduleAdmin, SolarScheduleAdmin  # noqa: E402
from django_celery_beat.models import ClockedSchedule, SolarSchedule  # noqa: E402


class ListedWhenUsed:
    """A model the admin's index and sidebar list only while it has a row: Conveyor's schedules
    are crontabs and intervals, and one-off ones (`at=`) are the only clocked rows; solar ones
    only someone adding them by hand has. Its pages stay reachable by URL."""

    def get_model_perms(self, request: HttpRequest) -> dict[str, bool]:
        perms = super().get_model_perms(request)  # type: ignore[misc]
        if not self.model.objects.exists():  # type: ignore[attr-defined]
            return dict.fromkeys(perms, False)
        return perms


class ClockedAdmin(ListedWhenUsed, ClockedScheduleAdmin):
    pass


class SolarAdmin(ListedWhenUsed, SolarScheduleAdmin):
    pass


for _model, _admin in ((ClockedSchedule, ClockedAdmin), (SolarSchedule, SolarAdmin)):
    admin.site.unregister(_model)
    admin.site.register(_model, _admin)
