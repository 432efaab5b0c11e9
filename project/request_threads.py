"""The servers' request threads, used again by later requests instead of one new thread per request.

Under ASGI, Django runs each request's sync parts (middleware, the token's check, the row's read,
the response's close) in a thread of the request's own: its ThreadSensitiveContext makes a
`ThreadPoolExecutor(max_workers=1)` for the request and, at its end, joins it from yet another
new thread (asgiref 3.13). That is two thread starts per request, each a wait of the event loop
for the new thread to run (`Thread.start` blocks until it has), then two exits and a wake-up of
the loop: on a machine whose cores are busy with jobs, each such wait may last until the next
scheduler tick (docs/performance.md, "HTTP under load"). Here a request borrows an idle executor (one thread)
from the process's few, through asgiref's own `ThreadSensitiveContext(executor=...)`, and gives
it back when it ends; a thread is made only when none is idle, as before.

What a request leaves in its thread: Django's database wrappers are per thread, and the servers'
`request_finished` takes them out of the thread's storage once their connections are back in the
pool (project/asgi_handler.py: release_connections). A thread left holding one (a connection still
open: a transaction left open by the request) is not used again (`dirty`): it ends, and the next
request gets a new one, as Django would have given it. A stream that lets its request's thread go
early (jobs/interfaces/streams.py: release_request_thread shuts the executor down) ends it too.
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

#: Idle threads kept per process (more requests in flight at once make more; the extra ones end).
KEEP = 8


class RequestThread(ThreadPoolExecutor):
    """One thread for one request at a time."""

    def __init__(self) -> None:
        super().__init__(max_workers=1, thread_name_prefix="request")
        self.closed = False

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self.closed = True
        super().shutdown(wait=wait, cancel_futures=cancel_futures)


_idle: list[RequestThread] = []
#: Threads (idents) that ended a request still holding a database connection: not used again.
_dirty: set[int] = set()
_lock = threading.Lock()


def take() -> RequestThread:
    """An idle request thread, or a new one."""
    with _lock:
        if _idle:
            return _idle.pop()
    return RequestThread()


def give_back(executor: RequestThread) -> None:
    """The request has ended: its thread waits for the next one, unless it cannot be used again."""
    dirty = _left_dirty(executor)  # (first: it forgets the thread's mark either way)
    if not executor.closed and not dirty:
        with _lock:
            if len(_idle) < KEEP:
                _idle.append(executor)
                return
    executor.shutdown(wait=False)  # its thread is idle: it ends (nothing waits for it)


def mark_dirty() -> None:
    """Called in a request's thread at its end when a database wrapper is still connected there."""
    with _lock:
        _dirty.add(threading.get_ident())


def _left_dirty(executor: RequestThread) -> bool:
    threads: Any = getattr(executor, "_threads", ())  # (its one worker, once it has run anything)
    with _lock:
        found = [thread.ident for thread in threads if thread.ident in _dirty]
        _dirty.difference_update(found)
    return bool(found)


def idle_count() -> int:
    with _lock:
        return len(_idle)
