"""Server-Sent Events, the wire format and the resumption rule: pure functions (no Django, no
database), used by jobs/interfaces/streams.py.

A stream sends whole snapshots: every `state` event carries the row's entire state (a job's status,
attempt, progress, errors of the attempts that failed, outcome; a chain's every job; an event's
every delivery), and the last one is named `end`. So the latest snapshot holds every change a
client missed, and an event's id need not number the changes: it is a digest of the row's version
(computed by PostgreSQL: `md5` of the fields every change a client can see alters, its status,
attempt, progress, `updated_at`...: jobs/interfaces/streams.py), the same for the same snapshot.
A client that reconnects sends it back (`Last-Event-ID`, which `EventSource`
does by itself) and `resume` decides: the same digest, nothing to send until the next change; a
different one, the current snapshot at once; an ended row the client has already seen, 204 (which
tells `EventSource` to stop reconnecting).

Why not a monotonic sequence per row: it would need a counter column written by every statement
of a job's path (claim, progress, outcome), and a log of the changes to replay from it; snapshots
need neither, and any server process can resume any client (no state kept between connections).
"""
from __future__ import annotations

import enum
import json
from typing import Any, Iterable, Iterator, NamedTuple

#: Milliseconds an EventSource waits before reconnecting after the stream closes (the `retry:` field).
RECONNECT_MS = 1000


class Resume(enum.Enum):
    SEND = "send"  # send the current snapshot now
    SKIP = "skip"  # the client has it: send the next change
    DONE = "done"  # the row ended and the client has its last snapshot: 204, stop reconnecting


def resume(last_event_id: str | None, current: str, ended: bool) -> Resume:
    """What a new connection sends first, given the id the client last received (None: a first
    connection) and the current snapshot's digest."""
    if last_event_id is None or last_event_id.strip() != current:
        return Resume.SEND
    return Resume.DONE if ended else Resume.SKIP


def frame(event: str, event_id: str, data: Any) -> bytes:
    """One event: its name, its id, its data as one line of JSON (no newline can end it early)."""
    body = json.dumps(data, separators=(",", ":"), default=str)
    return f"event: {event}\nid: {event_id}\ndata: {body}\n\n".encode()


def retry(ms: int = RECONNECT_MS) -> bytes:
    """The reconnection delay an EventSource uses after the server closes the stream."""
    return f"retry: {int(ms)}\n\n".encode()


def comment(text: str = "keep-alive") -> bytes:
    """A comment line: ignored by EventSource, it keeps proxies from closing an idle stream."""
    return f": {text}\n\n".encode()


class Event(NamedTuple):
    event: str
    id: str | None
    data: Any  # the JSON of the data lines, parsed


def parse(lines: Iterable[str]) -> Iterator[Event]:
    """The events of a stream read line by line (a client's side: the tests, the bench), as the
    EventSource algorithm reads them: comments and `retry:` skipped, an event dispatched at its
    blank line."""
    name, event_id, data = "message", None, []
    for raw in lines:
        line = raw.rstrip("\r\n")
        if not line:
            if data:
                yield Event(name, event_id, json.loads("\n".join(data)))
            name, data = "message", []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "event":
            name = value
        elif field == "id":
            event_id = value
        elif field == "data":
            data.append(value)
