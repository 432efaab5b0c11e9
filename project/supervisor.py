"""A small process supervisor: start children, restart the ones that die, drain on SIGTERM.

Used by `manage.py start` for one instance (shared mode = a web child, a worker child and beat)
and for a cluster of instances. On SIGTERM or SIGINT every child gets SIGTERM: gunicorn stops
accepting and finishes in-flight requests; a Celery worker stops taking messages, gives its
prefetched ones back and finishes its running jobs. A child still running after the grace
period is killed with its whole process group, and the jobs its worker held are handed back
(`pending`, the attempt not counted) at once rather than after their lease expires.

Each supervisor writes its plan to CONVEYOR_DATA/run/supervisor-<pid>.json for `manage.py status`.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

log = logging.getLogger("conveyor.supervisor")

BACKOFF_START, BACKOFF_MAX = 0.5, 30.0
FAST_CRASH_SECONDS = 10.0  # a child that dies sooner than this after start "crashed fast"
MAX_FAST_CRASHES = 5  # in a row: give up on the whole supervisor


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    #: What `status` shows: role, queues, Celery node name, HTTP port.
    info: dict[str, object] = field(default_factory=dict)
    process: subprocess.Popen | None = None
    started_at: float = 0.0
    fast_crashes: int = 0
    restarts: int = 0
    restart_at: float | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def start(self) -> None:
        env = {**os.environ, **self.env}
        # Its own process group: the whole tree (gunicorn's or Celery's pool) can be killed at once.
        self.process = subprocess.Popen(self.argv, env=env, start_new_session=True, preexec_fn=_die_with_parent)
        self.started_at = time.monotonic()
        self.restart_at = None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill_group(self) -> None:
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class Supervisor:
    def __init__(
        self,
        children: list[Child],
        grace: float = 30.0,
        restart: bool = True,
        state_dir: Path | None = None,
        on_killed: Callable[[Child], None] | None = None,
    ) -> None:
        self.children = children
        self.grace = grace
        self.restart = restart
        self.stopping = False
        self.state_file = state_dir / f"supervisor-{os.getpid()}.json" if state_dir else None
        #: Called after a child was killed (crash or grace exceeded): hand its jobs back.
        self.on_killed = on_killed

    def _on_signal(self, signum: int, frame: object) -> None:
        if not self.stopping:
            log.warning("received %s: draining (grace %.0fs)", signal.Signals(signum).name, self.grace)
        self.stopping = True

    def run(self) -> int:
        """Run until SIGTERM/SIGINT (exit 0) or a child keeps crashing (exit 1)."""
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        for child in self.children:
            child.start()
        self.print_plan()
        code = 0
        try:
            while not self.stopping:
                time.sleep(0.2)
                for child in self.children:
                    if self._check(child):
                        code = 1
                        self.stopping = True
            self.shutdown()
        finally:
            if self.state_file:
                self.state_file.unlink(missing_ok=True)
        return code

    def print_plan(self) -> None:
        for child in self.children:
            print(f"conveyor: {child.name:<18} pid {child.pid:<8} {describe(child.info)}", flush=True)
        self.write_state()

    def write_state(self) -> None:
        if not self.state_file:
            return
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        state = {
            "supervisor": os.getpid(),
            "children": [{"name": c.name, "pid": c.pid, "restarts": c.restarts, **c.info} for c in self.children],
        }
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.state_file)

    def _check(self, child: Child) -> bool:
        """Restart a dead child with backoff; True when it crashed fast too many times."""
        now = time.monotonic()
        if child.restart_at is not None:
            if now >= child.restart_at and not self.stopping:
                child.start()
                child.restarts += 1
                log.warning("restarted %s as pid %s", child.name, child.pid)
                self.write_state()
            return False
        code = child.process.poll() if child.process else None
        if code is None:
            if now - child.started_at > FAST_CRASH_SECONDS:
                child.fast_crashes = 0
            return False
        # What was left of its tree (a pool process orphaned by SIGKILL) goes too, and its jobs
        # return to pending before it is replaced.
        child.kill_group()
        if self.on_killed:
            self.on_killed(child)
        lived = now - child.started_at
        child.fast_crashes = child.fast_crashes + 1 if lived < FAST_CRASH_SECONDS else 0
        if not self.restart:
            log.error("%s (pid %s) exited with %s", child.name, child.pid, code)
            return True
        if child.fast_crashes >= MAX_FAST_CRASHES:
            log.error("%s crashed %d times in a row within %.0fs of starting: giving up", child.name, child.fast_crashes, FAST_CRASH_SECONDS)
            return True
        delay = min(BACKOFF_MAX, BACKOFF_START * (2 ** max(0, child.fast_crashes - 1)))
        log.warning("%s (pid %s) exited with %s after %.1fs; restarting in %.1fs", child.name, child.pid, code, lived, delay)
        child.restart_at = now + delay
        return False

    def shutdown(self) -> None:
        """SIGTERM every child, wait up to the grace period, then kill what is left."""
        alive = [c for c in self.children if c.alive()]
        for child in alive:
            child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.grace
        while alive and time.monotonic() < deadline:
            time.sleep(0.1)
            alive = [c for c in alive if c.alive()]
        for child in alive:
            log.warning("%s (pid %s) still running after %.0fs: killing it", child.name, child.pid, self.grace)
        for child in self.children:
            child.kill_group()  # also reaps pool processes a clean exit may have left
            if child.process:
                child.process.wait()
            if child in alive and self.on_killed:
                self.on_killed(child)
        sys.stdout.flush()


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM if the supervisor dies (even by SIGKILL), so no
    instance outlives it unsupervised (Linux prctl PR_SET_PDEATHSIG; elsewhere a no-op)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass


def describe(info: dict[str, object]) -> str:
    parts = [str(info.get("role", ""))]
    if info.get("port"):
        parts.append(f"http :{info['port']}")
    if info.get("node"):
        parts.append(f"node {info['node']}")
    if info.get("queues"):
        parts.append(f"queues {info['queues']}")
    return "  ".join(parts)
