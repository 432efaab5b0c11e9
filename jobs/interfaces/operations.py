"""The admin's operations page (/admin/operations/): queues, why jobs wait (consumers, pauses,
the no-consumer alarm), throughput, job types' limits, every live worker (idle ones too:
jobs.interfaces.workers), dead jobs, chains and events, live.

Server-rendered: the page is the fragment inside the admin's layout, and a small static script
(jobs/static/jobs/operations.js) fetches the fragment again and swaps it in: when the page's live
stream (`stream`, Server-Sent Events) says something changed, and every 30 s besides; every 2 s
where the browser has no EventSource. Every
query is bounded (LIMITs) or runs on a partial index whose rows are few (unfinished jobs), so the
page stays fast however large the finished history is.

Who sees what: the page needs jobs.view_job (it shows jobs and their errors), its chains and
events sections their own view permissions, and retrying or cancelling jobs.operate
(jobs.interfaces.permissions), the Retry buttons shown only to those who have it.
"""
from __future__ import annotations

import datetime as dt
from typing import Any, Callable, NamedTuple

from django.contrib import messages
from django.contrib.admin.views.decorators import staff_member_required
from django.core.exceptions import PermissionDenied
from django.db import connection
from django.db.models import Count
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404, render
from django.urls import path, reverse
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from jobs.engine import control, pauses, publish, registry, store, why
from jobs.engine.chainview import chain_view
from jobs.models import RUNNABLE, WAITING_FOR_SLOT, Chain, Held, Job, Status
from jobs.interfaces.attempts import last_line, short_worker
from jobs.interfaces.permissions import OPERATE, can_operate
from jobs.interfaces import tracelinks
from jobs.interfaces.workers import live_workers

WINDOW = dt.timedelta(minutes=5)
LIMITS = {"workers": 200, "dead": 20, "chains": 8, "members": 10, "events": 10, "deliveries": 20}


class Section(NamedTuple):
    """Rows another app shows on the page: the permission that shows them, and a function giving
    at most `limit` of them (read only for a user who has the permission)."""

    permission: str
    rows: Callable[[int], Any]


#: The sections other apps add, by name. The event bus adds "events" (subscribers/apps.py:
#: subscribers.operations.recent_events): the engine never imports subscribers' models.
SECTIONS: dict[str, Section] = {}


def add_section(name: str, permission: str, rows: Callable[[int], Any]) -> None:
    """Show `rows(LIMITS[name])` on the page, as `name`, to users with `permission`."""
    SECTIONS[name] = Section(permission, rows)


def redis_depths(queues: list[str]) -> dict[str, int | None]:
    """Messages waiting in each queue's Redis lists (every priority list), through the Celery
    app's connection pool; None for each queue when Redis cannot be read."""
    try:
        return publish.queue_depths(queues, timeout=2)
    except Exception:  # Redis away: the page still shows what PostgreSQL knows
        return dict.fromkeys(queues)


def queue_rows() -> list[dict[str, Any]]:
    counts: dict[str, dict[str, int]] = {}

    def add(rows: Any) -> None:
        for row in rows:
            counts.setdefault(row["queue"], {})[row["status"]] = row["n"]

    # Pending and failed rows: job_runnable_idx's predicate; running: job_lease_idx's; dead:
    # job_status_idx's leading column. Finished succeeded/cancelled rows are never counted.
    add(Job.objects.filter(status__in=RUNNABLE).values("queue", "status").annotate(n=Count("id")).order_by())
    add(Job.objects.filter(status=Status.RUNNING).values("queue", "status").annotate(n=Count("id")).order_by())
    add(Job.objects.filter(status=Status.DEAD).values("queue", "status").annotate(n=Count("id")).order_by())
    queues = sorted(set(registry.queues()) | set(counts))
    depths = redis_depths(queues)
    return [
        {
            "queue": queue,
            "waiting": counts.get(queue, {}).get(Status.PENDING, 0),
            "running": counts.get(queue, {}).get(Status.RUNNING, 0),
            "retrying": counts.get(queue, {}).get(Status.FAILED, 0),
            "dead": counts.get(queue, {}).get(Status.DEAD, 0),
            "redis": depths[queue],
        }
        for queue in queues
    ]


