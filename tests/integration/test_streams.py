"""Live streams (GET /api/{jobs,chains,events}/{id}/stream): Server-Sent Events read through
Django's async test client on the real PostgreSQL, the changes written by the store's own
statements (no worker: here, in another thread, as a worker would write them)."""
from __future__ import annotations

import asyncio
import threading
from typing import Any, AsyncIterator, Callable

import pytest

from tests.support import in_server_loop
from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.db import connections
from django.test import AsyncClient

from jobs import Step, enqueue, start_chain
from jobs.engine import store
from jobs.interfaces import listener, sse, streams
from jobs.models import Job
from tests.factories import api_token

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")


@pytest.fixture(autouse=True)
def fast_ticks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(streams, "TICK", 0.05)


in_loop = in_server_loop


class _Client:
    """Django's AsyncClient with a real API token on every request (its own default headers are
    sent under the wrong names in this Django: per request they are right)."""

    def __init__(self, token: str) -> None:
        self.client, self.token = AsyncClient(), token

    async def get(self, path: str, headers: dict[str, str] | None = None) -> Any:
        return await self.client.get(path, headers={"Authorization": f"Bearer {self.token}", **(headers or {})})


async def _client() -> _Client:
    return _Client(await sync_to_async(api_token)())


async def _events(response: Any) -> AsyncIterator[sse.Event]:
    """The events of a streaming answer, as they come."""
    buffer = ""
    async for chunk in response.streaming_content:
        buffer += chunk.decode()
        while "\n\n" in buffer:
            block, buffer = buffer.split("\n\n", 1)
            for event in sse.parse([*block.split("\n"), ""]):
                yield event


async def _next(events: AsyncIterator[sse.Event], timeout: float = 5.0) -> sse.Event:
    return await asyncio.wait_for(events.__anext__(), timeout)


def _in_thread(action: Callable[[], object]) -> None:
    """Write as another process would: a thread, its own connections."""

    def run() -> None:
        try:
            action()
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(10)


@in_loop
async def test_a_job_stream_sends_each_change_then_its_end_and_closes():
    # given a pending job and its stream
    job = await sync_to_async(enqueue)("examples.echo", {"n": 1})
    response = await (await _client()).get(f"/api/jobs/{job.pk}/stream")
    assert response.status_code == 200 and response["Content-Type"] == "text/event-stream"
    events = _events(response)
    first = await _next(events)
    assert (first.event, first.data["id"], first.data["status"], first.data["attempt"]) == ("state", job.pk, "pending", 0)

    # when a worker claims it, then reports progress
    await sync_to_async(_in_thread)(lambda: store.claim(job.pk, "test/1", 30))
    running = await _next(events)
    await sync_to_async(_in_thread)(lambda: store.progress(job.pk, 1, 40, "half way"))
    progressed = await _next(events)

    # then each change came as a state with a new id
    assert (running.data["status"], running.data["attempt"], running.data["worker"]) == ("running", 1, "test/1")
    assert (progressed.data["progress"], progressed.data["progress_message"]) == (40, "half way")
    assert len({first.id, running.id, progressed.id}) == 3

    # and when it succeeds, the last event is `end` with its output, and the stream closes
    await sync_to_async(_in_thread)(lambda: store.succeed(job.pk, 1, '{"n": 1}'))
    end = await _next(events)
    assert (end.event, end.data["status"], end.data["output"]) == ("end", "succeeded", {"n": 1})
    with pytest.raises(StopAsyncIteration):
        await _next(events)


