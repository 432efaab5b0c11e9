"""A chain as its readers see it (GET /api/chains/{id}, the admin's chain page, the operations
page): one entry per planned step, a group as one step with its members summed up.

Every read here is bounded whatever the size of the chain's groups: the plan is outlined in
PostgreSQL (each step's type, a group's size and rule, the types of one page of its members; never
the members' planned inputs), a group's members are counted by status in one aggregate over
`job_member_idx`, and only one page of members (`members_from`, `members_limit`) is loaded as
rows. No read loads every member's input or output, nor what a group handed on (jobs_stepresult).
"""
from __future__ import annotations

import datetime as dt
from typing import Any, NamedTuple

from django.db import connection
from django.db.models import QuerySet

from jobs.engine.decisions import unstarted_status
from jobs.models import FINISHED, Chain, Job
from jobs.models import Status as JobStatus

#: Members shown per group step unless asked otherwise, and the most a page may hold.
MEMBERS_DEFAULT, MEMBERS_MAX = 20, 100


#: The order a group's member counts are listed in: from not started to ended ("not reached":
#: no job, and its chain ended: decisions.unstarted_status).
STATUS_ORDER = ("waiting", "not reached", *JobStatus.values)


class Planned(NamedTuple):
    """A planned step as the outline reads it."""

    index: int
    #: The job type of a one-job step (None for a group).
    type: str | None
    #: A group's member count (None for a one-job step).
    size: int | None
    on_failure: str | None
    #: The types of the page's members, in member order (a group's).
    member_types: list[str]


# The members' types of one page only: `-> i` reads one element, no expansion of the whole group.
OUTLINE_SQL = """
SELECT s.n - 1, s.step ->> 'type',
       CASE WHEN s.step ? 'group' THEN jsonb_array_length(s.step -> 'group') END,
       CASE WHEN s.step ? 'group' THEN COALESCE(s.step ->> 'on_failure', 'fail') END,
       CASE WHEN s.step ? 'group' THEN ARRAY(
            SELECT s.step -> 'group' -> i ->> 'type'
              FROM generate_series(%s::int, LEAST(%s::int + %s::int, jsonb_array_length(s.step -> 'group')) - 1) AS i
             ORDER BY i) END
  FROM jobs_chain c, jsonb_array_elements(c.steps) WITH ORDINALITY AS s(step, n)
 WHERE c.id = %s
 ORDER BY s.n
"""

# Each member's latest row (a member has one row; DISTINCT ON keeps the newest should there be
# more), counted per group step and status, with the first start and the last end.
MEMBER_COUNTS_SQL = """
SELECT chain_index, status, count(*), min(started_at), max(finished_at)
  FROM (SELECT DISTINCT ON (chain_index, member) chain_index, status, started_at, finished_at
          FROM jobs_job WHERE chain_id = %s AND member IS NOT NULL
         ORDER BY chain_index, member, id DESC) AS latest
 GROUP BY chain_index, status
"""


def outline(chain_id: int, members_from: int = 0, members_limit: int = MEMBERS_DEFAULT) -> list[Planned]:
    with connection.cursor() as cursor:
        cursor.execute(OUTLINE_SQL, [members_from, members_from, members_limit, chain_id])
        return [Planned(i, t, size, rule, list(types or [])) for i, t, size, rule, types in cursor.fetchall()]


class Counts(NamedTuple):
    by_status: dict[str, int]
    started: dt.datetime | None
    finished: dt.datetime | None


def member_counts(chain_id: int) -> dict[int, Counts]:
    counts: dict[int, Counts] = {}
    with connection.cursor() as cursor:
        cursor.execute(MEMBER_COUNTS_SQL, [chain_id])
        for index, status, n, started, finished in cursor.fetchall():
            before = counts.get(index) or Counts({}, None, None)
            before.by_status[status] = n
            counts[index] = Counts(
                before.by_status,
                min(filter(None, (before.started, started)), default=None),
                max(filter(None, (before.finished, finished)), default=None),
            )
    return counts


