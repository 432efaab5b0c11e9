"""jobs.engine.publish.batches: how jobs published together are grouped into Celery messages."""
from __future__ import annotations

from jobs.engine.publish import PER_MESSAGE, SPREAD, Message, batches


def messages(n: int, type_name: str = "examples.echo", queue: str = "default", priority: int = 5, start: int = 1) -> list[Message]:
    return [Message(start + i, queue, priority, type_name) for i in range(n)]


def ids(groups: list[list[Message]]) -> list[list[int]]:
    return [[m.job_id for m in group] for group in groups]


def test_up_to_spread_jobs_of_one_type_go_one_per_message():
    assert ids(batches(messages(SPREAD))) == [[i] for i in range(1, SPREAD + 1)]
    assert ids(batches(messages(1))) == [[1]]
    assert batches([]) == []


def test_a_larger_group_is_split_evenly_over_at_least_spread_messages_in_order():
    groups = ids(batches(messages(200)))
    assert len(groups) == SPREAD and [len(g) for g in groups] == [13] * 15 + [5]
    assert [i for g in groups for i in g] == list(range(1, 201))


def test_no_message_carries_more_than_per_message_ids():
    groups = batches(messages(SPREAD * PER_MESSAGE * 2))
    assert {len(g) for g in groups} == {PER_MESSAGE}


def test_types_queues_and_priorities_never_share_a_message():
    mixed = (
        messages(40, "a")
        + messages(40, "b", start=100)
        + messages(40, "a", priority=9, start=200)
        + messages(40, "a", queue="q", start=300)
    )
    for group in batches(mixed):
        assert len({(m.type, m.queue, m.priority) for m in group}) == 1
    assert sorted(m.job_id for g in batches(mixed) for m in g) == sorted(m.job_id for m in mixed)


def test_a_priority_goes_to_the_list_kombus_redis_transport_reads_for_it():
    from jobs.engine.envelope import queue_key

    steps = list(range(10))
    assert queue_key("default", 0, steps, ":") == "default"  # step 0: the bare name
    assert queue_key("default", 3, steps, ":") == "default:3"
    assert queue_key("q", 9, steps, "\x06\x16") == "q\x06\x169"
    # coarser steps: the highest step at or below the priority, as kombu's Channel.priority
    assert [queue_key("q", p, [0, 3, 6, 9], ":") for p in (0, 2, 3, 5, 8, 9)] == ["q", "q", "q:3", "q:3", "q:6", "q:9"]