@in_loop
async def test_a_stream_resumed_with_its_last_event_id_sends_only_what_changed_since():
    # given a pending job whose stream was read once
    job = await sync_to_async(enqueue)("examples.echo", {"n": 2})
    client = await _client()
    seen = await _next(_events(await client.get(f"/api/jobs/{job.pk}/stream")))

    # when the client reconnects with that event's id, and the job is claimed meanwhile
    resumed = _events(await client.get(f"/api/jobs/{job.pk}/stream", headers={"Last-Event-ID": seen.id}))
    await sync_to_async(_in_thread)(lambda: store.claim(job.pk, "test/1", 30))

    # then the first event it receives is the change, not the state it had
    change = await _next(resumed)
    assert change.data["status"] == "running" and change.id != seen.id

    # and a reconnect with an older id gets the current state at once
    again = await _next(_events(await client.get(f"/api/jobs/{job.pk}/stream", headers={"Last-Event-ID": seen.id})))
    assert again.id == change.id

    # and once ended, a reconnect with the end's id is answered 204 (EventSource stops there)
    await sync_to_async(_in_thread)(lambda: store.succeed(job.pk, 1, "{}"))
    end = await _next(_events(await client.get(f"/api/jobs/{job.pk}/stream", headers={"Last-Event-ID": change.id})))
    assert end.event == "end"
    done = await client.get(f"/api/jobs/{job.pk}/stream", headers={"Last-Event-ID": end.id})
    assert done.status_code == 204


@in_loop
async def test_a_chain_stream_shows_its_steps_and_ends_with_the_chain():
    # given a chain of two steps and its stream
    chain = await sync_to_async(start_chain)([Step("examples.echo", {"a": 1}), Step("examples.echo", {"b": 2})])
    events = _events(await (await _client()).get(f"/api/chains/{chain.pk}/stream"))
    first = await _next(events)
    assert (first.data["status"], first.data["steps"]) == ("running", 2)
    assert [(j["index"], j["status"]) for j in first.data["jobs"]] == [(0, "pending")]

    # when both steps run and succeed (as a worker records them, through jobs.engine.chains)
    def run_both() -> None:
        from jobs.engine.runner import execute

        for _ in range(2):
            step = Job.objects.filter(chain=chain, status="pending").order_by("chain_index").first()
            execute(step.pk, "test/1")

    await sync_to_async(_in_thread)(run_both)

    # then the stream ends with the chain, both steps succeeded and the last one's output
    last = await _next(events)
    while last.event != "end":
        last = await _next(events)
    assert last.data["status"] == "succeeded" and last.data["output"] == {"b": 2}
    assert [(j["index"], j["status"]) for j in last.data["jobs"]] == [(0, "succeeded"), (1, "succeeded")]


@in_loop
async def test_streams_answer_404_for_unknown_rows_and_429_over_the_per_token_bound(monkeypatch):
    client = await _client()
    for path in ("/api/jobs/987654/stream", "/api/chains/987654/stream", "/api/events/987654/stream"):
        assert (await client.get(path)).status_code == 404, path
    assert (await AsyncClient().get("/api/jobs/1/stream")).status_code == 401

    # given a token with one stream open, at a bound of one
    monkeypatch.setattr(streams, "PER_TOKEN", 1)
    job = await sync_to_async(enqueue)("examples.echo", {"n": 3})
    events = _events(await client.get(f"/api/jobs/{job.pk}/stream"))
    await _next(events)
    # then a second one is refused, naming the setting
    refused = await client.get(f"/api/jobs/{job.pk}/stream")
    assert refused.status_code == 429 and "CONVEYOR_STREAMS_PER_TOKEN" in refused.json()["detail"]
    await events.aclose()


@in_loop
async def test_a_browser_without_an_authorization_header_streams_with_access_token_in_the_query():
    # given a token and a job (an EventSource sends no header: the bearer rides in the URL)
    client = await _client()
    job = await sync_to_async(enqueue)("examples.echo", {"n": 4})
    # then the stream takes it from ?access_token=, and the job's ordinary GET does not
    streamed = await client.client.get(f"/api/jobs/{job.pk}/stream?access_token={client.token}")
    assert streamed.status_code == 200
    assert (await _next(_events(streamed))).data["id"] == job.pk
    assert (await client.client.get(f"/api/jobs/{job.pk}?access_token={client.token}")).status_code == 401
    assert (await client.client.get(f"/api/jobs/{job.pk}/stream?access_token=nope")).status_code == 401


