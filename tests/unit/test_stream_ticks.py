"""What a streams' tick reads in full (jobs/interfaces/streams.py: Watcher._plan): the rows that can
have changed, not every watched row (bench.streams, issue 27: 1,000 digests twice a second per
server process raised the p99 of the ordinary requests)."""
from __future__ import annotations

from jobs.interfaces import streams
from jobs.interfaces.streams import CHAIN, JOB, OPERATIONS, Follower, Snapshot, Watcher


def _watching(rows: dict[tuple[streams.Kind, int], Snapshot | None], sweep_at: float = 100.0) -> Watcher:
    watcher = Watcher()
    for key, snapshot in rows.items():
        watcher.followers[key].add(Follower(key, "d", beat_at=1e9, until=1e9))
        if snapshot is not None:
            watcher.latest[key] = snapshot
        watcher.sweep_at[key] = sweep_at
    return watcher


def _job(status: str) -> Snapshot:
    state = {"status": status}
    return Snapshot(f"digest-{status}", state, False, JOB.active(state))


def test_a_tick_reads_in_full_the_running_rows_and_asks_the_index_about_the_quiet_ones():
    # given streams of a running job, a failed one (it runs again), two pending ones
    watcher = _watching({(JOB, 1): _job("running"), (JOB, 2): _job("failed"), (JOB, 3): _job("pending"),
                         (JOB, 4): _job("pending")})

    # when a tick plans its read
    plan = watcher._plan(tick=True, now=10.0)[JOB]

    # then the running and failed rows are read in full, the pending ones only through `moved`
    assert (plan.ids, plan.known) == ([1, 2], ["digest-running", "digest-failed"])
    assert (plan.cold, plan.cold_known) == ([3, 4], ["digest-pending"] * 2)


def test_a_quiet_row_is_read_in_full_on_its_sweep_turn_then_not_again_until_the_next():
    # given a pending job whose sweep turn has come
    watcher = _watching({(JOB, 3): _job("pending")}, sweep_at=5.0)

    # then the tick reads it in full, and the ticks before its next turn do not
    assert watcher._plan(tick=True, now=5.0)[JOB].ids == [3]
    assert watcher.sweep_at[(JOB, 3)] == 5.0 + streams.SWEEP_TICKS * streams.TICK
    assert watcher._plan(tick=True, now=5.0 + streams.TICK)[JOB].cold == [3]


def test_between_ticks_only_the_rows_whose_end_was_heard_are_read():
    # given two pending jobs, the end of one heard (Watcher._hear_end marks it)
    watcher = _watching({(JOB, 3): _job("pending"), (JOB, 4): _job("running")})
    watcher.dirty.add((JOB, 3))

    # when the poke reads (not a tick): only that row, in full, once
    assert watcher._plan(tick=False, now=10.0) == {JOB: streams.Plan([3], ["digest-pending"], [], [])}
    assert watcher._plan(tick=False, now=10.0) == {}


def test_rows_of_unknown_state_and_kinds_without_a_quiet_read_are_read_in_full_every_tick():
    # given a job whose snapshot is in doubt (two reads differed), a quiet chain, the operations signal
    quiet_chain = {"jobs": [{"status": "succeeded"}, {"status": "pending"}]}
    watcher = _watching({(JOB, 5): None, (CHAIN, 7): Snapshot("c", quiet_chain, False, CHAIN.active(quiet_chain)),
                         (OPERATIONS, 0): Snapshot("o", {}, False)})

    plans = watcher._plan(tick=True, now=10.0)

    assert plans[JOB].ids == [5] and plans[JOB].known == [None]
    assert plans[CHAIN].cold == [7] and plans[CHAIN].ids == []
    assert plans[OPERATIONS].ids == [0]
    # a chain with a job running is read in full
    assert CHAIN.active({"jobs": [{"status": "succeeded"}, {"status": "running"}]})


def test_keep_alives_wake_only_the_due_streams_and_a_gone_stream_is_dropped():
    # given three streams whose keep-alives are due at 1, 2 and 3 s, the third one closed since
    watcher = Watcher()
    followers = []
    for beat in (1.0, 2.0, 3.0):
        key = (JOB, int(beat))
        follower = Follower(key, "d", beat_at=beat, until=100.0)
        watcher.followers[key].add(follower)
        watcher.beats.append((beat, int(beat), follower))
        followers.append(follower)
    watcher.discard(followers[2])

    # when the watcher looks at 1.5 s: only the first is woken; the next due is the second's
    assert watcher._wake_due(1.5) == 2.0
    assert [f.woken for f in followers] == [True, False, False]

    # and at 3.5 s the second is woken, the closed one is not, and the first comes up again a
    # heartbeat after it was woken
    assert watcher._wake_due(3.5) == min(3.5 + streams.TICK, 1.5 + streams.HEARTBEAT_SECONDS)
    assert [f.woken for f in followers] == [True, True, False]
    assert len(watcher.beats) == 2


def test_a_ticks_arrays_are_one_literal_each_not_a_list_adapted_item_by_item():
    # (psycopg adapts a list in Python, item by item: 0.65 ms of the event loop per tick over 500
    # streams; a joined literal ~0.05 ms; their round trip is tests/integration/test_streams.py's)
    assert streams.int_array([3, 14, 159]) == "{3,14,159}"
    assert streams.int_array([]) == "{}"
    assert streams.text_array(["ab12", None, 'a"b\\c']) == '{"ab12",NULL,"a\\"b\\\\c"}'
