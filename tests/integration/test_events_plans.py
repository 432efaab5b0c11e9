"""Query plans of the event bus's per-key lookups, on the session's real PostgreSQL: each is an index
probe that reads a handful of rows, however long the key's history. Proved with EXPLAIN (ANALYZE,
BUFFERS), never with timings.
"""
from __future__ import annotations

import json
from typing import Any, Iterator

import pytest
from django.db import connection
from django.utils import timezone

from subscribers.models import Delivery, Event

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

SUB, HOT = "diagnostics.record", "hot-key"


def nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from nodes(child)


def explain(queryset) -> dict[str, Any]:
    (result,) = json.loads(queryset.explain(format="json", analyze=True, buffers=True))
    return result["Plan"]


def history(released: int, waiting: int, key: str = HOT) -> list[Delivery]:
    """`released` deliveries of (SUB, key) delivered long ago, then `waiting` ones behind them."""
    now = timezone.now()
    events = Event.objects.bulk_create([Event(name="diagnostics.history", key=key) for _ in range(released + waiting)])
    return Delivery.objects.bulk_create(
        [Delivery(event=e, subscriber=SUB, key=key, released_at=now if n < released else None) for n, e in enumerate(events)]
    )


def test_next_waiting_delivery_scan_walks_the_keys_whole_history():
    # given a key with 5000 deliveries released (and long done), 2 waiting behind them, and 40
    # other keys with 250 released deliveries each, the statistics up to date
    rows = history(5000, 2)
    for k in range(40):
        history(250, 0, key=f"cold-{k}")
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE subscribers_delivery")

    # when the next waiting delivery of the key is looked up, as an ending delivery does
    # (subscribers.delivery.release_next)
    lookup = Delivery.objects.filter(subscriber=SUB, key=HOT, released_at__isnull=True).order_by("id")[:1]
    assert list(lookup) == [rows[5000]]
    plan = explain(lookup)

    # then the plan probes an index of waiting deliveries: no row is read only to be thrown away
    scans = [n for n in nodes(plan) if n.get("Relation Name") == "subscribers_delivery"]
    assert [(n["Node Type"], n.get("Index Name")) for n in scans] == [("Index Scan", "delivery_waiting_idx")], json.dumps(plan, indent=1)
    assert sum(n.get("Rows Removed by Filter", 0) for n in nodes(plan)) == 0, json.dumps(plan, indent=1)
    assert scans[0]["Actual Rows"] <= 2
    # and reads a handful of pages, not the key's history (5000 index entries span ~20 pages)
    pages = sum(plan.get(f"Shared {kind} Blocks", 0) for kind in ("Hit", "Read"))
    assert pages <= 6, json.dumps(plan, indent=1)


def test_lane_lookups_are_index_probes():
    # given 3000 keys of one subscriber whose lanes are held, each by its first delivery's job
    from subscribers.delivery import LANE_SQL
    from subscribers.models import Lane

    rows = []
    for k in range(3000):
        rows += history(1, 0, key=f"key-{k}") if k % 100 else history(1, 2, key=f"key-{k}")
    held = [d for d in rows if d.released_at is not None]
    Lane.objects.bulk_create([Lane(subscriber=SUB, key=d.key, job_id=10_000 + n, delivery=d) for n, d in enumerate(held)])
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE subscribers_delivery")
        cursor.execute("ANALYZE subscribers_lane")

    # when an ending job looks its lane up (release_next), and an emit its key's lane (lane_taken)
    by_job = explain(Lane.objects.filter(job_id=10_500).values_list("pk", "subscriber", "key"))
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + LANE_SQL, {"sub": SUB, "key": "key-500"})
        result = cursor.fetchone()[0]
    by_key = (json.loads(result) if isinstance(result, str) else result)[0]["Plan"]

    # then each reads the lane through its unique index, and the waiting deliveries through theirs
    def scans(plan: dict[str, Any]) -> dict[str, tuple[str, str | None]]:
        return {n["Relation Name"]: (n["Node Type"], n.get("Index Name")) for n in nodes(plan) if "Relation Name" in n}

    assert scans(by_job) == {"subscribers_lane": ("Index Scan", "one_lane_per_job")}, json.dumps(by_job, indent=1)
    found = scans(by_key)
    assert found["subscribers_lane"] == ("Index Scan", "one_lane_per_key"), json.dumps(by_key, indent=1)
    assert found["subscribers_delivery"][1] == "delivery_waiting_idx", json.dumps(by_key, indent=1)
    assert sum(n.get("Rows Removed by Filter", 0) for plan in (by_job, by_key) for n in nodes(plan)) == 0
