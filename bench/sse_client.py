"""A Server-Sent Events client in the standard library, for the streams bench and the tests: one
HTTP connection, the stream's events as they come (jobs.interfaces.sse.parse)."""
from __future__ import annotations

import http.client
import io
import urllib.parse
from typing import Iterator

from jobs.interfaces.sse import Event, parse


class Stream:
    """GET `url` with `Accept: text/event-stream`; `status` is the answer's code, `events()` its
    events until the server closes (each read waits at most `timeout` seconds)."""

    def __init__(self, url: str, headers: dict[str, str] | None = None, last_event_id: str | None = None,
                 timeout: float = 30.0) -> None:
        parts = urllib.parse.urlsplit(url)
        self.conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
        sent = {"Accept": "text/event-stream", **(headers or {})}
        if last_event_id is not None:
            sent["Last-Event-ID"] = last_event_id
        self.conn.request("GET", parts.path + (f"?{parts.query}" if parts.query else ""), headers=sent)
        self.response = self.conn.getresponse()
        self.status = self.response.status
        self.content_type = self.response.getheader("Content-Type", "")

    def events(self) -> Iterator[Event]:
        yield from parse(io.TextIOWrapper(self.response, encoding="utf-8", newline="\n"))

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> "Stream":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
