"""Groups in a chain (fan-out and fan-in), in process on the session's real PostgreSQL and Redis:
the plan's validation, POST /api/chains's 400s, and the fan-in: the last member's outcome
transaction releases the next step, once, with the members' outputs in member order, whatever
the order, concurrency, duplication or loss of the members' runs. The runner (`runner.execute`),
the reaper and control are called directly; no worker process runs (tests/acceptance/
test_chain_groups_live.py runs real workers).
"""
from __future__ import annotations

import datetime as dt
import json
import secrets
import threading
from typing import Any

import pytest
from django.db import connection, connections, transaction
from django.utils import timezone

from examples.models import Effect
from jobs import Group, InvalidJob, Step, enqueue, start_chain
from jobs.engine import control, recovery, registry, runner, store
from jobs.engine.creation import MAX_MEMBERS
from jobs.models import Chain, ChainStatus, Job, Status, StepResult
from tests.integration.conftest import RUNNER_IN_PROCESS
from tests.support import api_client, published_job_ids, wait_for

pytestmark = RUNNER_IN_PROCESS

WORKER = "node@test/1"




def members(chain: Chain, index: int) -> list[Job]:
    return list(Job.objects.filter(chain=chain, chain_index=index).order_by("member"))


def step_jobs(chain: Chain, index: int) -> list[Job]:
    return list(Job.objects.filter(chain=chain, chain_index=index))


def handed_on(job: Job) -> list[Any] | None:
    """What the group before the job's step handed on, as its handler reads it (ctx.results)."""
    ctx = runner.Context(job.pk, job.type, 1, 1, job.chain_id, job.chain_index, None, "k", results_count=job.results_count)
    return ctx.results


def member_steps(count: int, **extra: Any) -> list[Step]:
    return [Step("examples.member" if n % 2 == 0 else "examples.member-images", {"n": n, **extra}) for n in range(count)]


def refused(steps: list[Any]) -> dict[str, str]:
    with pytest.raises(InvalidJob) as caught:
        start_chain(steps)
    assert Chain.objects.count() == 0 and Job.objects.count() == 0
    return caught.value.errors


# --- the plan -------------------------------------------------------------------------------------


def test_a_group_step_is_planned_with_its_members_and_its_failure_rule():
    chain = start_chain([Step("examples.echo", {"a": 1}), Group(member_steps(2), on_failure="collect"), Step("examples.gather")])
    assert Chain.objects.get(pk=chain.pk).steps == [
        {"type": "examples.echo", "input": {"a": 1}},
        {
            "group": [
                {"type": "examples.member", "input": {"n": 0, "sleep": 0.0, "fail": False}},
                {"type": "examples.member-images", "input": {"n": 1, "sleep": 0.0, "fail": False}},
            ],
            "on_failure": "collect",
        },
        {"type": "examples.gather", "input": {}},
    ]
    assert str(chain) == f"chain {chain.pk}: examples.echo -> group(examples.member, examples.member-images) -> examples.gather"
    # only the first step has a job yet
    assert [(j.chain_index, j.member) for j in Job.objects.filter(chain=chain)] == [(0, None)]


@pytest.mark.parametrize(
    ("steps", "field"),
    [
        ([Step("examples.echo"), Group([])], "steps.1.group"),
        ([Step("examples.echo"), Group(member_steps(MAX_MEMBERS + 1))], "steps.1.group"),
        ([Step("examples.echo"), Group([Step("examples.echo"), Step("no.such-type")])], "steps.1.group.1.type"),
        ([Group([Step("examples.sleep", {"seconds": -1})])], "steps.0.group.0.input.seconds"),
        ([Step("examples.echo"), Group([Group([Step("examples.echo")])])], "steps.1.group.0"),
        ([Group([Step("examples.echo")], on_failure="ignore")], "steps.0.on_failure"),
        ([{"group": [{"type": "examples.echo"}], "then": 1}], "steps.0.then"),
        ([{"group": []}], "steps.0.group"),
        # a type that declares it may continue_with or fan_out (continues=True) is never a member
        ([Step("examples.echo"), Group([Step("examples.echo"), Step("examples.fan-out", {"count": 2})])], "steps.1.group.1.type"),
    ],
)
def test_a_wrong_group_is_refused_naming_the_field_and_nothing_is_written(steps, field):
    assert field in refused(steps)