@in_loop
async def test_the_operations_page_stream_signals_a_change_to_staff_with_view_job_only():
    from django.contrib.auth import get_user_model

    from tests.factories import grant

    # given a staff user with jobs.view_job, and one without
    make = get_user_model().objects.create_user
    viewer = await sync_to_async(make)("viewer", "v@example.com", "pw-long-enough-1", is_staff=True)
    viewer = await sync_to_async(grant)(viewer, "jobs:read")
    bare = await sync_to_async(make)("bare", "b@example.com", "pw-long-enough-2", is_staff=True)
    client, refused = AsyncClient(), AsyncClient()
    await client.aforce_login(viewer)
    await refused.aforce_login(bare)
    assert (await refused.get("/admin/operations/stream/")).status_code == 403
    assert (await AsyncClient().get("/admin/operations/stream/")).status_code == 403

    # when the viewer's page listens, and a job is enqueued, then claimed
    response = await client.get("/admin/operations/stream/")
    assert response.status_code == 200 and response["Content-Type"] == "text/event-stream"
    events = _events(response)
    first = await _next(events)
    job = await sync_to_async(enqueue)("examples.echo", {"n": 5})
    enqueued = await _next(events)
    await sync_to_async(_in_thread)(lambda: store.claim(job.pk, "test/1", 30))
    claimed = await _next(events)

    # then each is a new signal (the page fetches its fragment on each)
    assert enqueued.data["jobs"] == job.pk and claimed.data["running"] == 1
    assert len({first.id, enqueued.id, claimed.id}) == 3


@in_loop
async def test_an_event_stream_shows_each_delivery_and_ends_when_every_delivery_has_ended():
    from jobs.engine.runner import execute
    from subscribers.bus import emit
    from subscribers.models import Delivery

    # given an event with one subscriber (diagnostics.record), followed
    event = await sync_to_async(emit)("diagnostics.ping", {"seq": 1})
    events = _events(await (await _client()).get(f"/api/events/{event.pk}/stream"))
    first = await _next(events)
    [delivery] = first.data["deliveries"]
    assert (first.event, delivery["subscriber"], delivery["status"]) == ("state", "diagnostics.record", "pending")

    # when its delivery's job runs (as a worker runs it)
    def deliver() -> None:
        execute(Delivery.objects.get(event_id=event.pk).job_id, "test/1")

    await sync_to_async(_in_thread)(deliver)

    # then the stream ends with the delivery succeeded
    end = await _next(events)
    while end.event != "end":
        end = await _next(events)
    assert [(d["subscriber"], d["status"], d["attempt"]) for d in end.data["deliveries"]] == [
        ("diagnostics.record", "succeeded", 1)
    ]


@in_loop
async def test_a_quiet_stream_sends_keep_alive_comments_and_closes_at_its_lifetime_bound(monkeypatch):
    # given short bounds: a comment every 0.1 s, a stream's life 0.5 s
    monkeypatch.setattr(streams, "HEARTBEAT_SECONDS", 0.1)
    monkeypatch.setattr(streams, "MAX_SECONDS", 0.5)
    job = await sync_to_async(enqueue)("examples.echo", {"n": 6})

    # when a stream of a job nobody runs is read to its end
    response = await (await _client()).get(f"/api/jobs/{job.pk}/stream")
    chunks = []
    async for chunk in response.streaming_content:
        chunks.append(chunk.decode())
    wire = "".join(chunks)

    # then it said the job once, kept the line alive meanwhile, and closed on its own (the client
    # reconnects with the id it has)
    assert wire.startswith("retry: ") and wire.count("event: state") == 1
    assert wire.count(": keep-alive\n\n") >= 2, wire
    assert "event: end" not in wire


