"""A small process supervisor: start children, restart the ones that die, drain on SIGTERM.

Used by `manage.py start` for one instance (shared mode = a web child, a worker child and beat)
and for a cluster of instances. On SIGTERM, SIGINT or SIGHUP (the terminal went away) every
child gets SIGTERM: gunicorn stops accepting and finishes in-flight requests; a Celery worker
stops taking messages, gives its prefetched ones back and finishes its running jobs. A child
still running after the grace period is killed with its whole process group, and the jobs its
worker held are handed back (`pending`, one attempt granted back: the drain was asked for) at
once rather than after their lease expires. A worker that dies by itself (a crash, the OOM killer,
a job calling os._exit) has its jobs handed back too, their interrupted attempt counted: a job
that kills its worker ends dead after its last attempt instead of crash-looping it.

A child that dies is restarted, after a backoff that doubles while it keeps dying soon after
starting (capped at BACKOFF_MAX): a child that cannot start yet (beat while the database
restarts) never takes the others down with it.

Each start of a child gets a fresh random instance token (CONVEYOR_INSTANCE in its environment,
`instance` in its info): its worker records it with every claim, so hand-back touches the jobs of
that start only, never those of another supervisor whose worker has the same node name.

Each supervisor writes its plan to CONVEYOR_DATA/run/supervisor-<pid>.json for `manage.py status`.

With a `scaler` (`start --autoscale MIN,MAX`: project/autoscale.py), every `scale_interval` seconds
the loop asks it what to do; it adds children (`add`) and retires them (`retire`): a retired child
gets SIGTERM and drains as on a shutdown (a Celery worker finishes its running jobs and gives its
prefetched messages back), is killed past the grace period with its jobs handed back (drained:
their attempts given back), and is not restarted.
"""
from __future__ import annotations