def test_a_chain_that_starts_with_a_group_inserts_and_publishes_every_member():
    chain = start_chain([Group(member_steps(3)), Step("examples.gather")])
    jobs = members(chain, 0)
    assert [(j.member, j.type, j.queue, j.status) for j in jobs] == [
        (0, "examples.member", "default", Status.PENDING),
        (1, "examples.member-images", "images", Status.PENDING),
        (2, "examples.member", "default", Status.PENDING),
    ]
    assert all(j.published_at is not None for j in jobs)
    assert (published_job_ids("default"), published_job_ids("images")) == ([jobs[0].pk, jobs[2].pk], [jobs[1].pk])


# --- POST /api/chains -----------------------------------------------------------------------------


def test_http_chain_with_a_group_is_created_and_shown_as_one_step_with_its_members(api):
    status, body = api("post", "/chains", {"steps": [
        {"type": "examples.echo", "input": {"a": 1}},
        {"group": [{"type": "examples.member", "input": {"n": 0}}, {"type": "examples.member-images", "input": {"n": 1}}],
         "on_failure": "collect"},
        {"type": "examples.gather"},
    ]})
    assert status == 201, body
    assert [(s["index"], s["type"], s["status"]) for s in body["steps"]] == [
        (0, "examples.echo", "pending"), (1, "group", "waiting"), (2, "examples.gather", "waiting"),
    ]
    group = body["steps"][1]
    assert group["on_failure"] == "collect" and group["job"] is None
    assert [(m["member"], m["type"], m["status"], m["job"]) for m in group["members"]] == [
        (0, "examples.member", "waiting", None), (1, "examples.member-images", "waiting", None),
    ]
    assert body["steps"][0]["members"] is None


@pytest.mark.parametrize(
    ("step", "field"),
    [
        ({"group": []}, "steps.1.group"),
        ({"group": [{"type": "examples.echo"}] * (MAX_MEMBERS + 1)}, "steps.1.group"),
        ({"group": [{"type": "examples.echo"}, {"type": "no.such-type"}]}, "steps.1.group.1.type"),
        ({"group": [{"type": "examples.sleep", "input": {"seconds": "x"}}]}, "steps.1.group.0.input.seconds"),
        ({"group": [{"type": "examples.echo"}], "on_failure": "ignore"}, "steps.1.on_failure"),
        ({"group": [{"type": "examples.echo"}], "extra": 1}, "steps.1.extra"),
        ({"group": [{"group": [{"type": "examples.echo"}]}]}, "steps.1.group.0.type"),
        ({"group": [{"type": "examples.nightly-report"}]}, "steps.1.group.0.type"),  # not public
        ({"group": [{"type": "examples.echo"}, {"type": "examples.fan-out", "input": {"count": 2}}]}, "steps.1.group.1.type"),
    ],
)
def test_http_wrong_group_is_400_naming_the_field(api, step, field):
    status, body = api("post", "/chains", {"steps": [{"type": "examples.echo"}, step]})
    assert status == 400, body
    assert field in body["fields"], body
    assert Chain.objects.count() == 0 and Job.objects.count() == 0


# --- the fan-in -----------------------------------------------------------------------------------