@in_loop
async def test_an_open_stream_gives_back_the_thread_its_request_started():
    # given a request's context whose sync parts (middleware, the token check) started its thread
    async with ThreadSensitiveContext():
        request_thread = await sync_to_async(threading.get_ident)()
        assert any(t.ident == request_thread for t in threading.enumerate())

        # when its stream starts (bench.streams: 1,000 streams held 1,000 idle threads)
        streams.release_request_thread()
        await asyncio.sleep(0.2)

        # then that thread has ended, and a later sync part (Django closing the response) still runs
        assert all(t.ident != request_thread for t in threading.enumerate())
        assert await sync_to_async(lambda: 42)() == 42


@in_loop
async def test_a_tick_digests_only_the_quiet_rows_that_started_running_not_every_watched_row():
    # given three waiting jobs whose snapshots the watcher holds
    jobs = [await sync_to_async(enqueue)("examples.echo", {"n": n}) for n in (7, 8, 9)]
    watcher = streams.watcher()
    digests = [(await watcher.first(streams.JOB, job.pk)).digest for job in jobs]

    # when one of them is claimed, and a tick reads the three as quiet rows (the other two given a
    # digest that is not theirs: were they digested, they would come back as changed)
    await sync_to_async(_in_thread)(lambda: store.claim(jobs[1].pk, "test/1", 30))
    ids = [job.pk for job in jobs]
    changed = await watcher.read(streams.JOB, [], [], ids, ["not-it", digests[1], "not-it"])

    # then only the claimed one was read, with its new state
    assert list(changed) == [jobs[1].pk] and changed[jobs[1].pk].state["status"] == "running"
    assert changed[jobs[1].pk].active


@in_loop
async def test_a_quiet_chain_is_read_when_a_step_ran_whole_between_two_ticks():
    from jobs.engine.runner import execute

    # given two chains waiting for their first step, their snapshots held
    chains = [await sync_to_async(start_chain)([Step("examples.echo", {"c": n}), Step("examples.echo", {})]) for n in (1, 2)]
    watcher = streams.watcher()
    digests = [(await watcher.first(streams.CHAIN, chain.pk)).digest for chain in chains]

    # when the first chain's first step runs and ends before the next tick
    def run_first() -> None:
        execute(Job.objects.get(chain=chains[0], chain_index=0).pk, "test/1")

    await sync_to_async(_in_thread)(run_first)
    changed = await watcher.read(streams.CHAIN, [], [], [c.pk for c in chains], digests)

    # then that chain comes back (a job of it was just written), the other one does not
    assert list(changed) == [chains[0].pk]
    assert [j["status"] for j in changed[chains[0].pk].state["jobs"]][:1] == ["succeeded"]


@in_loop
async def test_a_change_no_index_tells_of_a_waiting_job_shows_within_its_sweep():
    # given a waiting job's stream (the tick 0.05 s here: a sweep every 0.5 s)
    job = await sync_to_async(enqueue)("examples.echo", {"n": 10})
    events = _events(await (await _client()).get(f"/api/jobs/{job.pk}/stream"))
    first = await _next(events)

    # when its type's limit holds it (it stays pending: no claim to find it by)
    await sync_to_async(_in_thread)(lambda: store.hold(job.pk, "rate"))

    # then the stream shows it within a sweep
    held = await _next(events, timeout=streams.SWEEP_TICKS * streams.TICK + 2.0)
    assert (first.data["held"], held.data["held"], held.data["status"]) == ("", "rate", "pending")


@in_loop
async def test_a_ticks_arrays_sent_as_literals_reach_postgresql_whole():
    # given ids and digests as a tick sends them (one text literal each, not psycopg's list
    # adaptation item by item: streams.int_array, text_array), with a NULL and the characters a
    # literal must escape
    ids, digests = [1, 9_007_199_254_740_993, 3], ["0a1b2c3d4e5f6789", None, 'q"u\\o{t,e} NULL']

    # when PostgreSQL casts them as the poll statements do
    [(got_ids, got_digests)] = await listener.hub().read(
        "SELECT %(ids)s::bigint[], %(known)s::text[]",
        {"ids": streams.int_array(ids), "known": streams.text_array(digests)},
    )

    # then they arrive as they were, empty arrays too
    assert (got_ids, got_digests) == (ids, digests)
    [(empty,)] = await listener.hub().read("SELECT %(ids)s::bigint[]", {"ids": streams.int_array([])})
    assert empty == []


