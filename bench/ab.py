"""`python -m bench.ab --base REV`: this tree's workers against REV's, in one run, rounds interleaved.

    python -m bench.ab --base HEAD~1 --jobs 2000 --rounds 3
    python -m bench.ab --base HEAD~1 --same-queue            chains whose two steps share a queue

A lever of the worker side (issue 28) is kept only if the bench shows it; on a shared machine
two runs a minute apart differ more than the lever does. Here the workers of both trees run
against the same embedded servers, each round in turn: bare Celery with its defaults (the base of
every ratio), then a Conveyor worker started from this tree ("new"), then one started from REV's
files (`git archive REV`, "base"), each for one-by-one jobs, enqueue_many and the chain handoff.
Only one Conveyor worker runs at a time (both would consume `default`); the client side is this
tree's for both.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from bench import jobs as bj
from bench.common import ROOT, Proc, Procs, child_env, percentile, queue_length, session, table, truncate_jobs, wait_until


def export(rev: str) -> Path:
    """REV's files in a folder of their own (no git worktree: nothing shared is touched)."""
    folder = Path(tempfile.mkdtemp(prefix="cvb-ab-", dir="/tmp"))
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def alternating(round_: int, new: Path, base: Path) -> tuple[tuple[str, Path], ...]:
    """The two sides in this round's order, swapped every round (a drifting load weighs on both)."""
    return (("new", new), ("base", base)) if round_ % 2 else (("base", base), ("new", new))


def session_removing(prog: str, body: Callable[[Procs], str], *folders: Path) -> str:
    """`bench.common.session`, then the exported trees removed, whatever happened."""
    try:
        return session(prog, body)
    finally:
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)


def start_worker(procs: Procs, args: argparse.Namespace, root: Path, name: str, queues: str) -> bj.Proc:
    argv = [sys.executable, str(root / "manage.py"), "start", "--queues", queues, "--pool", args.pool,
            "--concurrency", str(args.concurrency), "--grace", "10"]
    # In that tree (cwd and PYTHONPATH): the supervisor's `python -m celery` children import from there.
    env = child_env(WORKER_MODE="worker", WORKER_ID=f"{name}@bench", PYTHONPATH=str(root))
    proc = procs.spawn(name, argv, env, cwd=root)
    procs.wait_ready(proc)
    return proc


def ab_parser(prog: str, doc: str, **counts: int) -> argparse.ArgumentParser:
    """The A/B benches' common options: the base revision, `counts` (a name per count, its
    default: --jobs 2000), the rounds and each side's worker."""
    parser = argparse.ArgumentParser(prog=f"python -m {prog}", description=doc.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="the git revision to compare this tree with")
    for name, default in counts.items():
        parser.add_argument(f"--{name}", type=int, default=default)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--pool", default="prefork", choices=("prefork", "threads", "solo"))
    return parser


def bare_defaults_run(client: Any, worker: Proc, messages: int) -> tuple[float, bj.Cpu]:
    """Bare Celery with its defaults: publish `messages` no-op tasks to `worker`, and return the
    seconds from the first publish until all are done, with the worker's CPU meanwhile."""
    from bench import bare

    client.set(bare.DONE_KEY, 0)
    meter = bj.CpuMeter([worker])
    meter.start()
    start = time.perf_counter()
    for _ in range(messages):
        bare.noop_defaults.apply_async(queue=bare.QUEUE_DEFAULTS, routing_key=bare.QUEUE_DEFAULTS)
    meter.published()
    done = wait_until(lambda: int(client.get(bare.DONE_KEY) or 0) >= messages, 300, "bare", [worker])
    return done - start, meter.stop()