def test_the_last_member_to_end_releases_the_next_step_once_with_the_outputs_in_member_order():
    # given a chain echo -> group of 4 -> gather, its first step done
    chain = start_chain([Step("examples.echo"), Group(member_steps(4)), Step("examples.gather", {"g": 1})])
    assert runner.execute(Job.objects.get(chain=chain, chain_index=0).pk, worker=WORKER) == "succeeded"
    group = members(chain, 1)
    assert [j.member for j in group] == [0, 1, 2, 3] and all(j.results_count is None for j in group)

    # when the members end in reverse order
    for job in reversed(group[1:]):
        assert runner.execute(job.pk, worker=WORKER) == "succeeded"
        assert step_jobs(chain, 2) == []  # not before the last
    assert runner.execute(group[0].pk, worker=WORKER) == "succeeded"

    # then the next step exists once, parented by the last member, with the outputs in member order
    [gather] = step_jobs(chain, 2)
    assert (gather.parent_id, gather.input, handed_on(gather)) == (group[0].pk, {"g": 1}, [{"n": n} for n in range(4)])
    with connection.cursor() as cursor:
        cursor.execute("SELECT id, xmin::text FROM jobs_job WHERE id IN (%s, %s)", [group[0].pk, gather.pk])
        xmin = dict(cursor.fetchall())
    assert xmin[group[0].pk] == xmin[gather.pk], "the last member's end and the next step were separate transactions"
    with connection.cursor() as cursor:
        cursor.execute("SELECT DISTINCT xmin::text FROM jobs_stepresult WHERE chain_id = %s", [chain.pk])
        assert cursor.fetchall() == [(xmin[gather.pk],)], "the results were handed on in another transaction"
    # and the next step's handler reads them as ctx.results
    assert runner.execute(gather.pk, worker=WORKER) == "succeeded"
    assert Job.objects.get(pk=gather.pk).output == {"input": {"g": 1}, "results": [{"n": n} for n in range(4)]}
    assert Chain.objects.get(pk=chain.pk).status == ChainStatus.SUCCEEDED


def test_a_group_as_the_last_step_ends_the_chain_when_its_last_member_ends():
    chain = start_chain([Group(member_steps(2))])
    first, second = members(chain, 0)
    runner.execute(first.pk, worker=WORKER)
    assert Chain.objects.get(pk=chain.pk).status == ChainStatus.RUNNING
    runner.execute(second.pk, worker=WORKER)
    assert Chain.objects.get(pk=chain.pk).status == ChainStatus.SUCCEEDED


def test_two_members_ending_at_the_same_instant_on_two_connections_release_the_next_step_once():
    """Both outcome transactions have written their member's end and wait for the chain's row lock
    (held by a third connection); released together, exactly one of them must see both ends."""
    for _ in range(5):
        chain = start_chain([Group(member_steps(2)), Step("examples.gather")])
        claimed = [store.claim(job.pk, WORKER, 30) for job in members(chain, 0)]
        holding, release = threading.Event(), threading.Event()
        errors: list[str] = []

        def hold_chain_lock(chain_id: int = chain.pk) -> None:
            try:
                with transaction.atomic():
                    store.lock_chain(chain_id)
                    holding.set()
                    release.wait(20)
            finally:
                connections.close_all()

        def end_member(c: store.Claimed) -> None:
            try:
                ctx = runner.Context(c.id, c.type, c.attempt, c.max_attempts, c.chain_id, c.chain_index, c.parent_id,
                                     "key", member=c.member)
                jt = runner.registry.get(c.type)
                result = runner._succeed(ctx, json.dumps({"n": c.member}), jt)
                if result != "succeeded":
                    errors.append(result)
            except Exception as exc:  # reported by the test
                errors.append(repr(exc))
            finally:
                connections.close_all()

        locker = threading.Thread(target=hold_chain_lock, daemon=True)
        locker.start()
        assert holding.wait(10)
        enders = [threading.Thread(target=end_member, args=(c,), daemon=True) for c in claimed]
        for thread in enders:
            thread.start()
        # both wait on the chain's row (their member's row already written, not committed)
        wait_for(lambda: waiting_on_locks() == 2, 10, interval=0.02, what="both outcomes to wait for the chain's lock")
        release.set()
        for thread in [locker, *enders]:
            thread.join(20)
            assert not thread.is_alive()
        assert errors == []
        [gather] = step_jobs(chain, 1)
        assert handed_on(gather) == [{"n": 0}, {"n": 1}]


