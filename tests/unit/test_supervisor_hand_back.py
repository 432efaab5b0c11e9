"""The supervisor's decision when it hands a child's jobs back: drained on purpose, or crashed.

Real child processes (a Python one-liner each), no database: what is checked is what the
supervisor tells its `on_killed` (jobs.engine.recovery.hand_back counts the attempts of a crash, and
gives them back only after a drain it asked for).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from project.supervisor import Child, Supervisor
from tests.support import wait_for


def recorder() -> tuple[list[tuple[str, bool]], object]:
    calls: list[tuple[str, bool]] = []
    return calls, lambda child, drained: calls.append((child.name, drained))


def test_a_child_that_dies_by_itself_is_handed_back_as_crashed():
    # given a worker child that exits on its own (as after a handler's os._exit)
    calls, on_killed = recorder()
    child = Child("worker", [sys.executable, "-c", "import os; os._exit(1)"])
    supervisor = Supervisor([child], grace=1, restart=False, on_killed=on_killed)

    # when the supervisor runs (restart off: it returns once the child has died)
    code = supervisor.run()

    # then its jobs were handed back once, as a crash (their attempts count)
    assert code == 1
    assert calls == [("worker", False)]


def test_a_child_stopped_on_purpose_past_its_grace_period_is_handed_back_as_drained(tmp_path: Path):
    # given a worker child that ignores SIGTERM (a job that does not finish within the grace)
    ready = tmp_path / "ready"
    stubborn = (
        "import signal, time, pathlib; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
        f" pathlib.Path({str(ready)!r}).touch(); time.sleep(60)"
    )
    calls, on_killed = recorder()
    child = Child("worker", [sys.executable, "-c", stubborn])
    supervisor = Supervisor([child], grace=0.3, on_killed=on_killed)
    child.start()
    try:
        wait_for(ready.exists, 10, interval=0.02, what="the child to ignore SIGTERM")

        # when the supervisor drains (SIGTERM, grace exceeded, killed)
        started = time.monotonic()
        supervisor.shutdown()

        # then its jobs were handed back once, as drained (their attempts given back)
        assert calls == [("worker", True)]
        assert not child.alive() and time.monotonic() - started < 5
    finally:
        child.kill_group()


def test_a_child_that_finishes_its_drain_in_time_hands_nothing_back():
    calls, on_killed = recorder()
    child = Child("worker", [sys.executable, "-c", "import time; time.sleep(60)"])
    supervisor = Supervisor([child], grace=5, on_killed=on_killed)
    child.start()
    try:
        supervisor.shutdown()  # SIGTERM ends it at once
        assert calls == []
    finally:
        child.kill_group()
