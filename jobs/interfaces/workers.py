"""Every live Celery worker, idle ones too, with the queues it consumes and its pool: asked of the
workers themselves (Celery's remote control: `inspect().stats()` and `inspect().active_queues()`,
broadcast through Redis and answered by each worker's main process, busy pool or not).

The job rows know only the workers running something; this is how the operations page lists
the others. A broadcast waits its whole timeout for answers (it cannot know how many workers
there are), so the answer is kept for CACHE_SECONDS in Django's cache, shared by the server's
processes: the page's 2-second refresh asks the workers at most once per CACHE_SECONDS.
"""
from __future__ import annotations

import concurrent.futures
import logging
import time
from typing import Any, NamedTuple

from django.core.cache import cache

log = logging.getLogger("conveyor.operations")

#: How long a broadcast waits for answers (loopback or LAN Redis: answers come in milliseconds).
TIMEOUT = 0.5
CACHE_KEY = "conveyor:operations:live-workers"
CACHE_SECONDS = 5


class LiveWorker(NamedTuple):
    #: The Celery node name (`--hostname`), the part of a job's `worker` before its first "/".
    name: str
    queues: list[str]
    #: prefork, threads, solo, gevent...
    pool: str
    concurrency: int | None
    #: The pool's process ids (prefork), each a `node/pid` of the job rows it claims.
    processes: list[int]


def parse(stats: dict[str, Any] | None, active_queues: dict[str, Any] | None) -> list[LiveWorker]:
    """The workers that answered either question, by name: their queues and pool."""
    stats, active_queues = stats or {}, active_queues or {}
    found = []
    for name in sorted(set(stats) | set(active_queues)):
        pool = (stats.get(name) or {}).get("pool") or {}
        implementation = str(pool.get("implementation") or "")
        # "celery.concurrency.prefork:TaskPool" -> "prefork"
        kind = implementation.split(":")[0].rsplit(".", 1)[-1] if implementation else "?"
        concurrency = pool.get("max-concurrency")
        queues = sorted(q.get("name", "") for q in (active_queues.get(name) or []) if isinstance(q, dict))
        processes = [int(p) for p in pool.get("processes") or [] if str(p).isdigit()]
        found.append(LiveWorker(name, queues, kind, int(concurrency) if concurrency is not None else None, processes))
    return found


def ask(timeout: float = TIMEOUT, app: Any = None) -> list[LiveWorker] | None:
    """Ask every worker now (both questions at once); None when the broker cannot be reached.
    `app`: the Celery app to ask through (Conveyor's)."""
    if app is None:
        from project.celery import app

    def question(name: str) -> dict[str, Any] | None:
        return getattr(app.control.inspect(timeout=timeout), name)()

    try:
        # A broadcast to a broker that is away retries its publish for seconds: fail at once instead.
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0.2, timeout=1)
        with concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="conveyor-inspect") as pool:
            stats, queues = pool.map(question, ("stats", "active_queues"))
    except Exception as exc:  # Redis away: the page lists the workers its rows name
        log.warning("could not ask Celery's workers who is live: %s", exc)
        return None
    return parse(stats, queues)


#: The last answer in this process, and until when it holds: when the cache (Redis too) is away,
#: the page does not ask the workers on every refresh either.
_memo: tuple[float, Any] = (0.0, None)


def live_workers() -> list[LiveWorker] | None:
    """ask(), kept CACHE_SECONDS in Django's cache; None when the workers could not be asked."""
    global _memo
    try:
        cached = cache.get(CACHE_KEY)
    except Exception:  # the cache is Redis too: this process's last answer, while it holds
        cached = _memo[1] if _memo[0] > time.monotonic() else None
    if cached is None:
        found = ask()
        cached = "unreachable" if found is None else [tuple(w) for w in found]
        _memo = (time.monotonic() + CACHE_SECONDS, cached)
        try:
            cache.set(CACHE_KEY, cached, CACHE_SECONDS)
        except Exception:
            pass
    return None if cached == "unreachable" else [LiveWorker(*w) for w in cached]