def waiting_on_locks() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return cursor.fetchone()[0]


def test_a_duplicate_message_and_a_lost_run_of_a_member_count_once():
    chain = start_chain([Group(member_steps(2)), Step("examples.gather")])
    first, second = members(chain, 0)
    # the first member's message delivered twice: the second delivery claims nothing
    assert runner.execute(first.pk, worker=WORKER) == "succeeded"
    assert runner.execute(first.pk, worker=WORKER) == "skipped"
    # the second member's first run loses its worker: its lease lapses, the reaper returns it
    lost = store.claim(second.pk, "gone@test/9", 30)
    with connection.cursor() as cursor:
        cursor.execute("UPDATE jobs_job SET lease_expires_at = now() - interval '1 second' WHERE id = %s", [second.pk])
    assert recovery.reap() == 1
    assert step_jobs(chain, 1) == []
    # it runs again and succeeds; the lost run's late outcome is refused
    assert runner.execute(second.pk, worker=WORKER) == "succeeded"
    ctx = runner.Context(lost.id, lost.type, lost.attempt, lost.max_attempts, lost.chain_id, lost.chain_index, None, "k", member=1)
    assert runner._succeed(ctx, json.dumps({"n": 99}), runner.registry.get(lost.type)) == "lost"
    [gather] = step_jobs(chain, 1)
    assert handed_on(gather) == [{"n": 0}, {"n": 1}]
    assert sorted(Effect.objects.values_list("job_id", "attempt")) == [(first.pk, 1), (second.pk, 2)]


def execute_until_ended(job_id: int) -> str:
    """Run a failing job's attempts as each becomes due, until it ends."""
    return wait_for(
        lambda: (done := runner.execute(job_id, worker=WORKER)) in ("dead", "cancelled", "succeeded") and done,
        15, interval=0.05, what=f"job {job_id} to end",
    )


def test_a_member_that_dies_fails_the_chain_at_once_and_the_others_release_nothing():
    chain = start_chain([Group([Step("examples.member", {"n": 0}), Step("examples.member", {"n": 1, "fail": True}),
                                Step("examples.member", {"n": 2})]), Step("examples.gather")])
    ok, doomed, late = members(chain, 0)
    runner.execute(ok.pk, worker=WORKER)
    assert execute_until_ended(doomed.pk) == "dead"
    assert Chain.objects.get(pk=chain.pk).status == ChainStatus.FAILED  # before the last member ends
    assert runner.execute(late.pk, worker=WORKER) == "succeeded"  # left to finish
    assert step_jobs(chain, 1) == []
    assert Chain.objects.get(pk=chain.pk).status == ChainStatus.FAILED


def test_a_group_that_collects_hands_the_failures_on_in_place():
    chain = start_chain([
        Group([Step("examples.member", {"n": 0}), Step("examples.member", {"n": 1, "fail": True}),
               Step("examples.member", {"n": 2})], on_failure="collect"),
        Step("examples.gather"),
    ])
    ok, doomed, cancelled = members(chain, 0)
    runner.execute(ok.pk, worker=WORKER)
    assert control.cancel(cancelled)
    assert step_jobs(chain, 1) == []
    assert execute_until_ended(doomed.pk) == "dead"  # the last to end
    [gather] = step_jobs(chain, 1)
    assert handed_on(gather) == [
        {"n": 0},
        {"error": "RuntimeError: examples.member 1: failing as asked", "status": "dead", "job": doomed.pk},
        {"error": "", "status": "cancelled", "job": cancelled.pk},
    ]
    assert Chain.objects.get(pk=chain.pk).status == ChainStatus.RUNNING


def test_a_cancelled_member_cancels_a_chain_that_fails_on_failure():
    chain = start_chain([Group(member_steps(2)), Step("examples.gather")])
    assert control.cancel(members(chain, 0)[1])
    assert Chain.objects.get(pk=chain.pk).status == ChainStatus.CANCELLED