def chain_view(
    chain: Chain, members_from: int = 0, members_limit: int = MEMBERS_DEFAULT, full_jobs: bool = True
) -> dict[str, Any]:
    """The chain with one entry per planned step: its latest job (a group step: its members
    counted by status, and members `members_from` to `members_from + members_limit - 1` each with
    its latest job), timings and handoff. `full_jobs=False` leaves the jobs' input and output
    unread (pages that do not show them). Each step keeps its `start` and `end` (timelines)."""
    members_limit = max(1, min(members_limit, MEMBERS_MAX))
    planned = outline(chain.pk, members_from, members_limit)
    jobs: QuerySet[Job] = Job.objects.filter(chain_id=chain.pk)
    if not full_jobs:
        jobs = jobs.defer("input", "output")
    latest: dict[tuple[int | None, int | None], Job] = {}
    for job in jobs.filter(member__isnull=True).order_by("chain_index", "id"):
        latest[(job.chain_index, None)] = job  # a retried step's newest job
    groups = [step.index for step in planned if step.size is not None]
    if groups:
        page = jobs.filter(chain_index__in=groups, member__gte=members_from, member__lt=members_from + members_limit)
        for job in page.order_by("chain_index", "member", "id"):
            latest[(job.chain_index, job.member)] = job
    counts = member_counts(chain.pk) if groups else {}
    steps = []
    previous_end: dt.datetime | None = None
    unstarted = unstarted_status(chain.status)
    for step_plan in planned:
        if step_plan.size is not None:
            step = _group_view(step_plan, latest, counts.get(step_plan.index), members_from, unstarted)
        else:
            job = latest.get((step_plan.index, None))
            step = {"index": step_plan.index, "type": step_plan.type, "status": job.status if job else unstarted,
                    "job": job, "start": job.started_at if job else None, "end": job.finished_at if job else None,
                    "duration_seconds": job.duration if job else None}
        handoff = None
        if previous_end and step["start"]:
            handoff = (step["start"] - previous_end).total_seconds()
        step["handoff_seconds"] = handoff
        previous_end = step["end"]
        steps.append(step)
    return {
        "id": chain.pk,
        "status": chain.status,
        "created_at": chain.created_at,
        "finished_at": chain.finished_at,
        "steps": steps,
    }


def _group_view(
    planned: Planned, latest: dict[tuple[int | None, int | None], Job], counts: Counts | None, members_from: int,
    unstarted: str = "waiting",
) -> dict[str, Any]:
    members = []
    for n, member_type in enumerate(planned.member_types, start=members_from):
        job = latest.get((planned.index, n))
        members.append({"member": n, "type": member_type, "status": job.status if job else unstarted, "job": job,
                        "duration_seconds": job.duration if job else None})
    by_status = dict(counts.by_status) if counts else {}
    inserted = sum(by_status.values())
    statuses = set(by_status)
    if not inserted:
        status = unstarted
    elif not statuses <= set(FINISHED):
        status = "pending" if statuses == {JobStatus.PENDING} else "running"
    elif statuses == {JobStatus.SUCCEEDED}:
        status = "succeeded"
    else:
        status = JobStatus.DEAD if JobStatus.DEAD in statuses else JobStatus.CANCELLED
    if planned.size > inserted:
        by_status[unstarted] = planned.size - inserted
    by_status = {name: by_status[name] for name in STATUS_ORDER if name in by_status}
    ended = bool(inserted) and inserted >= planned.size and statuses <= set(FINISHED)
    start = counts.started if counts else None
    end = counts.finished if counts and ended else None
    following = members_from + len(members)
    return {
        "index": planned.index, "type": "group", "status": status, "job": None, "members": members,
        "member_count": planned.size, "member_statuses": by_status,
        "members_next": following if following < planned.size else None,
        "on_failure": planned.on_failure, "start": start, "end": end,
        "duration_seconds": (end - start).total_seconds() if start and end else None,
    }