def main(argv: list[str] | None = None) -> int:
    parser = ab_parser("bench.ab", __doc__ or "", jobs=2000, chains=40, batch=500)
    parser.add_argument("--chain-interval", type=float, default=50.0)
    parser.add_argument("--same-queue", action="store_true", help="both chain steps on `default` (examples.echo twice)")
    args = parser.parse_args(argv)
    base_root = export(args.base)

    def body(procs: Procs) -> str:
        from bench import bare
        from jobs import Step, enqueue, enqueue_many, start_chain
        from jobs.models import Chain, ChainStatus

        bare.defaults_app.conf.update(bj.bare_defaults_config())
        client = bj.redis_client()
        (defaults_worker,) = bj.start_bare_workers(procs, args, defaults=True, **{"bare-defaults": bare.QUEUE_DEFAULTS})
        queues = "default" if args.same_queue else "default,notifications"
        second = "examples.echo" if args.same_queue else "examples.ping"
        results: dict[str, list[float]] = {}

        def add(key: str, value: float) -> None:
            results.setdefault(key, []).append(value)

        def bare_run(n: int) -> float:
            client.set(bare.DONE_KEY, 0)
            start = time.perf_counter()
            for _ in range(n):
                bare.noop_defaults.apply_async(queue=bare.QUEUE_DEFAULTS, routing_key=bare.QUEUE_DEFAULTS)
            done = wait_until(lambda: int(client.get(bare.DONE_KEY) or 0) >= n, 300, "bare", [defaults_worker])
            return n / (done - start)

        def conveyor_run(worker: bj.Proc, n: int, bulk: bool) -> tuple[float, float, float]:
            truncate_jobs()
            meter = bj.CpuMeter([worker])
            meter.start()
            start = time.perf_counter()
            if bulk:
                for first in range(0, n, args.batch):
                    enqueue_many([Step("examples.echo", {"i": i}) for i in range(first, min(n, first + args.batch))])
            else:
                for i in range(n):
                    enqueue("examples.echo", {"i": i})
            done = wait_until(lambda: bj.succeeded_jobs() >= n, 300, f"{n} rows", [worker])
            cpu = meter.stop()
            wait_until(lambda: queue_length("default") == 0, 120, "drain", [worker])
            return n / (done - start), cpu.workers * 1000 / n, (cpu.postgres or 0.0) * 1000 / n

        def chains_run(worker: bj.Proc, n: int) -> list[tuple[float, float]]:
            from django.db import connection

            truncate_jobs()
            bj.paced(n, args.chain_interval / 1000, lambda i: start_chain([Step("examples.echo", {"i": i}), Step(second, {})]))
            wait_until(lambda: Chain.objects.filter(status=ChainStatus.SUCCEEDED).count() >= n, 120, "chains", [worker])
            with connection.cursor() as cursor:
                # The handoff as bench.jobs measures it (step 2's start - step 1's end: 0 by construction
                # when step 2 was claimed in step 1's outcome), and step 2's end - step 1's end, which
                # counts the time until step 2 really ran either way.
                cursor.execute("""SELECT EXTRACT(EPOCH FROM (b.started_at - a.finished_at)) * 1000,
                                         EXTRACT(EPOCH FROM (b.finished_at - a.finished_at)) * 1000
                                    FROM jobs_job a JOIN jobs_job b ON b.chain_id = a.chain_id AND b.chain_index = 1
                                   WHERE a.chain_index = 0""")
                return [(float(row[0]), float(row[1])) for row in cursor.fetchall()]

        for round_ in range(args.rounds + 1):  # round 0 warms up, untimed
            for side, root in alternating(round_, ROOT, base_root):
                worker = start_worker(procs, args, root, f"conveyor-{side}", queues)
                conveyor_run(worker, 100, False)
                rate = bare_run(args.jobs)
                single, single_cpu, single_pg = conveyor_run(worker, args.jobs, False)
                bulk, bulk_cpu, bulk_pg = conveyor_run(worker, args.jobs, True)
                handoffs = chains_run(worker, args.chains)
                procs.stop(worker)
                if round_ == 0:
                    continue
                add(f"{side} single x", single / rate)
                add(f"{side} bulk x", bulk / rate)
                add(f"{side} single cpu", single_cpu)
                add(f"{side} bulk cpu", bulk_cpu)
                add(f"{side} single/s", single)
                add(f"{side} bulk/s", bulk)
                add(f"{side} single pg cpu", single_pg)
                add(f"{side} bulk pg cpu", bulk_pg)
                add(f"{side} handoff p50", percentile([h[0] for h in handoffs], 0.5))
                add(f"{side} step 2 done p50", percentile([h[1] for h in handoffs], 0.5))
                print(f"bench.ab:   round {round_} {side}: bare {rate:.0f}/s, one by one {single:.0f}/s "
                      f"({single / rate:.2f}x, {single_cpu:.2f} ms CPU, PostgreSQL {single_pg:.2f}), "
                      f"enqueue_many {bulk:.0f}/s ({bulk / rate:.2f}x, "
                      f"{bulk_cpu:.2f} ms CPU, PostgreSQL {bulk_pg:.2f}), "
                      f"handoff p50 {percentile([h[0] for h in handoffs], 0.5):.2f} ms, step 2 done "
                      f"{percentile([h[1] for h in handoffs], 0.5):.2f} ms after step 1", flush=True)
        rows = []
        for what in ("single/s", "single x", "single cpu", "single pg cpu", "bulk/s", "bulk x", "bulk cpu", "bulk pg cpu",
                     "handoff p50", "step 2 done p50"):
            new, base = results[f"new {what}"], results[f"base {what}"]
            ratio = percentile(new, 0.5) / percentile(base, 0.5) if percentile(base, 0.5) else float("nan")
            rows.append((what, ", ".join(f"{v:.2f}" for v in base), ", ".join(f"{v:.2f}" for v in new), f"{ratio:.2f}"))
        header = ("median of rounds", f"base ({args.base})", "new (this tree)", "new/base")
        chains = "same queue" if args.same_queue else "default -> notifications, one worker for both"
        return "\n".join([f"bench.ab: {args.jobs} jobs, {args.chains} chains ({chains}), x = / bare Celery's "
                          "defaults in the same round; cpu = the Conveyor worker's ms per job, "
                          "pg cpu = PostgreSQL's", *table(header, rows)])

    return session_removing("bench.ab", body, base_root)


if __name__ == "__main__":
    sys.exit(main())