def test_retrying_the_dead_member_reopens_the_chain_and_its_success_releases_the_next_step():
    chain = start_chain([Group([Step("examples.member", {"n": 0}), Step("examples.fail", {"times": 3})]), Step("examples.gather")])
    ok, flaky = members(chain, 0)
    runner.execute(ok.pk, worker=WORKER)
    with connection.cursor() as cursor:  # setup: its last attempt is the next one
        cursor.execute("UPDATE jobs_job SET max_attempts = 1 WHERE id = %s", [flaky.pk])
    assert runner.execute(flaky.pk, worker=WORKER) == "dead"
    assert Chain.objects.get(pk=chain.pk).status == ChainStatus.FAILED
    assert control.retry(Job.objects.get(pk=flaky.pk))
    assert execute_until_ended(flaky.pk) == "succeeded"
    [gather] = step_jobs(chain, 1)
    assert handed_on(gather) == [{"n": 0}, {"attempt": 4}]


# --- dynamic fan-out ------------------------------------------------------------------------------


def test_fan_out_in_a_chain_inserts_a_group_whose_outputs_the_next_step_collects():
    chain = start_chain([Step("examples.fan-out", {"count": 3}), Step("examples.gather", {"after": "fan-out"})])
    fan = Job.objects.get(chain=chain, chain_index=0)
    assert runner.execute(fan.pk, worker=WORKER) == "succeeded"
    plan = Chain.objects.get(pk=chain.pk).steps
    assert [s.get("type", "group") for s in plan] == ["examples.fan-out", "group", "examples.gather"]
    group = members(chain, 1)
    assert [(j.member, j.type, j.parent_id) for j in group] == [
        (0, "examples.member", fan.pk), (1, "examples.member-images", fan.pk), (2, "examples.member", fan.pk),
    ]
    for job in (group[2], group[0], group[1]):
        runner.execute(job.pk, worker=WORKER)
    [gather] = step_jobs(chain, 2)
    assert runner.execute(gather.pk, worker=WORKER) == "succeeded"
    assert Job.objects.get(pk=gather.pk).output == {"input": {"after": "fan-out"}, "results": [{"n": 0}, {"n": 1}, {"n": 2}]}
    assert Chain.objects.get(pk=chain.pk).status == ChainStatus.SUCCEEDED


def test_fan_out_of_a_lone_job_starts_a_chain_that_ends_with_its_group():
    job = enqueue("examples.fan-out", {"count": 2})
    assert runner.execute(job.pk, worker=WORKER) == "succeeded"
    job.refresh_from_db()
    chain = Chain.objects.get(pk=job.chain_id)
    assert job.chain_index == 0 and chain.status == ChainStatus.RUNNING
    for member in members(chain, 1):
        runner.execute(member.pk, worker=WORKER)
    assert Chain.objects.get(pk=chain.pk).status == ChainStatus.SUCCEEDED


@pytest.fixture
def continues_anyway():
    """A type that calls ctx.continue_with or ctx.fan_out (as its input says) without declaring
    `continues`: nothing refuses it as a member before it runs. 4 attempts."""

    def handler(ctx, data: dict) -> dict:
        if data["how"] == "continue_with":
            ctx.continue_with("examples.echo", {})
        else:
            ctx.fan_out([Step("examples.echo")])
        return {}

    registry.add(registry.JobType("t.continues-anyway", handler, retries=3))
    yield "t.continues-anyway"
    registry.remove("t.continues-anyway")


