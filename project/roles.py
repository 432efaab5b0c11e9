"""Roles (WORKER_MODE) and the cluster split: which instance serves HTTP, which consumes queues.

| mode   | serves HTTP | consumes queues | admin               |
| shared | yes         | yes             | unless ADMIN_DISABLED |
| server | yes         | no              | unless ADMIN_DISABLED |
| worker | no          | yes             | never               |
"""
from __future__ import annotations

import os
from dataclasses import dataclass


def serves_http(mode: str) -> bool:
    return mode in ("shared", "server")


def consumes(mode: str) -> bool:
    return mode in ("shared", "worker")


class SplitError(ValueError):
    """A --cluster/--servers/--workers combination that does not fit."""


@dataclass(frozen=True)
class Split:
    servers: int
    workers: int
    shared: int

    @property
    def total(self) -> int:
        return self.servers + self.workers + self.shared

    def modes(self) -> list[str]:
        return ["server"] * self.servers + ["worker"] * self.workers + ["shared"] * self.shared


def _amount(raw: str | None, total: int, flag: str) -> int:
    """A count (`3`) or a percentage of the cluster (`75%`, rounded down, at least 1 if above 0)."""
    if raw is None or raw == "":
        return 0
    text = raw.strip()
    is_percent = text.endswith("%")
    try:
        number = float(text[:-1]) if is_percent else int(text)
    except ValueError:
        raise SplitError(f"{flag} {raw!r}: expected a count like 2 or a percentage like 25%") from None
    if is_percent:
        if not 0 <= number <= 100:
            raise SplitError(f"{flag} {raw}: a percentage must be between 0% and 100%")
        count = int(total * number // 100)
        return max(1, count) if number > 0 else 0
    count = int(number)
    if count < 0:
        raise SplitError(f"{flag} {raw}: must not be negative")
    return count


def split(cluster: int | None, servers: str | None, workers: str | None) -> Split:
    """N instances: X servers, Y workers, the remainder shared (Medusa's `start --cluster`)."""
    total = (os.cpu_count() or 1) if cluster is None else cluster
    if total < 1:
        raise SplitError(f"--cluster {total}: needs at least one instance")
    x = _amount(servers, total, "--servers")
    y = _amount(workers, total, "--workers")
    if servers is not None and workers is not None and x == 0 and y == 0:
        raise SplitError("--servers and --workers are both zero: nothing would serve or work")
    if x + y > total:
        raise SplitError(f"--servers {servers} and --workers {workers} make {x + y} instances, more than --cluster {total}")
    return Split(servers=x, workers=y, shared=total - x - y)