# Run time is a run's: the last attempt of a job that succeeded or died at the end of its run
# (its row's started_at is that attempt's start, its finished_at the attempt's end). A cancelled
# row is left out: cancelled while waiting, its started_at is an earlier attempt's and
# finished_at - started_at the retry's wait (or nothing ran at all); a run cut by a cancel is
# not a run time either.
RAN = "status IN ('succeeded', 'dead') AND started_at IS NOT NULL"
THROUGHPUT_SQL = f"""
SELECT type,
       count(*) AS finished,
       count(*) FILTER (WHERE status = 'succeeded') AS succeeded,
       count(*) FILTER (WHERE status = 'dead') AS dead,
       count(*) FILTER (WHERE status = 'cancelled') AS cancelled,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - started_at)) FILTER (WHERE {RAN}) AS p50,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - started_at)) FILTER (WHERE {RAN}) AS p95
  FROM jobs_job
 WHERE finished_at IS NOT NULL AND finished_at >= %s
 GROUP BY type
 ORDER BY type
"""


def throughput(now: dt.datetime) -> list[dict[str, Any]]:
    """Jobs finished in the last 5 minutes per type (job_finished_idx), with p50/p95 run time of
    those that ran to their end (RAN)."""
    with connection.cursor() as cursor:
        cursor.execute(THROUGHPUT_SQL, [now - WINDOW])
        names = [col[0] for col in cursor.description]
        rows = [dict(zip(names, row)) for row in cursor.fetchall()]
    for row in rows:
        row["per_minute"] = row["finished"] / (WINDOW.total_seconds() / 60)
    return rows


def limit_rows() -> list[dict[str, Any]]:
    """Every job type with limits (jobs.engine.limits): its limits, its running jobs (job_running_idx),
    the rows waiting for a slot (job_waiting_idx, job_waiting_key_idx) and those booked on a rate
    slot (job_unpublished_idx)."""
    types = [jt for jt in registry.all_types() if jt.limited]
    if not types:
        return []
    names = [jt.name for jt in types]
    running = Job.objects.filter(status=Status.RUNNING, limit_key__isnull=False, type__in=names)
    held = Job.objects.filter(status__in=RUNNABLE, held__in=WAITING_FOR_SLOT, type__in=names)
    booked = Job.objects.filter(status__in=RUNNABLE, published_at__isnull=True, held=Held.RATE, type__in=names)
    counts: dict[tuple[str, str], int] = {}
    for kind, rows in (("running", running), ("waiting", held), ("booked", booked)):
        for name, n in rows.values("type").annotate(n=Count("id")).order_by().values_list("type", "n"):
            counts[name, kind] = n
    return [
        {
            "type": jt.name,
            "limits": jt.describe_limits(),
            **{kind: counts.get((jt.name, kind), 0) for kind in ("running", "waiting", "booked")},
        }
        for jt in types
    ]


def waiting_rows() -> dict[str, Any]:
    """Why jobs wait, per queue (jobs.engine.why): jobs due and waiting for a worker, the oldest
    one's wait and its reason, the workers consuming the queue (their heartbeats), its pause; a
    queue with waiting jobs and no consumer is an alarm. And every pause, of queues and types."""
    rows = why.queues()
    oldest = store.oldest_waiting()
    paused = {(p.kind, p.name): p for p in pauses.paused()}
    for row in rows:
        row["pause"] = paused.get(("queue", row["queue"]))
        job_id = oldest.get(row["queue"])
        row["oldest_job"] = job_id
        row["why"] = why.why(job_id) if job_id is not None else None
    return {"queues": rows, "pauses": list(paused.values()), "alarms": [r["queue"] for r in rows if r["alarm"]]}