@pytest.mark.parametrize("how", ["continue_with", "fan_out"])
def test_a_member_that_continues_is_dead_after_its_first_attempt_and_fails_its_chain(continues_anyway, how):
    # given a group whose first member's handler calls continue_with (or fan_out)
    chain = start_chain([Group([Step(continues_anyway, {"how": how}), Step("examples.echo")]), Step("examples.gather")])
    first, second = members(chain, 0)

    # when it runs
    outcome = runner.execute(first.pk, worker=WORKER)

    # then it is dead after attempt 1 of 4 (no retry can change it), saying why; the chain failed
    job = Job.objects.get(pk=first.pk)
    assert (outcome, job.status, job.attempt, job.max_attempts) == ("dead", Status.DEAD, 1, 4)
    assert "Permanent" in job.error and "is a member of a group" in job.error
    assert job.finished_at is not None and job.published_at is None
    assert Chain.objects.get(pk=chain.pk).status == ChainStatus.FAILED
    # and nothing was continued: the other member only
    runner.execute(second.pk, worker=WORKER)
    assert Job.objects.filter(chain=chain).count() == 2


# --- shown as one step with its members ---------------------------------------------------------


def test_the_api_admin_and_operations_page_show_a_group_as_one_step_with_its_members(api, admin_client):
    # given a chain echo -> group of 3 (member 1 dead, collected) -> gather, the group ended
    chain = start_chain([
        Step("examples.echo"),
        Group([Step("examples.member", {"n": 0}), Step("examples.member-images", {"n": 1, "fail": True}),
               Step("examples.member", {"n": 2})], on_failure="collect"),
        Step("examples.gather"),
    ])
    runner.execute(Job.objects.get(chain=chain, chain_index=0).pk, worker=WORKER)
    ok, doomed, last = members(chain, 1)
    runner.execute(ok.pk, worker=WORKER)
    execute_until_ended(doomed.pk)
    runner.execute(last.pk, worker=WORKER)

    # then GET /api/chains/{id} has one step for the group, its members in order
    status, body = api("get", f"/chains/{chain.pk}")
    assert status == 200
    assert [(s["index"], s["type"], s["status"]) for s in body["steps"]] == [
        (0, "examples.echo", "succeeded"), (1, "group", "dead"), (2, "examples.gather", "pending"),
    ]
    group = body["steps"][1]
    assert [(m["member"], m["type"], m["status"], m["job"]["id"]) for m in group["members"]] == [
        (0, "examples.member", "succeeded", ok.pk), (1, "examples.member-images", "dead", doomed.pk),
        (2, "examples.member", "succeeded", last.pk),
    ]
    assert "failing as asked" in group["members"][1]["job"]["error"]
    assert group["duration_seconds"] > 0 and group["handoff_seconds"] is not None
    assert body["steps"][2]["handoff_seconds"] is None  # not started yet
    assert (group["member_count"], group["member_statuses"], group["members_next"]) == (3, {"succeeded": 2, "dead": 1}, None)
    gather = body["steps"][2]["job"]
    assert gather["results_count"] == 3
    status, handed = api("get", f"/jobs/{gather['id']}/results")
    assert status == 200 and handed["count"] == 3 and handed["items"][1]["status"] == "dead"

    # and the admin's chain page: a row for the group, a row per member linking its job
    html = admin_client.get(f"/admin/jobs/chain/{chain.pk}/change/").content.decode()
    assert "group of 3 (on failure: collect; 2 succeeded, 1 dead)" in html
    for job in (ok, doomed, last):
        assert f'href="/admin/jobs/job/{job.pk}/change/"' in html
    assert html.count('class="chain-member"') == 3

    # and the operations page: the group as one step, each member under it with its own bar
    page = admin_client.get("/admin/operations/fragment/").content.decode()
    assert f'data-chain="{chain.pk}"' in page and "group of 3" in page
    for job in (ok, doomed, last):
        assert f'data-member="{job.member}"' in page and f'href="/admin/jobs/job/{job.pk}/change/"' in page


