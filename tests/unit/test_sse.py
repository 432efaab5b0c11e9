"""The Server-Sent Events wire format and the resumption rule (jobs/interfaces/sse.py)."""
from __future__ import annotations

from jobs.interfaces import sse
from jobs.interfaces.sse import Resume


def test_a_first_connection_or_a_stale_id_gets_the_current_state_at_once():
    assert sse.resume(None, "abc", ended=False) is Resume.SEND
    assert sse.resume("old", "abc", ended=False) is Resume.SEND
    assert sse.resume("old", "abc", ended=True) is Resume.SEND


def test_a_client_holding_the_current_state_waits_for_the_next_change_or_is_done_if_it_ended():
    assert sse.resume("abc", "abc", ended=False) is Resume.SKIP
    assert sse.resume(" abc ", "abc", ended=True) is Resume.DONE


def test_frames_parse_back_to_their_events_skipping_comments_and_retry():
    wire = (sse.retry(1500) + sse.frame("state", "d1", {"status": "running", "text": "a\nb"}) + sse.comment()
            + sse.frame("end", "d2", {"status": "succeeded"})).decode()
    events = list(sse.parse(wire.splitlines(keepends=True)))
    assert events == [
        sse.Event("state", "d1", {"status": "running", "text": "a\nb"}),
        sse.Event("end", "d2", {"status": "succeeded"}),
    ]
    assert wire.startswith("retry: 1500\n\n") and ": keep-alive\n\n" in wire