@in_loop
async def test_the_openapi_document_describes_each_event_of_a_stream_as_a_client_parses_it():
    # schemathesis checks each parsed event ({"event", "id", "data"}) against the stream's
    # documented `schema`: it was {"type": "string"}, so every real event "violated" it
    import json

    import jsonschema_rs  # schemathesis' own validator (installed with it)

    client = await _client()
    document = json.loads((await client.get("/api/openapi.json")).content)
    job = await sync_to_async(enqueue)("examples.echo", {"n": 9})
    event = await _next(_events(await client.get(f"/api/jobs/{job.pk}/stream")))
    parsed = {"event": event.event, "id": event.id, "data": json.dumps(event.data)}
    for path in ("/api/jobs/{job_id}/stream", "/api/chains/{chain_id}/stream", "/api/events/{event_id}/stream"):
        schema = document["paths"][path]["get"]["responses"]["200"]["content"]["text/event-stream"]["schema"]
        assert jsonschema_rs.is_valid(schema, parsed), (path, schema)
        assert not jsonschema_rs.is_valid(schema, "a whole stream as text"), path


@in_loop
async def test_an_access_token_with_a_nul_is_refused_even_beside_a_valid_header():
    # schemathesis (ST201): the document forbids a NUL in `access_token`; one given beside a valid
    # Authorization header was ignored and the stream answered 200
    client = await _client()
    job = await sync_to_async(enqueue)("examples.echo", {"n": 10})
    response = await client.get(f"/api/jobs/{job.pk}/stream?access_token=a%00b")
    assert response.status_code == 400 and "access_token" in json_of(response)["fields"]


def json_of(response: Any) -> Any:
    import json

    return json.loads(response.content)


@in_loop
async def test_an_open_streams_end_is_heard_by_its_watch_with_no_task_parked_and_its_hold_given_back(monkeypatch):
    # given ticks too rare to tell anything within the test (only a heard end can end the stream)
    # and a waiting job's stream
    monkeypatch.setattr(streams, "TICK", 30.0)
    job = await sync_to_async(enqueue)("examples.echo", {"n": 6})
    response = await (await _client()).get(f"/api/jobs/{job.pk}/stream")
    events = _events(response)
    assert (await _next(events)).data["status"] == "pending"
    following = asyncio.ensure_future(_next(events, timeout=10.0))  # (the body goes on, as a server drives it)

    # when its hold is taken (the row's end is waited for as ?wait= does)
    watcher, hub, key = streams.watcher(), listener.hub(), (streams.JOB, job.pk)
    async with asyncio.timeout(5):
        while not isinstance(watcher.ends.get(key), listener.Watch):
            await asyncio.sleep(0.01)

    # then nothing waits in a task for it (a future and its callback do), and the hold is held
    parked = [t for t in asyncio.all_tasks() if getattr(t.get_coro(), "__qualname__", "") in ("Watcher._hear_end", "Hub.ended")]
    assert parked == []
    assert hub.holds == {watcher.ends[key].key: 1}

    # and when the job ends, the stream sends its end within a second (heard, not ticked), and
    # once it closed the hold is given back
    await sync_to_async(_in_thread)(lambda: (store.claim(job.pk, "test/1", 30), store.succeed(job.pk, 1, "{}")))
    end = await asyncio.wait_for(following, 1.0)
    assert (end.event, end.data["status"]) == ("end", "succeeded")
    with pytest.raises(StopAsyncIteration):
        await _next(events)
    async with asyncio.timeout(5):
        while hub.holds or key in watcher.ends:
            await asyncio.sleep(0.01)