def workers() -> list[dict[str, Any]]:
    """Every live worker (jobs.interfaces.workers: idle ones too, with its queues and pool), each
    with its running rows (job_lease_idx; a row's `worker` is `node/pid/start`); then any worker
    the rows name that did not answer (busy past the timeout, or gone: the reaper will tell)."""
    running = Job.objects.filter(status=Status.RUNNING).defer("input", "output", "errors").order_by("worker", "id")[
        : LIMITS["workers"]
    ]
    grouped: dict[str, list[Job]] = {}
    running = list(running)
    tracelinks.annotate(running)
    for job in running:
        node, _, rest = (job.worker or "(unknown)").partition("/")
        job.process = rest.split("/")[0]
        grouped.setdefault(node, []).append(job)
    live = live_workers()
    rows = [
        {"name": w.name, "queues": w.queues, "pool": w.pool, "concurrency": w.concurrency, "answered": True,
         "jobs": grouped.pop(w.name, [])}
        for w in live or []
    ]
    rows += [{"name": name, "answered": False, "asked": live is not None, "jobs": jobs} for name, jobs in grouped.items()]
    return rows


def timeline(chain: Chain, now: dt.datetime) -> dict[str, Any]:
    """chain_view's steps (handoffs included) with each bar's place on the chain's time axis: a
    group step's bar, and one under it for each of its first LIMITS["members"] members (the rest
    counted by status); no job's input or output is read."""
    view = chain_view(chain, 0, LIMITS["members"], full_jobs=False)
    for job in [s["job"] for s in view["steps"]] + [m["job"] for s in view["steps"] for m in s.get("members") or []]:
        if job is not None:
            job.worker_short = short_worker(job.worker)  # node/pid: a label has no room for the start token
    start = chain.created_at
    end = chain.finished_at or now
    # A group step is one bar from its first member's start to its last member's end, with a
    # bar of its own for each member shown under it.
    for step in view["steps"]:
        spans = [(step["start"], step["end"])]
        spans += [(m["job"].started_at, m["job"].finished_at) for m in step.get("members") or [] if m["job"]]
        for began, ended in spans:
            if began and ended and ended > end:
                end = ended
    span = max((end - start).total_seconds(), 0.001)
    for step in view["steps"]:
        _place(step, step["start"], step["end"], start, span, now)
        for member in step.get("members") or []:
            job = member["job"]
            _place(member, job.started_at if job else None, job.finished_at if job else None, start, span, now)
    view["span"] = span
    # The chain's trace: its first step's (every later step's is the same trace).
    first = view["steps"][0] if view["steps"] else None
    first_job = first and (first["job"] or next((m["job"] for m in first.get("members") or [] if m["job"]), None))
    view["trace_url"] = tracelinks.url(first_job.trace_context) if first_job is not None else None
    return view


def _place(bar: dict[str, Any], began: dt.datetime | None, ended: dt.datetime | None, start: dt.datetime, span: float,
           now: dt.datetime) -> None:
    if began is None:
        bar["left"] = bar["width"] = None
        return
    left = (began - start).total_seconds()
    right = ((ended or now) - start).total_seconds()
    bar["left"] = round(100 * max(left, 0) / span, 2)
    bar["width"] = round(max(100 * (right - max(left, 0)) / span, 0.5), 2)


def dead_jobs() -> list[Job]:
    """The newest dead jobs (job_status_idx: status, then id descending)."""
    jobs = list(Job.objects.filter(status=Status.DEAD).defer("input", "output").order_by("-id")[: LIMITS["dead"]])
    for job in jobs:
        job.error_summary = last_line(job.error)
    tracelinks.annotate(jobs)
    return jobs


