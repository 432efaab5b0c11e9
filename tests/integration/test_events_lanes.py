"""Lanes in process on the session's real PostgreSQL: the migration that opens them for rows written
before lanes existed, and keys left stuck (waiting deliveries nobody would release) set right by
the next emit of the key or by subscribers.cleanup. No worker runs here.
"""
from __future__ import annotations

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

from jobs.engine import registry
from jobs.engine.context import Context
from jobs.models import Job, Status
from subscribers import emit
from subscribers.models import Delivery, Event, Lane
from tests.support import redis_client

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

BEFORE = ("subscribers", "0003_delivery_released_at")
SUB = "diagnostics.record"


@pytest.fixture(autouse=True)
def empty_redis():
    redis_client().flushall()
    yield
    redis_client().flushall()


def migrate(target: list[tuple[str, str]]):
    executor = MigrationExecutor(connection)
    executor.migrate(target)
    return MigrationExecutor(connection).loader.project_state(target).apps


def latest() -> list[tuple[str, str]]:
    """Every app's latest migration: going back before lanes also unapplied other apps' migrations
    that depend on subscribers' (api 0003's permissions)."""
    return MigrationExecutor(connection).loader.graph.leaf_nodes()


def run_cleanup() -> dict:
    jt = registry.get("subscribers.cleanup")
    return jt.handler(Context(0, jt.name, 1, 1, None, None, None, "test"), jt.parse({}))


def test_migration_opens_a_lane_for_each_key_whose_latest_released_delivery_runs():
    # given the schema before lanes, and deliveries of diagnostics.record on four keys:
    old = migrate([BEFORE])
    try:
        OldJob, OldEvent, OldDelivery = (
            old.get_model(*m) for m in (("jobs", "Job"), ("subscribers", "Event"), ("subscribers", "Delivery"))
        )
        now = timezone.now()

        def row(key: str | None, status: str | None) -> int:
            event = OldEvent.objects.create(name="diagnostics.old", key=key)
            job = OldJob.objects.create(type=f"deliver:{SUB}", queue="default", status=status) if status else None
            return OldDelivery.objects.create(event=event, subscriber=SUB, key=key, job=job, released_at=now if job else None).pk

        # "busy": one delivered, the next running, one waiting behind it
        row("busy", Status.SUCCEEDED)
        running = row("busy", Status.RUNNING)
        waiting = row("busy", None)
        # "retrying": its latest released delivery failed an attempt and will run again
        retrying = row("retrying", Status.FAILED)
        # "idle": everything delivered; "stuck": its last one dead and one waiting (a replay before
        # lanes released nothing); and an unkeyed delivery still running
        row("idle", Status.SUCCEEDED)
        row("stuck", Status.DEAD)
        stuck = row("stuck", None)
        row(None, Status.RUNNING)
    finally:
        # when the migrations run
        migrate(latest())

    # then the keys whose latest released delivery's job is unfinished have a lane held by it
    lanes = {lane.key: (lane.delivery_id, lane.job_id) for lane in Lane.objects.all()}
    assert lanes == {
        "busy": (running, Delivery.objects.get(pk=running).job_id),
        "retrying": (retrying, Delivery.objects.get(pk=retrying).job_id),
    }
    assert Delivery.objects.get(pk=waiting).status == "waiting"

    # and the stuck key is set right by the next subscribers.cleanup: its waiting delivery is
    # released and holds the lane
    assert Delivery.objects.get(pk=stuck).status == "waiting"
    assert run_cleanup()["unstuck_keys"] == 1
    released = Delivery.objects.get(pk=stuck)
    assert released.status == Status.PENDING
    assert Lane.objects.get(key="stuck").job_id == released.job_id
    # and the running one's end hands the busy key's lane to its waiting delivery
    Job.objects.filter(pk=lanes["busy"][1]).update(status=Status.SUCCEEDED, finished_at=timezone.now())
    registry.get(f"deliver:{SUB}").on_finish(lanes["busy"][1], Status.SUCCEEDED)
    assert Delivery.objects.get(pk=waiting).status == Status.PENDING
    assert Lane.objects.get(key="busy").delivery_id == waiting
    assert run_cleanup()["unstuck_keys"] == 0


def test_emit_on_a_stuck_key_releases_the_oldest_waiting_delivery_first():
    # given a key whose lane's holder ended without handing it on (as a job of a type whose hook
    # did not run would), with one delivery waiting behind it
    first = emit("diagnostics.first", {}, key="k")
    second = emit("diagnostics.second", {}, key="k")
    holder = Delivery.objects.get(event=first).job_id
    Job.objects.filter(pk=holder).update(status=Status.DEAD, finished_at=timezone.now())
    assert Delivery.objects.get(event=second).status == "waiting"

    # when a third event of the key is emitted
    third = emit("diagnostics.third", {}, key="k")

    # then the waiting one is released first and takes the lane; the new one waits behind it
    assert Delivery.objects.get(event=second).status == Status.PENDING
    assert Delivery.objects.get(event=third).status == "waiting"
    assert Lane.objects.get(key="k").delivery == Delivery.objects.get(event=second)
    assert Event.objects.count() == 3


def test_admin_shows_which_job_holds_each_keys_lane(admin_client):
    # given a key whose first delivery holds the lane, a second waiting
    first = emit("diagnostics.first", {}, key="k-admin")
    emit("diagnostics.second", {}, key="k-admin")
    holder = Delivery.objects.get(event=first)

    # then the admin's lane list names the key and the job holding it, read only
    page = admin_client.get("/admin/subscribers/lane/")
    assert page.status_code == 200
    text = page.content.decode()
    assert "k-admin" in text
    assert f"deliver:diagnostics.record #{holder.job_id} (pending)" in text
    assert admin_client.get("/admin/subscribers/lane/add/").status_code == 403
