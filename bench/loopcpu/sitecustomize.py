"""`python -m bench.streams --loop-cpu`: where a server's event loop spends its CPU, by callback.

Put on PYTHONPATH of the instance the bench starts (this folder only): Python imports it at start
in every process, and in gunicorn's it wraps asyncio's `Handle._run` (every callback the loop runs:
a task's step, a transport's read) with `time.thread_time()`, the loop thread's own CPU, which a
loaded machine's waits for a core do not inflate, and the collector's passes with the same clock.
Each second it appends, per callback kind (a task's coroutine and where it was suspended), the
calls and CPU ms to CONVEYOR_BENCH_LOOP_CPU/<pid>.log; the bench sums them per phase. Costs a few
microseconds per callback, alike in every phase. Diagnosis only: nothing of the project imports it.
"""
from __future__ import annotations

import os
import sys
import time
from collections import defaultdict

FOLDER = os.environ.get("CONVEYOR_BENCH_LOOP_CPU")


def _describe(callback: object) -> str:
    owner = getattr(callback, "__self__", None)
    if owner is not None and hasattr(owner, "get_coro"):  # a task's step: its coroutine, where it waited
        coro = owner.get_coro()
        inner = coro
        while hasattr(getattr(inner, "cr_await", None), "cr_code"):
            inner = inner.cr_await
        outer = getattr(getattr(coro, "cr_code", None), "co_qualname", type(coro).__name__)
        return f"task {outer} @ {getattr(getattr(inner, 'cr_code', None), 'co_qualname', '?')}"
    return getattr(callback, "__qualname__", type(callback).__name__)


def _install() -> None:
    import asyncio.events
    import gc

    run = asyncio.events.Handle._run
    sums: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    state = {"pid": 0, "out": None, "flushed": 0.0}

    def flush(now: float) -> None:
        if state["pid"] != os.getpid():  # (a forked worker: a file of its own)
            state["pid"], state["out"] = os.getpid(), open(os.path.join(FOLDER, f"{os.getpid()}.log"), "a", buffering=1)
            sums.clear()
        state["flushed"] = now
        state["out"].writelines(f"{now:.3f}\t{calls:.0f}\t{cpu * 1000:.3f}\t{key}\n" for key, (calls, cpu) in sums.items())
        sums.clear()

    def timed(self: asyncio.events.Handle) -> None:
        key = _describe(self._callback)
        began = time.thread_time()
        try:
            run(self)
        finally:
            entry = sums[key]
            entry[0] += 1
            entry[1] += time.thread_time() - began
            now = time.time()
            if now - state["flushed"] >= 1.0:
                flush(now)

    started: list[float] = [0.0]

    def collected(phase: str, info: dict) -> None:
        if phase == "start":
            started[0] = time.thread_time()
        else:
            entry = sums[f"gc: a pass of generation {info.get('generation')}"]
            entry[0] += 1
            entry[1] += time.thread_time() - started[0]

    asyncio.events.Handle._run = timed
    gc.callbacks.append(collected)


if FOLDER and "gunicorn" in " ".join(sys.argv):
    _install()
