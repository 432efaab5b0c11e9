"""The events API's contract (POST/GET /api/events), in process with Django's test client on the
session's real PostgreSQL and Redis: bad input is a 400/401/404/413 JSON answer naming the problem
and writes nothing; a good emit answers 202 with one delivery per subscriber; GET shows each
delivery's status and filters the log. No worker runs here: what a delivery does is in
test_events_live.py.
"""
from __future__ import annotations

import json

import pytest
from django.test import Client

from jobs.models import Job
from subscribers.models import Delivery, Event
from tests.support import queue_length, redis_client

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

ORDER_PLACED_SUBSCRIBERS = ["shop.audit", "shop.process-images", "shop.send-confirmation"]


@pytest.fixture
def empty_redis():
    redis_client().flushall()
    yield
    redis_client().flushall()


def assert_nothing_written() -> None:
    assert Event.objects.count() == 0
    assert Delivery.objects.count() == 0
    assert Job.objects.count() == 0


# --- bad input on POST /api/events -------------------------------------------------------------


def test_emit_with_an_unknown_field_is_400_naming_it(api):
    status, body = api("post", "/events", {"name": "order.placed", "data": {}, "colour": "red"})
    assert status == 400
    assert "colour" in body["fields"]
    assert_nothing_written()


def test_emit_without_a_name_is_400_naming_name(api):
    status, body = api("post", "/events", {"data": {"order": 1}})
    assert status == 400
    assert "name" in body["fields"]
    assert_nothing_written()


@pytest.mark.parametrize("name", ["Order.Placed", "order placed", ".order", "order/placed", "x" * 201, ""])
def test_emit_with_a_bad_name_is_400_naming_name(api, name):
    status, body = api("post", "/events", {"name": name, "data": {}})
    assert status == 400
    assert "name" in body["fields"], body
    assert_nothing_written()


@pytest.mark.parametrize("data", [[1, 2], "order 7", 7, None])
def test_emit_whose_data_is_not_an_object_is_400_naming_data(api, data):
    status, body = api("post", "/events", {"name": "order.placed", "data": data})
    assert status == 400
    assert "data" in body["fields"], body
    assert_nothing_written()


@pytest.mark.parametrize("key", ["", "k" * 201, 7])
def test_emit_with_a_bad_key_is_400_naming_key(api, key):
    status, body = api("post", "/events", {"name": "order.placed", "data": {}, "key": key})
    assert status == 400
    assert "key" in body["fields"], body
    assert_nothing_written()


def test_emit_with_data_over_one_mib_is_413(api):
    status, body = api("post", "/events", {"name": "order.placed", "data": {"blob": "x" * (1024 * 1024 + 10)}})
    assert status == 413
    assert "1 MiB" in body["detail"]
    assert_nothing_written()


def test_emit_with_malformed_json_is_400(api):
    status, body = api("post", "/events", raw=b'{"name": "order.placed", ')
    assert status == 400
    assert body["detail"]
    assert_nothing_written()


# --- authentication ----------------------------------------------------------------------------


def test_events_without_a_valid_token_are_401_and_emit_nothing():
    body = json.dumps({"name": "order.placed", "data": {}})
    for client in (Client(), Client(HTTP_AUTHORIZATION="Bearer cvy_wrong"), Client(HTTP_AUTHORIZATION="Basic abc")):
        response = client.post("/api/events", data=body, content_type="application/json")
        assert response.status_code == 401
        assert "token" in response.json()["detail"]
        assert client.get("/api/events").status_code == 401
        assert client.get("/api/events/1").status_code == 401
    assert_nothing_written()


# --- a good emit and what GET shows ---------------------------------------------------------------


def test_emit_answers_202_with_one_pending_delivery_per_subscriber_and_publishes_each(api, empty_redis):
    # when order.placed is emitted over HTTP
    status, event = api("post", "/events", {"name": "order.placed", "data": {"order": 7}, "key": "order-7"})

    # then it is recorded with one delivery per subscriber, each a pending job
    assert status == 202
    assert (event["name"], event["data"], event["key"]) == ("order.placed", {"order": 7}, "order-7")
    assert sorted(d["subscriber"] for d in event["deliveries"]) == ORDER_PLACED_SUBSCRIBERS
    assert {d["status"] for d in event["deliveries"]} == {"pending"}
    assert all(d["job"] and d["replays"] == 0 and d["finished_at"] is None for d in event["deliveries"])
    jobs = Job.objects.filter(pk__in=[d["job"] for d in event["deliveries"]])
    assert sorted(jobs.values_list("type", flat=True)) == [f"deliver:{s}" for s in ORDER_PLACED_SUBSCRIBERS]
    # and each delivery's message went to its subscriber's queue (the confirmation to notifications)
    assert queue_length("notifications") == 1
    assert queue_length("default") == 2