def context(now: dt.datetime, can_view_chains: bool = True, can_view_events: bool = True,
            **allowed: bool) -> dict[str, Any]:
    """The page's data; a section the user may not view is not read at all."""
    chains = list(Chain.objects.defer("steps").order_by("-id")[: LIMITS["chains"]]) if can_view_chains else []
    events = SECTIONS["events"].rows(LIMITS["events"]) if can_view_events and "events" in SECTIONS else []
    return {
        "now": now,
        "queues": queue_rows(),
        "throughput": throughput(now),
        "limits": limit_rows(),
        "waiting": waiting_rows(),
        "workers": workers(),
        "dead": dead_jobs(),
        "chains": [timeline(chain, now) for chain in chains],
        "events": events,
        "window_minutes": int(WINDOW.total_seconds() // 60),
    }


def _viewer(request: HttpRequest) -> dict[str, bool]:
    """What this staff user may see and do on the page. The page is jobs (their errors'
    tracebacks included): it needs jobs.view_job, else 403. Chains and events show only with
    their own view permissions; the Retry buttons only with jobs.operate."""
    user = request.user
    if not user.has_perm("jobs.view_job"):
        raise PermissionDenied("the operations page needs the jobs.view_job permission")
    return {
        "can_view_chains": user.has_perm("jobs.view_chain"),
        "can_view_events": "events" in SECTIONS and user.has_perm(SECTIONS["events"].permission),
        "can_operate": can_operate(request),
    }


@staff_member_required
def page(request: HttpRequest) -> HttpResponse:
    from django.contrib import admin

    allowed = _viewer(request)
    now = timezone.now()
    return render(
        request,
        "admin/operations.html",
        {**admin.site.each_context(request), "title": "Operations", **context(now, **allowed), **allowed},
    )


@staff_member_required
def fragment(request: HttpRequest) -> HttpResponse:
    allowed = _viewer(request)
    return render(request, "admin/operations_fragment.html", {**context(timezone.now(), **allowed), **allowed})


async def stream(request: HttpRequest) -> HttpResponse:
    """A live signal for the page (Server-Sent Events, jobs/interfaces/streams.py: OPERATIONS): an
    event whenever what the page shows has changed, on which the page fetches its fragment; the
    same staff user and jobs.view_job the page needs."""
    from asgiref.sync import sync_to_async

    from jobs.interfaces import streams

    user = await request.auser()
    if not (user.is_active and user.is_staff):
        raise PermissionDenied("the operations page is for staff users")
    await sync_to_async(_viewer)(request)
    return await streams.respond(request, streams.OPERATIONS, 0, who=f"operations-user-{user.pk}")


def _back(request: HttpRequest) -> HttpResponseRedirect:
    target = request.POST.get("next") or request.META.get("HTTP_REFERER") or ""
    if not url_has_allowed_host_and_scheme(target, {request.get_host()}, require_https=request.is_secure()):
        target = reverse("operations")
    return HttpResponseRedirect(target)


def _operator(request: HttpRequest) -> None:
    if not can_operate(request):
        raise PermissionDenied(f"retrying or cancelling a job needs the {OPERATE} permission")


@require_POST
@staff_member_required
def retry(request: HttpRequest, job_id: int) -> HttpResponse:
    _operator(request)
    job = get_object_or_404(Job, pk=job_id)
    if control.retry(job):
        messages.success(request, f"Job {job_id} ({job.type}) queued again.")
    else:
        messages.warning(request, f"Job {job_id} is {job.status}: only dead, failed or cancelled jobs can be retried.")
    return _back(request)


@require_POST
@staff_member_required
def cancel(request: HttpRequest, job_id: int) -> HttpResponse:
    _operator(request)
    job = get_object_or_404(Job, pk=job_id)
    if control.cancel(job):
        job.refresh_from_db()
        state = "asked to stop" if job.status == Status.RUNNING else "cancelled"
        messages.success(request, f"Job {job_id} ({job.type}) {state}.")
    else:
        messages.warning(request, f"Job {job_id} is {job.status}: it has already ended.")
    return _back(request)


urlpatterns = [
    path("", page, name="operations"),
    path("fragment/", fragment, name="operations-fragment"),
    path("stream/", stream, name="operations-stream"),
    path("jobs/<int:job_id>/retry/", retry, name="operations-retry"),
    path("jobs/<int:job_id>/cancel/", cancel, name="operations-cancel"),
]
