"""`python -m bench.ab_adapters --base REV`: the adapters' one-by-one paths, this tree's workers
against REV's, in one run, rounds interleaved.

    python -m bench.ab_adapters --base 0b840d1 --jobs 2000 --rounds 3

As `bench.ab` does for the plain path (issue 28: on a shared machine two runs a minute apart
differ more than a lever does), for the three ways a user enqueues one job at a time: plain
`jobs.enqueue`, django.tasks' `task.enqueue()` on ConveyorBackend (examples/djtasks `add`), and
Celery's `.delay()` of a `@shared_task` made durable by conveyor_celery (examples/tasks.py `add`,
copied into REV's tree when it has none: a bench file, the adapter's code is REV's). Each round in
turn, a Conveyor worker from this tree ("new") and one from REV ("base"), the order swapped every
round, each running the three paths, with bare Celery's defaults (the base of every ratio) run
just before each. The client side (the enqueuing process) is this tree's for both sides: its CPU
column compares the paths, not the trees. N jobs a run; done when N rows succeeded.
"""
from __future__ import annotations

import shutil
import sys
import time
from typing import Callable

from bench import jobs as bj
from bench.ab import ab_parser, alternating, bare_defaults_run, export, session_removing, start_worker
from bench.common import ROOT, Procs, percentile, queue_length, table, truncate_jobs, wait_until

PATHS = (
    ("plain", "jobs.enqueue one by one"),
    ("djtasks", "django.tasks task.enqueue() one by one"),
    ("delay", "Celery .delay() on Conveyor one by one"),
)


def main(argv: list[str] | None = None) -> int:
    args = ab_parser("bench.ab_adapters", __doc__ or "", jobs=2000).parse_args(argv)
    args.timeout = None
    base_root = export(args.base)
    if not (base_root / "examples" / "tasks.py").exists():
        shutil.copy(ROOT / "examples" / "tasks.py", base_root / "examples" / "tasks.py")

    def body(procs: Procs) -> str:
        from bench import bare
        from examples.djtasks.tasks import add as djtasks_add
        from examples.tasks import add as celery_add
        from jobs import enqueue

        bare.defaults_app.conf.update(bj.bare_defaults_config())
        client = bj.redis_client()
        (bare_worker,) = bj.start_bare_workers(procs, args, defaults=True, **{"bare-defaults": bare.QUEUE_DEFAULTS})
        calls: dict[str, Callable[[int], object]] = {
            "plain": lambda i: enqueue("examples.echo", {"i": i}),
            "djtasks": lambda i: djtasks_add.enqueue(i, 1),
            "delay": lambda i: celery_add.delay(i, 1),
        }
        results: dict[str, list[float]] = {}

        def add(key: str, value: float) -> None:
            results.setdefault(key, []).append(value)

        def bare_run(n: int) -> tuple[float, bj.Cpu]:
            seconds, cpu = bare_defaults_run(client, bare_worker, n)
            return n / seconds, cpu

        def conveyor_run(worker: bj.Proc, path: str, n: int) -> tuple[float, bj.Cpu]:
            truncate_jobs()
            call = calls[path]
            meter = bj.CpuMeter([worker])
            meter.start()
            start = time.perf_counter()
            for i in range(n):
                call(i)
            meter.published()
            done = wait_until(lambda: bj.succeeded_jobs() >= n, 300, f"{n} succeeded rows", [worker])
            cpu = meter.stop()
            wait_until(lambda: queue_length("default") == 0, 120, "drain", [worker])
            time.sleep(0.5)  # the last prefetched messages
            return n / (done - start), cpu

        for round_ in range(args.rounds + 1):  # round 0 warms up, untimed
            for side, root in alternating(round_, ROOT, base_root):
                worker = start_worker(procs, args, root, f"conveyor-{side}", "default")
                for path, _ in PATHS:
                    conveyor_run(worker, path, 50)
                for path, label in PATHS:
                    rate, _ = bare_run(args.jobs)
                    conveyor, cpu = conveyor_run(worker, path, args.jobs)
                    if round_ == 0:
                        continue
                    n = args.jobs
                    add(f"{side} {path} x", conveyor / rate)
                    add(f"{side} {path} jobs/s", conveyor)
                    add(f"{side} {path} client", cpu.client * 1000 / n)
                    add(f"{side} {path} workers", cpu.workers * 1000 / n)
                    add(f"{side} {path} postgres", (cpu.postgres or 0.0) * 1000 / n)
                    add(f"{side} {path} redis", cpu.redis * 1000 / n)
                    print(f"bench.ab_adapters:   round {round_} {side} {label}: {conveyor:.0f} jobs/s, bare {rate:.0f} "
                          f"({conveyor / rate:.2f}x); CPU ms per job client / workers / PostgreSQL / Redis {cpu.per_item_ms(n)}",
                          flush=True)
                procs.stop(worker)
        rows = []
        for path, label in PATHS:
            for what in ("x", "jobs/s", "client", "workers", "postgres", "redis"):
                new, base = results[f"new {path} {what}"], results[f"base {path} {what}"]
                ratio = percentile(new, 0.5) / percentile(base, 0.5) if percentile(base, 0.5) else float("nan")
                rows.append((f"{label}: {what}", ", ".join(f"{v:.2f}" for v in base), ", ".join(f"{v:.2f}" for v in new),
                             f"{ratio:.2f}"))
        header = ("median of rounds", f"base ({args.base})", "new (this tree)", "new/base")
        return "\n".join([
            f"bench.ab_adapters: {args.jobs} jobs per run, {args.pool} x{args.concurrency}; x = jobs/s / bare Celery's "
            "defaults run just before in the same round; CPU = ms per job (client: this tree's for both sides)",
            *table(header, rows),
        ])

    return session_removing("bench.ab_adapters", body, base_root)


if __name__ == "__main__":
    sys.exit(main())
