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


def test_a_retired_child_past_its_grace_period_is_killed_handed_back_as_drained_and_not_restarted(tmp_path: Path):
    # given an autoscaled worker child that ignores SIGTERM (its job outlasts the grace period)
    ready = tmp_path / "ready"
    stubborn = (
        "import signal, time, pathlib; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
        f" pathlib.Path({str(ready)!r}).touch(); time.sleep(60)"
    )
    calls, on_killed = recorder()
    child = Child("worker-2/worker", [sys.executable, "-c", stubborn], info={"autoscaled": True})
    supervisor = Supervisor([child], grace=0.3, on_killed=on_killed)
    child.start()
    try:
        wait_for(ready.exists, 10, interval=0.02, what="the child to ignore SIGTERM")
        # when the autoscaler retires it, and the supervisor's loop checks it until it leaves the plan
        supervisor.retire(child)
        assert child.info["retiring"] and child in supervisor.children
        wait_for(lambda: (supervisor._check_retiring(child), child not in supervisor.children)[1], 10, interval=0.05,
                 what="the retired child to leave the plan")
        # then it was killed after the grace period, its jobs handed back once as drained, and it is gone for good
        assert calls == [("worker-2/worker", True)]
        assert not child.alive() and child.restart_at is None
    finally:
        child.kill_group()


def test_a_retired_child_that_drains_in_time_leaves_the_plan(tmp_path: Path):
    # given a worker child that exits on SIGTERM (its jobs finished)
    calls, on_killed = recorder()
    child = Child("worker-2/worker", [sys.executable, "-c", "import time; time.sleep(60)"], info={"autoscaled": True})
    web = Child("web", [sys.executable, "-c", "import time; time.sleep(60)"])
    supervisor = Supervisor([web, child], grace=60, on_killed=on_killed)
    child.start()
    web.start()
    try:
        # when it is retired
        supervisor.retire(child)
        wait_for(lambda: (supervisor._check_retiring(child), child not in supervisor.children)[1], 10, interval=0.05,
                 what="the retired child to leave the plan")
        # then it left the plan at once (no wait for the grace period), the other child untouched
        assert supervisor.children == [web] and web.alive()
        assert calls == [("worker-2/worker", True)]  # (a drained worker has nothing left to hand back: a no-op)
    finally:
        child.kill_group()
        web.kill_group()
