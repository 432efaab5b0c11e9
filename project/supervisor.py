"""A small process supervisor: start children, restart the ones that die, drain on SIGTERM.

Used by `manage.py start` for one instance (shared mode = a web child and a worker child) and
for a cluster of instances. Children get SIGTERM on shutdown (gunicorn stops accepting and
finishes in-flight requests; a Celery worker stops taking messages and finishes its jobs) and
SIGKILL after the grace period; a job killed that way returns to pending through its lease.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

log = logging.getLogger("conveyor.supervisor")

BACKOFF_START, BACKOFF_MAX = 0.5, 30.0
FAST_CRASH_SECONDS = 10.0  # a child that dies sooner than this after start "crashed fast"
MAX_FAST_CRASHES = 5  # in a row: give up on the whole supervisor


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen | None = None
    started_at: float = 0.0
    fast_crashes: int = 0
    restart_at: float | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def start(self) -> None:
        env = {**os.environ, **self.env}
        self.process = subprocess.Popen(self.argv, env=env)
        self.started_at = time.monotonic()
        self.restart_at = None


class Supervisor:
    def __init__(self, children: list[Child], grace: float = 30.0, restart: bool = True) -> None:
        self.children = children
        self.grace = grace
        self.restart = restart
        self.stopping = False

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
        while not self.stopping:
            time.sleep(0.2)
            for child in self.children:
                if self._check(child):
                    code = 1
                    self.stopping = True
        self.shutdown()
        return code

    def print_plan(self) -> None:
        for child in self.children:
            print(f"conveyor: {child.name:<20} pid {child.pid}  {' '.join(child.argv[2:6])}", flush=True)

    def _check(self, child: Child) -> bool:
        """Restart a dead child with backoff; True when it crashed fast too many times."""
        now = time.monotonic()
        if child.restart_at is not None:
            if now >= child.restart_at and not self.stopping:
                child.start()
                log.warning("restarted %s as pid %s", child.name, child.pid)
            return False
        code = child.process.poll() if child.process else None
        if code is None:
            if now - child.started_at > FAST_CRASH_SECONDS:
                child.fast_crashes = 0
            return False
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
        """SIGTERM every child, wait up to the grace period, then SIGKILL what is left."""
        alive = [c for c in self.children if c.process and c.process.poll() is None]
        for child in alive:
            child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.grace
        while alive and time.monotonic() < deadline:
            time.sleep(0.1)
            alive = [c for c in alive if c.process.poll() is None]
        for child in alive:
            log.warning("%s (pid %s) still running after %.0fs: killing it", child.name, child.pid, self.grace)
            child.process.kill()
        for child in self.children:
            if child.process:
                child.process.wait()
        sys.stdout.flush()
