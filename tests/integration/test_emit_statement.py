"""emit's one statement (subscribers/statements.py: EMIT_SQL) on the session's real PostgreSQL and
Redis: the delivery jobs it writes are the rows the job store writes for the same jobs, column by
column; a keyed event's deliveries take or wait for their keys' lanes; a rolled-back emit writes
and publishes nothing; a delivery reads its event with one probe. No worker runs here: delivering
is in tests/acceptance/test_events_live.py.
"""
from __future__ import annotations

import pytest
from django.db import connection, transaction

from jobs.engine import store
from jobs.models import Job
from subscribers import delivery, emit, statements
from subscribers.models import Delivery, Event, Lane
from tests.support import published_job_ids, queue_length, redis_client

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

ORDER_PLACED_SUBSCRIBERS = ["shop.audit", "shop.process-images", "shop.send-confirmation"]


@pytest.fixture(autouse=True)
def empty_redis():
    redis_client().flushall()
    yield
    redis_client().flushall()


def job_rows(ids: list[int]) -> dict[int, dict]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM jobs_job WHERE id = ANY(%s)", [ids])
        names = [column.name for column in cursor.description]
        return {row[0]: dict(zip(names, row)) for row in cursor.fetchall()}


def test_the_statements_delivery_jobs_are_the_rows_the_job_store_writes_for_them():
    # given an event emitted in a transaction, and in the same transaction (same now()) the job
    # store's own row for each of its deliveries (a replay's key: the first key is taken)
    with transaction.atomic():
        event = emit("order.placed", {"order": 7})
        deliveries = list(Delivery.objects.filter(event=event).order_by("subscriber"))
        stored = store.insert([delivery.delivery_job(event.pk, d.subscriber, replay=1) for d in deliveries])

    # then every column is the same but the id and the idempotency key (a new column the store
    # writes and the statement does not shows here)
    ours, theirs = job_rows([d.job_id for d in deliveries]), job_rows([job.pk for job in stored])
    assert [d.subscriber for d in deliveries] == ORDER_PLACED_SUBSCRIBERS
    for d, job in zip(deliveries, stored, strict=True):
        mine, store_row = ours[d.job_id], theirs[job.pk]
        assert mine["idempotency_key"] == f"conveyor:delivery:{event.pk}:{d.subscriber}"
        assert store_row["idempotency_key"] == mine["idempotency_key"] + ":replay-1"
        for column in ("id", "idempotency_key"):
            del mine[column], store_row[column]
        assert mine == store_row
        # and the delivery was released when its job was made
        assert d.released_at == mine["created_at"] and d.key is None and d.replays == 0


def test_an_unkeyed_emit_publishes_one_message_per_delivery_to_its_subscribers_queue():
    event = emit("order.placed", {"order": 8})

    assert Event.objects.get(pk=event.pk).data == {"order": 8}
    assert event.created_at == Event.objects.get(pk=event.pk).created_at
    assert Delivery.objects.filter(event=event, job__isnull=False).count() == 3
    assert queue_length("notifications") == 1  # shop.send-confirmation
    assert queue_length("default") == 2
    assert not Lane.objects.exists()


def test_a_keyed_emit_takes_its_keys_lanes_and_the_next_of_the_key_waits_without_a_job():
    # given an event of key k: released, each delivery holding its (subscriber, k) lane
    first = emit("order.placed", {"order": 1}, key="k")
    lanes = {lane.subscriber: lane for lane in Lane.objects.filter(key="k")}
    firsts = {d.subscriber: d for d in Delivery.objects.filter(event=first)}
    assert sorted(lanes) == ORDER_PLACED_SUBSCRIBERS
    assert all(lanes[s].delivery_id == firsts[s].id and lanes[s].job_id == firsts[s].job_id for s in lanes)

    # when a second event of k and one of another key are emitted
    second = emit("order.placed", {"order": 2}, key="k")
    other = emit("order.placed", {"order": 3}, key="other")

    # then the second's deliveries wait (no job, no message), the other key's are released
    waiting = Delivery.objects.filter(event=second)
    assert [(d.released_at, d.job_id, d.key) for d in waiting] == [(None, None, "k")] * 3
    assert all(d.job_id and d.released_at for d in Delivery.objects.filter(event=other))
    assert Lane.objects.filter(key="k").count() == 3 and Lane.objects.filter(key="other").count() == 3
    jobs = [d.job_id for d in Delivery.objects.filter(event__in=[first, other])]
    assert sorted(published_job_ids("notifications") + published_job_ids("default")) == sorted(jobs)


def test_a_rolled_back_emit_writes_and_publishes_nothing():
    class Undo(Exception):
        pass

    with pytest.raises(Undo), transaction.atomic():
        emit("order.placed", {"order": 9})
        emit("order.placed", {"order": 10}, key="k")
        raise Undo

    assert not Event.objects.exists() and not Delivery.objects.exists() and not Lane.objects.exists()
    assert queue_length("notifications") + queue_length("default") == 0


def test_a_delivery_reads_its_event_in_one_probe_and_a_deleted_one_is_none():
    event = emit("nobody.listens", {"a": [1, "b"]}, key="k")

    assert statements.event(event.pk) == ("nobody.listens", {"a": [1, "b"]}, "k")
    Event.objects.filter(pk=event.pk).delete()
    assert statements.event(event.pk) is None


def test_a_keyed_emit_reads_every_subscribers_lane_at_once_and_sets_a_stuck_one_right():
    # given key k: shop.audit's lane stuck (its holder ended without handing it on, a delivery
    # waiting behind it), the other two subscribers' lanes held by running jobs
    first = emit("order.placed", {"order": 1}, key="k")
    waiting = emit("order.placed", {"order": 2}, key="k")
    audit = Delivery.objects.get(event=first, subscriber="shop.audit")
    Job.objects.filter(pk=audit.job_id).update(status="succeeded")

    # when a third event of k is emitted
    third = emit("order.placed", {"order": 3}, key="k")

    # then the stuck lane went to the waiting delivery (released now), the third waits everywhere
    handed = Delivery.objects.get(event=waiting, subscriber="shop.audit")
    assert handed.job_id and handed.released_at
    assert Lane.objects.get(subscriber="shop.audit", key="k").delivery_id == handed.id
    assert [d.released_at for d in Delivery.objects.filter(event=third)] == [None] * 3
    # and the other subscribers' lanes stayed with their first jobs
    for sub in ("shop.process-images", "shop.send-confirmation"):
        assert Lane.objects.get(subscriber=sub, key="k").job_id == Delivery.objects.get(event=first, subscriber=sub).job_id
