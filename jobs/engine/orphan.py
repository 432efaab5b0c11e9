"""A worker whose supervisor died without a word ends its drain itself, within the grace.

`manage.py start` drains a worker on SIGTERM: it finishes its running jobs or, past `--grace`
seconds, is killed by its supervisor and its jobs handed back. A supervisor killed outright
(SIGKILL: honcho sends it 5 s after its SIGTERM, so `honcho start` after Ctrl-C; `kill -9`)
cannot: its worker got SIGTERM by the parent-death signal (project.supervisor) and drained with
nobody to end the drain, running its longest job to the end, alone. Under honcho that held the
worker's output pipe open, and honcho hung, sending SIGKILL to the dead shell ten times a second.

`watch` (a thread of the worker's main process, from worker_ready) notices the supervisor's end
(this process's parent changes), gives the drain the supervisor's grace, then does what the
supervisor would have done: kills the worker's pool processes, hands their jobs back (drained:
the interrupted attempts given back) and kills itself. A drain that ends in time ends the worker
before that, as it always did.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import Mapping

log = logging.getLogger("conveyor.supervisor")

SUPERVISOR_PID = "CONVEYOR_SUPERVISOR_PID"
GRACE = "CONVEYOR_GRACE"
#: How often the watch looks at its parent (a supervisor's end is noticed within this).
POLL_SECONDS = 0.5


def watch(node: str, environ: Mapping[str, str] = os.environ) -> threading.Thread | None:
    """Start the watch for a worker started by a supervisor (none for `celery worker` run by hand)."""
    supervisor = environ.get(SUPERVISOR_PID, "")
    if not supervisor.isdigit() or int(supervisor) != os.getppid():
        return None
    grace = float(environ.get(GRACE) or 30)
    instance = environ.get("CONVEYOR_INSTANCE", "")
    thread = threading.Thread(
        target=_watch, args=(int(supervisor), grace, node, instance), name="conveyor-orphan-watch", daemon=True
    )
    thread.start()
    return thread


def _watch(supervisor: int, grace: float, node: str, instance: str) -> None:
    while os.getppid() == supervisor:
        time.sleep(POLL_SECONDS)
    log.warning("%s: its supervisor (pid %s) is gone: draining for %.0fs at most", node, supervisor, grace)
    time.sleep(grace)
    log.warning("%s: still draining %.0fs after its supervisor's end: killed, its jobs handed back", node, grace)
    end(node, instance)


def end(node: str, instance: str) -> None:
    """Kill this worker's pool processes, hand their jobs back (drained), and kill this process."""
    import psutil

    from jobs.engine.recovery import hand_back

    try:
        children = psutil.Process().children(recursive=True)
        for child in children:
            try:
                child.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(children, timeout=5)
        hand_back(node, instance, drained=True)  # a thread pool's late outcome is refused (fenced)
    finally:
        os.kill(os.getpid(), signal.SIGKILL)