def test_retrying_a_collected_member_after_the_fan_in_runs_it_again_and_leaves_the_chain_alone():
    chain = start_chain([Group([Step("examples.member", {"n": 0}), Step("examples.fail", {"times": 1})], on_failure="collect"),
                         Step("examples.echo")])
    ok, flaky = members(chain, 0)
    runner.execute(ok.pk, worker=WORKER)
    with connection.cursor() as cursor:  # setup: its last attempt is the next one
        cursor.execute("UPDATE jobs_job SET max_attempts = 1 WHERE id = %s", [flaky.pk])
    assert runner.execute(flaky.pk, worker=WORKER) == "dead"
    [echo] = step_jobs(chain, 1)
    assert runner.execute(echo.pk, worker=WORKER) == "succeeded"
    assert Chain.objects.get(pk=chain.pk).status == ChainStatus.SUCCEEDED

    assert control.retry(Job.objects.get(pk=flaky.pk))
    assert execute_until_ended(flaky.pk) == "succeeded"
    assert Chain.objects.get(pk=chain.pk).status == ChainStatus.SUCCEEDED  # not reopened
    assert step_jobs(chain, 1) == [echo]  # released once


# --- a group after a group: results stored once, reads bounded ------------------------------------


def test_a_group_after_a_group_stores_the_results_once_and_every_read_of_the_chain_is_bounded(api, admin_client):
    # given echo members of ~300 bytes each (random: TOAST cannot compress them away) -> a second
    # group of as many (its first and last members gather what they were handed) -> gather
    n = 100
    pads = [secrets.token_hex(150) for _ in range(n)]
    second = [Step("examples.gather" if m in (0, n - 1) else "examples.echo", {"m": m}) for m in range(n)]
    chain = start_chain([Group([Step("examples.echo", {"n": m, "pad": pads[m]}) for m in range(n)]), Group(second),
                         Step("examples.gather")])
    for job in members(chain, 0):
        assert runner.execute(job.pk, worker=WORKER) == "succeeded"

    # then no row of the second group holds the first group's outputs: each is a few hundred bytes
    handed = [{"n": m, "pad": pads[m]} for m in range(n)]
    sizes = row_bytes(chain.pk, 1)
    assert len(sizes) == n and max(sizes) < 1500, f"a row of the second group is {max(sizes)} bytes"
    # and the outputs are stored once for the step: n entries in all (not n x n), about n outputs' bytes
    with connection.cursor() as cursor:
        cursor.execute("SELECT step, count(*), sum(octet_length(value::text)) FROM jobs_stepresult WHERE chain_id = %s"
                       " GROUP BY step", [chain.pk])
        assert [(step, count) for step, count, _ in cursor.fetchall()] == [(1, n)]
        cursor.execute("SELECT sum(octet_length(value::text)) FROM jobs_stepresult WHERE chain_id = %s", [chain.pk])
        assert cursor.fetchone()[0] < n * 400
    # and each member of the second group reads them in member order (its handler too)
    group = members(chain, 1)
    assert {j.results_count for j in group} == {n}
    assert handed_on(group[0]) == handed_on(group[n - 1]) == handed
    for job in group:
        assert runner.execute(job.pk, worker=WORKER) == "succeeded"
    assert Job.objects.get(pk=group[0].pk).output == {"input": {"m": 0}, "results": handed}
    [last] = step_jobs(chain, 2)
    assert handed_on(last)[1:3] == [{"m": 1}, {"m": 2}] and handed_on(last)[n - 1]["results"] == handed

    # and GET /api/chains/{id} summarises each group: counts by status, one page of members
    response = api_client().get(f"/api/chains/{chain.pk}")
    assert response.status_code == 200 and len(response.content) < 80_000, len(response.content)
    body = response.json()
    first_group, second_group = body["steps"][0], body["steps"][1]
    assert (second_group["member_count"], second_group["member_statuses"], second_group["members_next"]) == (
        n, {"succeeded": n}, 20)
    assert [m["member"] for m in second_group["members"]] == list(range(20))
    assert second_group["members"][0]["job"]["results_count"] == n and "results" not in second_group["members"][0]["job"]
    assert first_group["members"][3]["job"]["output"] == handed[3]
    # and pages through the members
    status, body = api("get", f"/chains/{chain.pk}?members_from=90&members_limit=20")
    assert status == 200 and [m["member"] for m in body["steps"][1]["members"]] == list(range(90, 100))
    assert body["steps"][1]["members_next"] is None
    for wrong in ("members_limit=101", "members_limit=0", "members_from=-1", "members_from=x"):
        status, body = api("get", f"/chains/{chain.pk}?{wrong}")
        assert status == 400 and wrong.split("=")[0] in body["fields"], (wrong, body)
    # and a job's results a page at a time
    status, body = api("get", f"/jobs/{last.pk}/results?offset=98&limit=5")
    assert status == 200 and body["count"] == n and body["next"] is None
    assert body["items"][0] == {"m": 98} and body["items"][1]["results"] == handed
    status, body = api("get", f"/jobs/{group[0].pk}/results?limit=2")
    assert (body["items"], body["next"]) == (handed[:2], 2)

    # and the admin's chain page and the operations page list a page of members with the counts
    html = admin_client.get(f"/admin/jobs/chain/{chain.pk}/change/").content.decode()
    assert len(html) < 150_000 and f"group of {n} (on failure: fail; {n} succeeded)" in html
    assert html.count('class="chain-member"') == 2 * 50 and "?members_from=50" in html
    html = admin_client.get(f"/admin/jobs/chain/{chain.pk}/change/?members_from=50").content.decode()
    assert f'<td>1.{n - 1}</td>' in html and '<td>1.0</td>' not in html
    page = admin_client.get("/admin/operations/fragment/").content.decode()
    assert len(page) < 100_000 and f"10 of {n} members shown" in page
    # and the list of chains outlines each plan; the chain's jobs are a page of the job list
    listed = admin_client.get("/admin/jobs/chain/").content.decode()
    assert f"chain {chain.pk}: group of {n} -&gt; group of {n} -&gt; examples.gather" in listed
    jobs = admin_client.get(f"/admin/jobs/job/?chain__exact={chain.pk}")
    assert jobs.status_code == 200 and f'href="/admin/jobs/job/{last.pk}/change/' in jobs.content.decode()


