"""Groups in a chain across real processes: `manage.py start` workers on the session's PostgreSQL
and Redis, no eager mode and no mocks. A group's members run side by side on the workers of their
queues; the last one to end releases the next step, which gets their outputs in member order.

Timings come from tests.support.FAST: a lost worker's lease lapses in 3 s, a lost message is sent
again after 3 s, and every worker runs the relay and the reaper every 200 ms.
"""
from __future__ import annotations

import os
import signal

import psutil
import pytest
from django.db.models import Count

from examples.models import Effect
from jobs import Group, Step, start_chain
from jobs.models import ChainStatus, Job, Status, StepResult
from tests.support import api_client, is_dead, start_workers, wait_chain, wait_for

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True, databases="__all__"), pytest.mark.usefixtures("stop_together")]




def runs_per_job(job_ids: list[int]) -> dict[int, int]:
    """Successful effects recorded per job (examples.member writes one per run that finishes)."""
    counted = dict(Effect.objects.filter(job_id__in=job_ids).values_list("job_id").annotate(n=Count("id")))
    return {job_id: counted.get(job_id, 0) for job_id in job_ids}


def test_a_group_of_20_on_two_queues_completes_in_order_when_a_members_pool_process_is_killed(live):
    # given two workers, one per queue, each with three prefork pool processes
    workers = start_workers(
        live,
        ("group-default", ("--queues", "default", "--concurrency", "3")),
        ("group-images", ("--queues", "images", "--concurrency", "3")),
    )
    # and a chain echo -> a group of 20 members (alternately on default and images, 1.5 s each) -> gather
    members = [
        Step("examples.member" if n % 2 == 0 else "examples.member-images", {"n": n, "sleep": 1.5}) for n in range(20)
    ]
    chain = start_chain([Step("examples.echo", {"go": True}), Group(members), Step("examples.gather", {"after": "group"})])

    # when a member runs, its pool process is killed with SIGKILL in the middle of its sleep
    victim = wait_for(
        lambda: Job.objects.filter(chain=chain, chain_index=1, status=Status.RUNNING).order_by("member").first(),
        30, interval=0.05, what="a member to run",
    )
    pid = int(victim.worker.split("/")[1])
    owner = next(w for w in workers if victim.worker.startswith(f"{w.name}@test/"))
    assert pid in {p.pid for p in psutil.Process(owner.process.pid).children(recursive=True)}  # a pool process
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: is_dead(pid), 10, what="the pool process to die")

    # then the chain succeeds, and the step after the group got the 20 outputs in member order
    wait_chain(chain.pk, ChainStatus.SUCCEEDED, 50)
    group = list(Job.objects.filter(chain=chain, chain_index=1).order_by("member"))
    assert [(j.member, j.queue) for j in group] == [(n, "default" if n % 2 == 0 else "images") for n in range(20)]
    assert all(j.status == Status.SUCCEEDED for j in group)
    assert {j.worker.split("@")[0] for j in group} == {"group-default", "group-images"}
    [gather] = Job.objects.filter(chain=chain, chain_index=2)
    assert gather.output == {"input": {"after": "group"}, "results": [{"n": n} for n in range(20)]}
    # and each member's effect happened once: the killed one by its second attempt
    assert runs_per_job([j.pk for j in group]) == {j.pk: 1 for j in group}
    killed = Job.objects.get(pk=victim.pk)
    assert killed.attempt == 2
    assert list(Effect.objects.filter(job_id=victim.pk).values_list("attempt", flat=True)) == [2]
    # and the next step was released once
    assert Job.objects.filter(chain=chain).count() == 22


def test_a_handler_that_fans_out_has_its_members_outputs_collected_by_the_next_step(live):
    # given one worker on both queues
    start_workers(live, ("fan-worker", ("--queues", "default,images", "--concurrency", "4")))

    # when a chain's first step fans out 12 members at run time, then a group of two gathers each
    # what they handed on, then a last step gathers those
    chain = start_chain([
        Step("examples.fan-out", {"count": 12, "sleep": 0.1}),
        Group([Step("examples.gather", {"gatherer": 0}), Step("examples.gather", {"gatherer": 1})]),
        Step("examples.gather", {"after": "fan-out"}),
    ])

    # then the plan holds the group it made, each gatherer got the 12 outputs in order (stored
    # once for the step), and the last step got the gatherers' outputs in order
    wait_chain(chain.pk, ChainStatus.SUCCEEDED, 40)
    chain.refresh_from_db()
    assert [s.get("type", "group") for s in chain.steps] == ["examples.fan-out", "group", "group", "examples.gather"]
    group = list(Job.objects.filter(chain=chain, chain_index=1).order_by("member"))
    assert [j.member for j in group] == list(range(12))
    outputs = [{"n": n} for n in range(12)]
    gatherers = list(Job.objects.filter(chain=chain, chain_index=2).order_by("member"))
    assert [j.output for j in gatherers] == [{"input": {"gatherer": g}, "results": outputs} for g in (0, 1)]
    assert StepResult.objects.filter(chain=chain, step=2).count() == 12
    [gather] = Job.objects.filter(chain=chain, chain_index=3)
    assert gather.output == {"input": {"after": "fan-out"}, "results": [j.output for j in gatherers]}
    assert runs_per_job([j.pk for j in group]) == {j.pk: 1 for j in group}

    # and GET /api/chains/{id} shows each group as one step with its members
    body = api_client().get(f"/api/chains/{chain.pk}").json()
    assert [(s["type"], s["status"], len(s["members"] or [])) for s in body["steps"]] == [
        ("examples.fan-out", "succeeded", 0), ("group", "succeeded", 12), ("group", "succeeded", 2),
        ("examples.gather", "succeeded", 0),
    ]


def test_a_member_that_dies_fails_the_chain_with_the_member_and_its_error_visible(live):
    # given one worker on both queues
    start_workers(live, ("fail-worker", ("--queues", "default,images", "--concurrency", "3")))

    # when a group's member fails every attempt
    chain = start_chain([
        Group([Step("examples.member", {"n": 0}), Step("examples.member-images", {"n": 1, "fail": True}),
               Step("examples.member", {"n": 2, "sleep": 0.5})]),
        Step("examples.gather"),
    ])

    # then the chain fails, the step after the group never runs
    wait_chain(chain.pk, ChainStatus.FAILED, 30)
    # and the other members are left to finish
    wait_for(lambda: not Job.objects.filter(chain=chain).exclude(status__in=("succeeded", "dead")).exists(), 20,
             what="the other members to finish")
    assert not Job.objects.filter(chain=chain, chain_index=1).exists()

    # and the API shows the group dead, the member that died and its error
    body = api_client().get(f"/api/chains/{chain.pk}").json()
    assert body["status"] == "failed"
    group = body["steps"][0]
    assert (group["type"], group["status"]) == ("group", "dead")
    assert [(m["member"], m["status"]) for m in group["members"]] == [(0, "succeeded"), (1, "dead"), (2, "succeeded")]
    dead = group["members"][1]["job"]
    assert dead["attempt"] == 3 and "RuntimeError: examples.member 1: failing as asked" in dead["error"]
    assert body["steps"][1]["status"] == "not reached"  # the chain ended before it (issue 26)