def test_emit_of_an_event_nobody_follows_is_recorded_with_no_delivery(api, empty_redis):
    status, event = api("post", "/events", {"name": "nobody.listens", "data": {"a": 1}})
    assert status == 202
    assert event["deliveries"] == []
    assert Event.objects.filter(pk=event["id"], name="nobody.listens").exists()
    assert Job.objects.count() == 0
    assert queue_length("default") == 0


def test_get_event_shows_each_deliverys_status(api, empty_redis):
    # given two order.placed events with the same key: the second's deliveries wait for the first's
    _, first = api("post", "/events", {"name": "order.placed", "data": {"order": 1}, "key": "cart-9"})
    _, second = api("post", "/events", {"name": "order.placed", "data": {"order": 2}, "key": "cart-9"})
    # and the first's confirmation has failed its last attempt
    confirmation = next(d for d in first["deliveries"] if d["subscriber"] == "shop.send-confirmation")
    Job.objects.filter(pk=confirmation["job"]).update(status="dead", attempt=6, error="smtp refused")

    # when each event is read back
    status, first_now = api("get", f"/events/{first['id']}")
    assert status == 200
    status, second_now = api("get", f"/events/{second['id']}")
    assert status == 200

    # then each delivery shows its own status, attempt and error
    by_sub = {d["subscriber"]: d for d in first_now["deliveries"]}
    assert by_sub["shop.send-confirmation"]["status"] == "dead"
    assert by_sub["shop.send-confirmation"]["attempt"] == 6
    assert by_sub["shop.send-confirmation"]["error"] == "smtp refused"
    assert by_sub["shop.audit"]["status"] == by_sub["shop.process-images"]["status"] == "pending"
    # and the second event's deliveries wait for their key, with no job yet
    assert [(d["status"], d["job"], d["attempt"]) for d in second_now["deliveries"]] == [("waiting", None, None)] * 3


def test_list_events_filters_by_name_and_key_newest_first(api, empty_redis):
    for n in range(3):
        api("post", "/events", {"name": "order.placed", "data": {"n": n}, "key": f"k{n % 2}"})
    api("post", "/events", {"name": "order.cancelled", "data": {"n": 9}})

    status, page = api("get", "/events?name=order.placed")
    assert status == 200
    assert page["next"] is None
    assert [e["data"]["n"] for e in page["items"]] == [2, 1, 0]
    assert {e["name"] for e in page["items"]} == {"order.placed"}

    status, page = api("get", "/events?name=order.placed&key=k0")
    assert status == 200
    assert [e["data"]["n"] for e in page["items"]] == [2, 0]

    status, page = api("get", "/events?name=order.cancelled")
    assert [(e["name"], len(e["deliveries"])) for e in page["items"]] == [("order.cancelled", 1)]  # shop.audit

    status, page = api("get", "/events?name=nothing.like.this")
    assert (status, page["next"], page["items"]) == (200, None, [])

    status, page = api("get", "/events?limit=2")
    assert len(page["items"]) == 2 and page["next"] == page["items"][-1]["id"]
    status, rest = api("get", f"/events?limit=2&before={page['next']}")
    assert [e["data"]["n"] for e in page["items"] + rest["items"]] == [9, 2, 1, 0] and rest["next"] is None


def test_unknown_event_id_is_404(api):
    status, body = api("get", "/events/987654")
    assert status == 404
    assert body["detail"]


LOGGED_EVENTS = 20_000


def test_listing_one_key_s_events_reads_the_key_index_not_the_whole_log(api):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    # given a long event log over many keys (and unkeyed events), with fresh statistics
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO subscribers_event (name, data, key, created_at)
            SELECT 'order.placed', '{}'::jsonb, CASE WHEN i %% 4 = 0 THEN NULL ELSE 'customer-' || (i %% 2000) END, now()
              FROM generate_series(1, %s) AS i
            """,
            [LOGGED_EVENTS],
        )
        cursor.execute("ANALYZE subscribers_event")
        # the ids go on from wherever this process's earlier tests left the sequence (a flush
        # does not reset it): the page "before" an id halfway through this log, not before 10000
        cursor.execute("SELECT min(id) FROM subscribers_event")
        halfway = cursor.fetchone()[0] + LOGGED_EVENTS // 2
    for query in ("key=customer-7", f"key=customer-7&limit=3&before={halfway}"):
        # when a client lists one key's events (a page, or the page before an id)
        with CaptureQueriesContext(connection) as queries:
            status, page = api("get", f"/events?{query}")
        assert status == 200 and page["items"], page
        assert {e["key"] for e in page["items"]} == {"customer-7"}
        assert [e["id"] for e in page["items"]] == sorted((e["id"] for e in page["items"]), reverse=True)
        # then PostgreSQL's plan for the list's query walks the key's index, not the table
        [listing] = [q["sql"] for q in queries.captured_queries if 'FROM "subscribers_event"' in q["sql"]]
        with connection.cursor() as cursor:
            cursor.execute("EXPLAIN " + listing)
            plan = "\n".join(row[0] for row in cursor.fetchall())
        assert "event_key_idx" in plan and "Seq Scan" not in plan, plan
