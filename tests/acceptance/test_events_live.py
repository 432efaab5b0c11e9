"""The event bus across real processes: `manage.py start` workers on the session's PostgreSQL and
Redis, no eager mode and no mocks. Each test is one promise of docs/architecture.md ("Events", "Guarantees"),
checked on rows in PostgreSQL, messages in Redis, HTTP answers and counted side effects.

The subscribers are the demo slice's (examples/subscribers.py): order.placed reaches
shop.send-confirmation, shop.process-images and shop.audit; every diagnostics.* event reaches
diagnostics.record, which writes one Arrival row per run (after sleeping `data.sleep` seconds);
diagnostics.flaky also reaches diagnostics.flaky, which fails its first `data.fail` attempts
(2 retries: 3 attempts in all).

Timings come from tests.support.FAST: a lost worker's lease lapses in 3 s, a lost message is sent
again after 3 s, and every worker runs the relay and the reaper every 200 ms.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import signal
import time

import psutil
import pytest
from django.db import transaction
from django.db.models import Count
from django.utils import timezone

from examples.models import Arrival, AuditEntry, OutboxEmail
from jobs import enqueue
from jobs.engine import registry as job_registry
from jobs.models import Chain, ChainStatus, Job, Status
from jobs.engine.publish import Message, publish
from subscribers import emit
from subscribers.models import Delivery, Event
from tests.support import (
    all_messages_consumed,
    api_client,
    embedded_redis,
    is_dead,
    kill_tree,
    queue_length,
    redis_client,
    redis_crashed_and_emptied,
    redis_up,
    start_workers,
    wait_for,
)

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True, databases="__all__")]


# --- helpers ----------------------------------------------------------------------------------


def delivery(event: Event, subscriber: str) -> Delivery:
    return Delivery.objects.select_related("job").get(event=event, subscriber=subscriber)


def delivery_status(event: Event, subscriber: str) -> str:
    return delivery(event, subscriber).status


def wait_delivery(event: Event, subscriber: str, status: str, timeout: float) -> Delivery:
    wait_for(
        lambda: delivery_status(event, subscriber) == status,
        timeout,
        interval=0.05,
        what=f"{subscriber}'s delivery of {event} to be {status} (now {delivery_status(event, subscriber)})",
    )
    return delivery(event, subscriber)


def arrivals(subscriber: str = "diagnostics.record", **filters: object) -> list[tuple]:
    rows = Arrival.objects.filter(subscriber=subscriber, **filters).order_by("id")
    return list(rows.values_list("event_id", "attempt"))


def all_queues_empty() -> bool:
    return all(queue_length(queue) == 0 for queue in job_registry.queues())


# --- 1. one subscriber failing does not hold back the others ----------------------------------------


def test_failing_subscriber_retries_and_dead_letters_alone_while_the_other_delivery_succeeds(live):
    # given one worker with a single pool process (the failing delivery competes for it)
    live.start("--concurrency", "1", mode="worker", name="solo")

    # when diagnostics.flaky is emitted, set to fail more attempts than its subscriber has (3)
    event = emit("diagnostics.flaky", {"fail": 5})

    # then diagnostics.record's delivery succeeds at its first attempt, promptly
    recorded = wait_delivery(event, "diagnostics.record", Status.SUCCEEDED, 20)
    assert (recorded.job.attempt, recorded.job.error) == (1, "")
    assert (recorded.job.finished_at - event.created_at).total_seconds() < 10
    # and diagnostics.flaky's delivery fails, is retried twice and ends dead after 3 attempts
    flaky = wait_delivery(event, "diagnostics.flaky", Status.DEAD, 30)
    assert (flaky.job.attempt, flaky.job.max_attempts) == (3, 3)
    assert "failing attempt 3" in flaky.job.error
    # and the record delivery did not wait for the flaky one's retries
    assert recorded.job.finished_at < flaky.job.finished_at
    # and only the record subscriber's side effect happened, once
    assert arrivals("diagnostics.record") == [(event.pk, 1)]
    assert arrivals("diagnostics.flaky") == []
    time.sleep(1.0)  # nothing is retried after dead
    assert Job.objects.get(pk=flaky.job_id).attempt == 3
    assert Arrival.objects.count() == 1

    # and GET /api/events/{id} shows each delivery's own outcome
    response = api_client().get(f"/api/events/{event.pk}")
    assert response.status_code == 200
    shown = {d["subscriber"]: d for d in response.json()["deliveries"]}
    assert (shown["diagnostics.record"]["status"], shown["diagnostics.record"]["attempt"]) == ("succeeded", 1)
    assert (shown["diagnostics.flaky"]["status"], shown["diagnostics.flaky"]["attempt"]) == ("dead", 3)
    assert "failing attempt 3" in shown["diagnostics.flaky"]["error"]


def test_subscriber_failing_once_succeeds_on_its_second_attempt(live):
    # given a worker
    live.start("--concurrency", "1", mode="worker", name="solo")

    # when diagnostics.flaky is emitted, set to fail its first attempt only
    event = emit("diagnostics.flaky", {"fail": 1})

    # then its flaky delivery succeeds on attempt 2, with one side effect from that attempt
    flaky = wait_delivery(event, "diagnostics.flaky", Status.SUCCEEDED, 30)
    assert flaky.job.attempt == 2
    assert flaky.job.error == ""
    assert arrivals("diagnostics.flaky") == [(event.pk, 2)]
    # and the other subscriber got it once, on its first attempt
    recorded = wait_delivery(event, "diagnostics.record", Status.SUCCEEDED, 10)
    assert recorded.job.attempt == 1
    assert arrivals("diagnostics.record") == [(event.pk, 1)]


def test_dead_delivery_releases_the_next_event_of_its_key_to_that_subscriber(live):
    # given a worker
    live.start("--concurrency", "2", mode="worker", name="pair")

    # when two diagnostics.flaky events share a key: the first fails every attempt, the second none
    doomed = emit("diagnostics.flaky", {"fail": 5}, key="account-3")
    follower = emit("diagnostics.flaky", {"fail": 0}, key="account-3")

    # then the second's flaky delivery waits (no job) while the first is being retried
    assert delivery(follower, "diagnostics.flaky").job_id is None
    # and once the first is dead, the second runs and succeeds on its first attempt
    first = wait_delivery(doomed, "diagnostics.flaky", Status.DEAD, 30)
    second = wait_delivery(follower, "diagnostics.flaky", Status.SUCCEEDED, 20)
    assert second.job.attempt == 1
    assert second.job.started_at >= first.job.finished_at
    assert arrivals("diagnostics.flaky") == [(follower.pk, 1)]
    # and diagnostics.record got both events, in order, once each
    wait_delivery(follower, "diagnostics.record", Status.SUCCEEDED, 10)
    assert arrivals("diagnostics.record") == [(doomed.pk, 1), (follower.pk, 1)]


# --- 2. emit belongs to the caller's transaction -----------------------------------------------------


def test_emit_in_a_rolled_back_transaction_leaves_no_event_delivery_job_or_message(live):
    # given no worker, and an empty Redis (the live fixture flushed it)
    assert redis_client().dbsize() == 0

    # when order.placed is emitted in a transaction that then rolls back
    with pytest.raises(RuntimeError):
        with transaction.atomic():
            emitted = emit("order.placed", {"order": 41, "email": "ada@example.com"}, key="order-41")
            assert Delivery.objects.filter(event=emitted).count() == 3  # visible inside, for now
            raise RuntimeError("the order could not be saved")

    # then no event, delivery or job row exists, and nothing reached Redis
    assert Event.objects.count() == 0
    assert Delivery.objects.count() == 0
    assert Job.objects.count() == 0
    assert redis_client().dbsize() == 0, redis_client().keys("*")

    # and (the same check catching a real emit) an emit that commits is published at once
    kept = emit("diagnostics.control", {})
    assert Event.objects.get().pk == kept.pk
    assert queue_length("default") == 1


def test_emit_in_a_committed_transaction_delivers_once_to_each_subscriber(live):
    # given a worker consuming every queue (default, images, notifications)
    worker = live.start(mode="worker", name="shop", wait=False)

    # when order.placed is emitted inside a transaction that commits
    with transaction.atomic():
        event = emit("order.placed", {"order": 42, "email": "ada@example.com"}, key="order-42")
        # nothing is published before the commit
        assert all_queues_empty()
    worker.wait_ready()

    # then each of its 3 subscribers' deliveries succeeds, each on its first attempt
    for sub in ("shop.send-confirmation", "shop.process-images", "shop.audit"):
        done = wait_delivery(event, sub, Status.SUCCEEDED, 40)
        assert done.job.attempt == 1, sub
    assert Delivery.objects.filter(event=event).count() == 3

    # and shop.process-images started exactly one images.resize -> notifications.send-email chain
    resize = Job.objects.get(type="images.resize")
    assert resize.idempotency_key == f"conveyor:delivery:{event.pk}:shop.process-images:resize"

    def chain_succeeded() -> Chain | None:
        chain_id = Job.objects.filter(pk=resize.pk).values_list("chain_id", flat=True).get()
        return Chain.objects.filter(pk=chain_id, status=ChainStatus.SUCCEEDED).first() if chain_id else None

    chain = wait_for(chain_succeeded, 60, interval=0.1, what="the images.resize chain to succeed")
    steps = list(Job.objects.filter(chain=chain).order_by("chain_index"))
    assert [(j.type, j.status, j.attempt) for j in steps] == [
        ("images.resize", Status.SUCCEEDED, 1),
        ("notifications.send-email", Status.SUCCEEDED, 1),
    ]

    # and shop.send-confirmation wrote exactly one e-mail for its delivery, the chain one more
    confirmation_key = f"conveyor:delivery:{event.pk}:shop.send-confirmation"
    assert list(OutboxEmail.objects.filter(idempotency_key=confirmation_key).values_list("to", "subject")) == [
        ("ada@example.com", "Order 42 confirmed")
    ]
    assert OutboxEmail.objects.filter(idempotency_key=f"conveyor-job-{steps[1].pk}").count() == 1
    # and shop.audit wrote one audit row
    assert list(AuditEntry.objects.values_list("event_id", "name", "key")) == [(event.pk, "order.placed", "order-42")]

    # and nothing more happens later: 3 deliveries + 2 chain steps, 2 e-mails, 1 audit row
    time.sleep(1.0)
    assert Job.objects.count() == 5
    assert OutboxEmail.objects.count() == 2
    assert AuditEntry.objects.count() == 1
    assert Event.objects.count() == 1


# --- 3. no delivery lost: SIGKILL, Redis restart, duplicate messages ----------------------------------


def test_delivery_of_a_worker_killed_mid_run_is_completed_by_another_and_its_key_goes_on(live):
    # given a worker running a diagnostics delivery that takes 2 s, and a second event of the same
    # key waiting behind it
    doomed = live.start("--concurrency", "1", mode="worker", name="doomed")
    slow = emit("diagnostics.slow", {"sleep": 2}, key="account-7")
    behind = emit("diagnostics.after", {}, key="account-7")
    running = wait_delivery(slow, "diagnostics.record", Status.RUNNING, 30)
    assert running.job.worker.startswith("doomed@test/")
    assert delivery(behind, "diagnostics.record").status == "waiting"

    # when that worker's whole process tree is killed with SIGKILL in the middle of the delivery,
    # as if its machine died (its supervisor, frozen first, gets no chance to hand the job back)
    pids = [doomed.process.pid, *(p.pid for p in psutil.Process(doomed.process.pid).children(recursive=True))]
    os.kill(doomed.process.pid, signal.SIGSTOP)
    kill_tree(doomed.process.pid)
    wait_for(lambda: all(map(is_dead, pids)), 10, what="the doomed worker's processes to die")
    assert delivery_status(slow, "diagnostics.record") == Status.RUNNING  # nobody finished it
    assert Arrival.objects.count() == 0  # the killed run never reached its side effect
    # and another worker is started
    live.start("--concurrency", "1", mode="worker", name="rescuer")

    # then once the lease lapses the other worker delivers it again (attempt 2) and completes it
    done = wait_delivery(slow, "diagnostics.record", Status.SUCCEEDED, 40)
    assert done.job.attempt == 2
    assert done.job.worker.startswith("rescuer@test/"), done.job.worker
    # and the waiting event of the same key is delivered after it
    after = wait_delivery(behind, "diagnostics.record", Status.SUCCEEDED, 20)
    assert after.job.attempt == 1
    # and each was recorded exactly once, in key order
    assert arrivals() == [(slow.pk, 2), (behind.pk, 1)]


def test_duplicated_delivery_message_delivers_once(live):
    # given a diagnostics event emitted with no worker running: its delivery's message waits
    event = emit("diagnostics.dup", {"sleep": 0.5})
    job = delivery(event, "diagnostics.record").job
    assert queue_length("default") == 1
    # and the same message is published twice more
    message = Message(job.pk, job.queue, job.priority, job.type)
    assert publish([message, message]) == 2
    assert queue_length("default") == 3

    # when a worker with three pool processes takes the three copies at once
    live.start("--concurrency", "3", mode="worker", name="dup-worker")

    # then the delivery succeeds after one run: one Arrival row, attempt 1
    done = wait_delivery(event, "diagnostics.record", Status.SUCCEEDED, 30)
    assert done.job.attempt == 1
    # and all three copies were taken and acknowledged (none waits in the queue or unacked in
    # Redis), the two others without running: a run would claim the row again (attempt 2, a new
    # start time) and write a second Arrival
    wait_for(all_messages_consumed, 10, what="the three copies to be consumed and acknowledged")
    assert arrivals() == [(event.pk, 1)]
    ran = (Status.SUCCEEDED, 1, done.job.started_at, done.job.finished_at)

    def as_it_ran() -> tuple:
        again = Job.objects.get(pk=job.pk)
        return (again.status, again.attempt, again.started_at, again.finished_at)

    assert as_it_ran() == ran

    # and a copy arriving after the delivery finished is consumed without running too
    assert publish([message]) == 1
    wait_for(all_messages_consumed, 10, what="the late copy to be consumed and acknowledged")
    time.sleep(0.5)  # nothing runs late
    assert arrivals() == [(event.pk, 1)]
    assert as_it_ran() == ran


def test_no_delivery_is_lost_when_redis_restarts_empty_mid_stream(live):
    if embedded_redis() is None:
        pytest.skip("needs the session's embedded Redis (REDIS_URL names an outside server)")
    # given a worker with two pool processes, and 30 diagnostics events on 10 keys, each delivery
    # taking 0.3 s: per key one delivery at a time, so messages queue and deliveries wait
    live.start("--concurrency", "2", mode="worker", name="steady")
    events = [emit("diagnostics.stream", {"seq": n, "sleep": 0.3}, key=f"k{n % 10}") for n in range(30)]
    wait_for(lambda: Arrival.objects.count() >= 4, 30, interval=0.05, what="the first deliveries")

    # when Redis is killed with SIGKILL while messages are queued, its append-only file deleted
    # (every queued and unacked message lost), and it is started again a second later
    queued = queue_length("default")
    with redis_crashed_and_emptied():
        done_at_crash = Arrival.objects.count()
        time.sleep(1.0)
    assert queued > 0, "no message was queued at the crash: nothing was tested"
    assert done_at_crash < 30, "every delivery finished before Redis went away: nothing was tested"

    # then every event is delivered (the relay publishes the rows whose messages were lost)
    wait_for(lambda: Arrival.objects.count() >= 30, 60, interval=0.2, what=f"30 deliveries ({done_at_crash} at the crash)")
    time.sleep(1.0)  # and no late duplicate
    # and each exactly once, and per key in the order emitted
    assert Arrival.objects.count() == 30
    assert sorted(Arrival.objects.values_list("event_id", flat=True)) == sorted(e.pk for e in events)
    for k in range(10):
        seqs = list(Arrival.objects.filter(key=f"k{k}").order_by("id").values_list("sequence", flat=True))
        assert seqs == list(range(k, 30, 10)), f"key k{k} arrived out of order: {seqs}"
    assert Job.objects.filter(type="deliver:diagnostics.record", status=Status.SUCCEEDED).count() == 30
    assert redis_up()


def test_emit_over_http_while_redis_is_down_answers_at_once_and_is_delivered_once_it_is_back(live):
    if embedded_redis() is None:
        pytest.skip("needs the session's embedded Redis (REDIS_URL names an outside server)")
    client = api_client()
    body = json.dumps({"name": "order.placed", "data": {"order": 43, "email": "bob@example.com"}})

    # when order.placed (3 subscribers) is emitted over HTTP while Redis is down
    with redis_crashed_and_emptied():
        started = time.monotonic()
        response = client.post("/api/events", data=body, content_type="application/json")
        elapsed = time.monotonic() - started

    # then the event and its 3 deliveries are recorded, and the request answered 202 at once:
    # publishing is the relay's job while Redis is away
    assert response.status_code == 202, response.content
    event = Event.objects.get(pk=response.json()["id"])
    assert Delivery.objects.filter(event=event, job__isnull=False).count() == 3
    assert elapsed < 2.0, f"POST /api/events took {elapsed:.1f}s while Redis was down"

    # and once Redis is back a worker delivers each of them, once
    live.start(mode="worker", name="after-outage")
    for sub in ("shop.send-confirmation", "shop.process-images", "shop.audit"):
        assert wait_delivery(event, sub, Status.SUCCEEDED, 40).job.attempt == 1
    assert AuditEntry.objects.filter(event_id=event.pk).count() == 1
    assert OutboxEmail.objects.filter(idempotency_key=f"conveyor:delivery:{event.pk}:shop.send-confirmation").count() == 1


def test_key_whose_last_delivery_was_cleaned_up_by_retention_still_delivers_new_events(live):
    # given a worker, and a keyed event delivered long ago: its delivery job finished 8 days back,
    # past the retention period (CONVEYOR_RETENTION_DAYS, 7 by default)
    live.start("--concurrency", "1", mode="worker", name="keeper")
    old = emit("diagnostics.old", {}, key="customer-5")
    delivered = wait_delivery(old, "diagnostics.record", Status.SUCCEEDED, 20)
    Job.objects.filter(pk=delivered.job_id).update(finished_at=timezone.now() - dt.timedelta(days=8))
    # and the retention cleanup has run (conveyor.cleanup, as its schedule runs it) and deleted it
    cleanup = enqueue("conveyor.cleanup", {})
    wait_for(lambda: Job.objects.filter(pk=cleanup.pk, status=Status.SUCCEEDED).exists(), 20, what="the cleanup job")
    assert not Job.objects.filter(pk=delivered.job_id).exists()

    # when a new event of the same key is emitted
    new = emit("diagnostics.new", {}, key="customer-5")

    # then its delivery is released at once (the key has nothing unfinished) and delivered
    assert delivery(new, "diagnostics.record").job_id is not None, "the new delivery waits behind a delivery long done"
    wait_delivery(new, "diagnostics.record", Status.SUCCEEDED, 20)
    assert arrivals() == [(old.pk, 1), (new.pk, 1)]
    # and the old delivery does not read as waiting
    assert delivery(old, "diagnostics.record").status != "waiting"


# --- 4. per-key order under two competing workers ----------------------------------------------------


def test_200_events_on_10_keys_arrive_in_key_order_exactly_once_with_two_workers(live):
    # given two workers with two pool processes each
    start_workers(live, ("left", ("--concurrency", "2")), ("right", ("--concurrency", "2")))

    # when 200 diagnostics.seq events are emitted, seq n on key k{n % 10}, while they consume;
    # every other event of k0 is slow (0.5 s): the next one, left free to run beside it, would
    # overtake it
    events = [
        emit("diagnostics.seq", {"seq": n, "sleep": 0.5 if n % 20 == 0 else 0}, key=f"k{n % 10}")
        for n in range(200)
    ]

    # then all 200 are delivered
    wait_for(lambda: Arrival.objects.count() >= 200, 120, interval=0.25, what="200 arrivals")
    time.sleep(1.0)  # and no late duplicate
    # and per key, the arrivals (in the order their rows were written) have increasing seq
    for k in range(10):
        seqs = list(Arrival.objects.filter(key=f"k{k}").order_by("id").values_list("sequence", flat=True))
        assert seqs == list(range(k, 200, 10)), f"key k{k} arrived out of order: {seqs}"
    # and every event was delivered exactly once, by one attempt of one job
    assert Arrival.objects.count() == 200
    per_event = Arrival.objects.values("event_id").annotate(n=Count("id"))
    assert {row["n"] for row in per_event} == {1}
    assert {row["event_id"] for row in per_event} == {e.pk for e in events}
    assert Arrival.objects.filter(attempt=1).count() == 200
    deliveries = Delivery.objects.filter(subscriber="diagnostics.record")
    assert deliveries.count() == 200
    assert deliveries.filter(job__status=Status.SUCCEEDED, job__attempt=1).count() == 200
    # and both workers took a share (the order held under real concurrency)
    workers = {w.split("@")[0] for w in Job.objects.filter(type="deliver:diagnostics.record").values_list("worker", flat=True)}
    assert workers == {"left", "right"}
