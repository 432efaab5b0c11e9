"""`python -m bench.pooler`: end-to-end jobs/s with the workers' database through PgBouncer in
transaction mode, next to PostgreSQL direct, in one run (docs/performance.md, "Through the
pooler").

    python -m bench.pooler                          2,000 jobs a run, 3 rounds
    python -m bench.pooler --jobs 20 --rounds 1 --sides direct,pooler    a smoke run

Four sides, interleaved round by round, one side's worker up at a time (started, warmed with a
few untimed jobs, measured, stopped), each `manage.py start` in WORKER_MODE=worker:
- direct: DATABASE_URL is PostgreSQL (the statements prepared, claims committed without waiting
  for the WAL flush);
- pooler settings but prepared, direct (`--sides` durable; not by default): as the next, with
  DATABASE_PREPARED=true, which PgBouncer 1.21+ allows: the cost of durable claims alone;
- pooler settings, direct: DATABASE_DIRECT_URL set to the same PostgreSQL, so the settings are
  those behind a pooler (nothing prepared, claims durable: project/pooler.py) without the hop;
- through PgBouncer: DATABASE_URL is Debian's PgBouncer in transaction mode (pool of 20) in front
  of it, DATABASE_DIRECT_URL PostgreSQL;
- through PgBouncer, claims asynchronous: and DATABASE_CLAIMS_URL its database entry whose
  connect_query sets synchronous_commit = off (bench/pgbouncer.py).
This process enqueues N `examples.echo` jobs with enqueue_many (batches of 500, directly: the same
for every side) and times from the first enqueue until N rows succeeded. With no DATABASE_URL, on
embedded servers in a fresh folder under /tmp (bench/common.py), removed at the end. Needs
`pgbouncer` on the PATH (Debian: apt-get install pgbouncer).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any

from bench.common import (
    MANAGE,
    BenchError,
    Procs,
    child_env,
    context,
    load_average,
    session,
    table,
    truncate_jobs,
    wait_until,
)
from bench.jobs import succeeded_jobs

SIDES = (
    ("direct", "direct to PostgreSQL"),
    ("durable", "pooler settings but prepared, direct (durable claims)"),
    ("settings", "pooler settings, direct (nothing prepared, durable claims)"),
    ("pooler", "through PgBouncer, transaction mode"),
    ("claims", "through PgBouncer, claims asynchronous (DATABASE_CLAIMS_URL)"),
)
BATCH = 500
WARMUP = 20


def enqueue(n: int) -> None:
    from jobs import Step, enqueue_many

    for first in range(0, n, BATCH):
        enqueue_many([Step("examples.echo", {"i": i}) for i in range(first, min(n, first + BATCH))])


def run_side(procs: Procs, args: argparse.Namespace, side: str, env: dict[str, str]) -> float:
    """One side's worker: started, warmed, N jobs timed end to end, stopped. Jobs/s."""
    argv = [sys.executable, MANAGE, "start", "--queues", "default", "--concurrency", str(args.concurrency), "--grace", "5"]
    worker = procs.spawn(f"{side}-worker", argv, child_env(WORKER_MODE="worker", WORKER_ID=f"{side}@bench", **env))
    try:
        procs.wait_ready(worker)
        truncate_jobs()
        enqueue(WARMUP)
        wait_until(lambda: succeeded_jobs() >= WARMUP, 60, "the warm-up jobs", [worker])
        truncate_jobs()
        began = time.perf_counter()
        enqueue(args.jobs)
        wait_until(lambda: succeeded_jobs() >= args.jobs, 120 + args.jobs / 10, f"{args.jobs} succeeded rows", [worker])
        return args.jobs / (time.perf_counter() - began)
    finally:
        procs.stop(worker, grace=0)  # what is measured is over: killed, no drain (its warm shutdown took 1-3 s)


def pooler(procs: Procs, args: argparse.Namespace) -> dict[str, list[float]]:
    from django.conf import settings
    from django.db import connections

    from bench import pgbouncer

    try:
        bouncer = pgbouncer.start(connections["default"].settings_dict, pool=20)
    except RuntimeError as exc:
        raise BenchError(str(exc)) from None
    try:
        direct = settings.DATABASE_URL
        envs = {
            "direct": {"DATABASE_URL": direct},
            "durable": {"DATABASE_URL": direct, "DATABASE_DIRECT_URL": direct, "DATABASE_PREPARED": "true"},
            "settings": {"DATABASE_URL": direct, "DATABASE_DIRECT_URL": direct},
            "pooler": {"DATABASE_URL": bouncer.url(), "DATABASE_DIRECT_URL": direct},
            "claims": {"DATABASE_URL": bouncer.url(), "DATABASE_DIRECT_URL": direct, "DATABASE_CLAIMS_URL": bouncer.claims_url()},
        }
        sides = [(key, label) for key, label in SIDES if key in args.sides]
        rates: dict[str, list[float]] = {key: [] for key, _ in sides}
        served = 0
        for round_ in range(args.rounds):
            order = sides if round_ % 2 == 0 else sides[::-1]  # neither side always first
            for key, label in order:
                through = key in ("pooler", "claims")
                before = bouncer.stats()["total_xact_count"] if through else 0
                rate = run_side(procs, args, key, envs[key])
                if through:
                    served += bouncer.stats()["total_xact_count"] - before
                rates[key].append(rate)
                print(f"bench.pooler:   round {round_ + 1}, {label}: {rate:,.0f} jobs/s", flush=True)
        pooled_runs = args.rounds * sum(key in ("pooler", "claims") for key, _ in sides)
        if served < pooled_runs * args.jobs:
            raise BenchError(f"PgBouncer served {served} transactions for {pooled_runs * args.jobs} jobs: the workers bypassed it")
        rates["served"] = [served / (pooled_runs * (args.jobs + WARMUP))]
        return rates
    finally:
        bouncer.stop()


def report(args: argparse.Namespace, rates: dict[str, Any], machine: str) -> str:
    base = statistics.median(rates["direct"])
    rows = []
    for key, label in SIDES:
        if key not in rates:
            continue
        median = statistics.median(rates[key])
        runs = ", ".join(f"{rate:,.0f}" for rate in rates[key])
        rows.append((label, f"{median:,.0f}", f"{median / base:.2f}x", runs))
    lines = [
        f"bench.pooler: {args.jobs:,} examples.echo jobs a run, {args.rounds} round(s), {args.concurrency} worker processes; "
        f"{machine}; load {load_average()}",
        "",
        *table(("workers' database", "jobs/s", "x direct", "runs (jobs/s)"), rows),
        "",
        f"PgBouncer served {rates['served'][0]:.1f} transactions per job (enqueue not included: this process enqueues directly)",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.pooler", description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2000, help="jobs per run (default 2000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, each side once a round; the median is shown (default 3)")
    parser.add_argument("--concurrency", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument(
        "--sides", default="direct,settings,pooler,claims", help="which sides (default: direct,settings,pooler,claims; also: durable)",
    )
    args = parser.parse_args(argv)
    args.sides = [side.strip() for side in args.sides.split(",") if side.strip()]
    unknown = set(args.sides) - {key for key, _ in SIDES}
    if unknown or not {"direct", "pooler"} <= set(args.sides):
        parser.error(f"--sides: direct and pooler, and optionally settings, durable, claims (not {', '.join(sorted(unknown)) or 'fewer'})")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def body(procs: Procs) -> str:
        machine = context()
        print(f"bench.pooler: {', '.join(args.sides)} ...", flush=True)
        return report(args, pooler(procs, args), machine)

    return session("bench.pooler", body)


if __name__ == "__main__":
    sys.exit(main())