def test_a_chain_read_lists_one_page_of_a_groups_members_and_counts_the_rest():
    # given a chain that starts with a group of 100 members of ~300 bytes of input each
    chain = start_chain([Group([Step("examples.echo", {"n": m, "pad": secrets.token_hex(150)}) for m in range(100)])])
    # then GET /api/chains/{id} lists the first 20 members, counts all of them, and says where to go on
    response = api_client().get(f"/api/chains/{chain.pk}?members_limit=20")
    assert response.status_code == 200 and len(response.content) < 30_000, len(response.content)
    group = response.json()["steps"][0]
    assert [m["member"] for m in group["members"]] == list(range(20))
    assert (group["member_count"], group["member_statuses"], group["members_next"]) == (100, {"pending": 100}, 20)


def test_retention_deletes_a_finished_chain_with_what_its_groups_handed_on():
    chain = start_chain([Group(member_steps(2)), Step("examples.gather")])
    for job in members(chain, 0):
        runner.execute(job.pk, worker=WORKER)
    runner.execute(step_jobs(chain, 1)[0].pk, worker=WORKER)
    assert StepResult.objects.filter(chain=chain).count() == 2
    old = timezone.now() - dt.timedelta(days=30)
    Job.objects.filter(chain=chain).update(finished_at=old)
    Chain.objects.filter(pk=chain.pk).update(finished_at=old)
    assert store.delete_ended_chains(old + dt.timedelta(seconds=1), 100) == (1, 3)
    assert not Chain.objects.filter(pk=chain.pk).exists() and not StepResult.objects.exists()


def row_bytes(chain_id: int, index: int) -> list[int]:
    """The size of each job row of a chain step, as JSON text."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT octet_length(row_to_json(j)::text) FROM jobs_job j WHERE chain_id = %s AND chain_index = %s",
                       [chain_id, index])
        return [row[0] for row in cursor.fetchall()]
