"""`manage.py start --autoscale MIN,MAX`: the supervisor grows and shrinks its worker instances
between MIN and MAX from the autoscaling signal.

Every `--autoscale-interval` seconds (default 2) the supervisor reads the work of the queues its
workers consume, straight from the database (jobs.engine.scaling.demand: one query on the partial
indexes of unfinished rows; no server, no token): the workers wanted are ceil((waiting + running)
/ per_worker), per_worker being a worker's concurrency (--concurrency, else the CPUs). The
decision is jobs.engine.decisions.scale's, a pure function: grow at once up to the wanted count
(a worker added is a job started sooner; the count is absolute, so growing again on the next
read counts nothing twice), shrink only once fewer were wanted for `--shrink-after` seconds
(default 30) and then to the most wanted meanwhile, never outside MIN..MAX.

A worker added is one more `worker` instance (a Celery worker with its own node name); a worker
retired is the newest one, drained as on a shutdown (Supervisor.retire: SIGTERM, it finishes its
running jobs and gives back its prefetched messages; past the grace period it is killed and its
jobs handed back, their attempts given back). Each decision that changes something (and each
change of what it holds back for) is logged by `conveyor.autoscale`.

It assumes it is the only autoscaled pool for its queues: workers elsewhere that consume them take
jobs (fewer wait) but their running jobs count here too. Several hosts scaling the same queues:
use an autoscaler over GET /api/queues/scale instead (docs/deployment.md).
"""
from __future__ import annotations

import logging
import time
from typing import Callable

from jobs.engine import decisions
from project.supervisor import Child, Supervisor

log = logging.getLogger("conveyor.autoscale")

#: Growing again waits for nothing: the wanted count is absolute (see above).
GROW_COOLDOWN = 0.0


class AutoscaleError(ValueError):
    """A --autoscale value that does not parse or fit (exit 2, naming it)."""


def parse(raw: str) -> tuple[int, int]:
    """`MIN,MAX` -> (MIN, MAX): whole numbers, 0 <= MIN <= MAX, MAX >= 1."""
    parts = [part.strip() for part in str(raw).split(",")]
    if len(parts) != 2 or not all(part.isdigit() for part in parts):
        raise AutoscaleError(f"--autoscale {raw!r}: expected MIN,MAX, two whole numbers like 1,4")
    low, high = int(parts[0]), int(parts[1])
    if high < 1:
        raise AutoscaleError(f"--autoscale {raw}: MAX must be at least 1")
    if low > high:
        raise AutoscaleError(f"--autoscale {raw}: MIN ({low}) is above MAX ({high})")
    return low, high


class Autoscaler:
    """The supervisor's scaler (Supervisor(scaler=...)): reads, decides, adds or retires workers.

    `read()` -> (workers wanted, {"waiting": n, "running": n}); `make_worker()` -> a new worker
    Child (info["autoscaled"] set). The pool is the supervisor's children marked autoscaled and
    not retiring; the newest is retired first."""

    def __init__(self, low: int, high: int, read: Callable[[], tuple[int, dict[str, int]]], make_worker: Callable[[], Child],
                 shrink_after: float = 30.0, clock: Callable[[], float] = time.monotonic, per_worker: int = 1) -> None:
        self.low, self.high = low, high
        #: A worker's concurrency, as `read` divides by it (for the start-up line).
        self.per_worker = per_worker
        self.read, self.make_worker = read, make_worker
        self.shrink_after, self.clock = shrink_after, clock
        self.state = decisions.ScaleState(workers=0)
        self.last_action = ""
        self.failing = False

    @staticmethod
    def pool(supervisor: Supervisor) -> list[Child]:
        return [c for c in supervisor.children if c.info.get("autoscaled") and c.retiring_until is None]

    def __call__(self, supervisor: Supervisor) -> None:
        pool = self.pool(supervisor)
        try:
            wanted, facts = self.read()
        except Exception as exc:  # the database away: hold what runs, say so once
            if not self.failing:
                log.warning("autoscale: cannot read the queues (%s); holding %d worker(s)", exc, len(pool))
            self.failing = True
            return
        self.failing = False
        decision = decisions.scale(wanted, self.state._replace(workers=len(pool)), self.low, self.high, self.clock(),
                                   grow_cooldown=GROW_COOLDOWN, shrink_after=self.shrink_after)
        self.state = decision.state
        if decision.workers != len(pool) or decision.action != self.last_action:
            log.info("autoscale: %s: %s (waiting %d, running %d; bounds %d..%d)", decision.action, decision.words,
                     facts.get("waiting", 0), facts.get("running", 0), self.low, self.high)
        self.last_action = decision.action
        for _ in range(decision.workers - len(pool)):
            supervisor.add(self.make_worker())
        for child in list(reversed(pool))[: max(0, len(pool) - decision.workers)]:
            supervisor.retire(child)