import json
import logging
import os
import secrets
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
#: Signals that drain: SIGHUP too, or a closed terminal would kill the supervisor (its children
#: would get only the death signal: no supervised drain, no hand-back).
DRAIN_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


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
    #: Retired (the autoscaler shrinks): drains until then, then is killed; never restarted.
    retiring_until: float | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def start(self, grace: float = 30.0) -> None:
        # A fresh token for this start: hand-back after it dies touches its own jobs only.
        self.info["instance"] = secrets.token_hex(8)
        env = {**os.environ, **self.env, "CONVEYOR_INSTANCE": str(self.info["instance"])}
        # Who supervises it and its grace: a worker whose supervisor dies without a word (SIGKILL)
        # drains on its own for that long at most, then ends itself (jobs.engine.orphan).
        env.update({"CONVEYOR_SUPERVISOR_PID": str(os.getpid()), "CONVEYOR_GRACE": f"{grace:g}"})
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
        on_killed: Callable[[Child, bool], None] | None = None,
        scaler: Callable[[Supervisor], None] | None = None,
        scale_interval: float = 2.0,
    ) -> None:
        self.children = children
        self.grace = grace
        self.restart = restart
        self.stopping = False
        self.state_file = state_dir / f"supervisor-{os.getpid()}.json" if state_dir else None
        #: Called after a child died or was killed, as on_killed(child, drained): hand its jobs
        #: back. `drained` is True only when this supervisor was stopping it on purpose (drain on a
        #: signal, grace exceeded); a child that died by itself crashed (its jobs' attempts count).
        self.on_killed = on_killed
        #: Called every `scale_interval` seconds as scaler(self): adds or retires children.
        self.scaler = scaler
        self.scale_interval = scale_interval

    def _on_signal(self, signum: int, frame: object) -> None:
        if not self.stopping:
            log.warning("received %s: draining (grace %.0fs)", signal.Signals(signum).name, self.grace)
        self.stopping = True

    def run(self) -> int:
        """Run until SIGTERM, SIGINT or SIGHUP (exit 0), or, with restart off, a child exits (exit 1)."""
        for signum in DRAIN_SIGNALS:
            signal.signal(signum, self._on_signal)
        for child in self.children:
            child.start(self.grace)
        self.print_plan()
        code = 0
        next_scale = time.monotonic() + self.scale_interval
        try:
            while not self.stopping:
                time.sleep(0.2)
                for child in list(self.children):
                    if child.retiring_until is not None:
                        self._check_retiring(child)
                    elif self._check(child):
                        code = 1
                        self.stopping = True
                if self.scaler is not None and not self.stopping and time.monotonic() >= next_scale:
                    next_scale = time.monotonic() + self.scale_interval
                    try:
                        self.scaler(self)
                    except Exception:  # a scaler's bug never takes the running instances down
                        log.exception("the autoscaler failed; the workers stay as they are")
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
        """Restart a dead child with backoff; True when it died and restarting is off."""
        now = time.monotonic()
        if child.restart_at is not None:
            if now >= child.restart_at and not self.stopping:
                child.start(self.grace)
                child.restarts += 1
                log.warning("restarted %s as pid %s (restart %d)", child.name, child.pid, child.restarts)
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
            self.on_killed(child, False)  # nobody asked it to stop: it crashed
        lived = now - child.started_at
        child.fast_crashes = child.fast_crashes + 1 if lived < FAST_CRASH_SECONDS else 0
        if not self.restart:
            log.error("%s (pid %s) exited with %s", child.name, child.pid, code)
            return True
        # Never give up on a child: one that cannot start yet (beat while the database restarts)
        # is retried at most every BACKOFF_MAX seconds while the others go on.
        delay = min(BACKOFF_MAX, BACKOFF_START * (2 ** min(max(0, child.fast_crashes - 1), 16)))
        log.warning(
            "%s (pid %s) exited with %s after %.1fs; restarting in %.1fs%s", child.name, child.pid, code, lived, delay,
            f" ({child.fast_crashes} quick crashes in a row)" if child.fast_crashes > 1 else "",
        )
        child.restart_at = now + delay
        return False

    def add(self, child: Child) -> None:
        """Start one more child (the autoscaler grows)."""
        child.start(self.grace)
        self.children.append(child)
        print(f"conveyor: {child.name:<18} pid {child.pid:<8} {describe(child.info)} (added)", flush=True)
        self.write_state()

    def retire(self, child: Child) -> None:
        """Drain one child for good (the autoscaler shrinks): SIGTERM now, killed after the grace
        period, its jobs handed back then (drained); not restarted. Idempotent."""
        if child.retiring_until is not None:
            return
        child.retiring_until = time.monotonic() + self.grace
        child.restart_at = None
        child.info["retiring"] = True  # `status` shows it draining
        if child.alive():
            child.process.send_signal(signal.SIGTERM)
        self.write_state()
        log.info("retiring %s (pid %s): draining, at most %.0fs", child.name, child.pid, self.grace)

    def _check_retiring(self, child: Child) -> None:
        """A retired child that exited (drained) or outlived the grace period (killed) leaves the plan."""
        drained = not child.alive()
        if not drained and time.monotonic() < (child.retiring_until or 0.0):
            return
        if not drained:
            log.warning("%s (pid %s) still draining after %.0fs: killing it", child.name, child.pid, self.grace)
        child.kill_group()
        if child.process:
            child.process.wait()
        # A clean drain leaves nothing running; after a kill its jobs go back at once (attempts given back).
        if self.on_killed:
            self.on_killed(child, True)
        self.children.remove(child)
        log.info("retired %s (pid %s): %s", child.name, child.pid, "drained" if drained else "killed, its jobs handed back")
        self.write_state()

    def shutdown(self) -> None:
        """SIGTERM every child, wait up to the grace period, then kill what is left."""
        alive = [c for c in self.children if c.alive()]
        for child in alive:
            if child.retiring_until is not None:
                continue  # draining already (a second SIGTERM would tell Celery nothing new)
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
                self.on_killed(child, True)  # stopped on purpose: a drain past its grace period
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
    if info.get("autoscaled"):
        parts.append("autoscaled (retiring: draining)" if info.get("retiring") else "autoscaled")
    return "  ".join(parts)
