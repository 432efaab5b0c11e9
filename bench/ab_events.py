"""`python -m bench.ab_events --base REV`: this tree's emit and deliveries against REV's, in one run.

    python -m bench.ab_events --base HEAD~3 --events 1000 --rounds 3

As `bench.ab` does for jobs (issue 28: on a shared machine two runs a minute apart differ more
than a lever does), for the events phase of `bench.jobs`: each round in turn, bare Celery's
fan-out (three no-op tasks per event, Celery's defaults: the base of every ratio), then this
tree ("new") and REV ("base"), each with its own client side (REV's `subscribers/bus.py` loaded
from `git archive REV` beside this tree's other modules: the schema must be the same) and its
own worker (`manage.py start` from that tree). N `bench.fanout` events emitted one by one, each
to three no-op subscribers; done when all 3N deliveries succeeded. CPU columns per delivery.
"""
from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path
from typing import Any, Callable

from bench import jobs as bj
from bench.ab import ab_parser, alternating, bare_defaults_run, export, session_removing, start_worker
from bench.common import ROOT, Procs, percentile, queue_length, table, wait_until


def load_emit(root: Path) -> Callable[..., Any]:
    """`emit` from `root`'s subscribers/bus.py, the rest of the package from this tree's."""
    spec = importlib.util.spec_from_file_location(f"bus_{abs(hash(str(root)))}", root / "subscribers" / "bus.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.emit


def main(argv: list[str] | None = None) -> int:
    args = ab_parser("bench.ab_events", __doc__ or "", events=1000).parse_args(argv)
    args.timeout = None
    base_root = export(args.base)

    def body(procs: Procs) -> str:
        from django.db import connection

        from bench import bare
        from jobs.models import Job
        from subscribers.registry import matching

        bare.defaults_app.conf.update(bj.bare_defaults_config())
        client = bj.redis_client()
        subs = matching(bj.FANOUT_EVENT)
        fanout, types = len(subs), [sub.job_type for sub in subs]
        (bare_worker,) = bj.start_bare_workers(procs, args, defaults=True, **{"bare-events": bare.QUEUE_DEFAULTS})
        emits = {"new": load_emit(ROOT), "base": load_emit(base_root)}
        results: dict[str, list[float]] = {}

        def add(key: str, value: float) -> None:
            results.setdefault(key, []).append(value)

        def bare_run(n: int) -> tuple[float, bj.Cpu]:
            seconds, cpu = bare_defaults_run(client, bare_worker, n * fanout)
            return n / seconds, cpu

        def delivered() -> int:
            with connection.cursor() as cursor:
                cursor.execute(f"SELECT count(*) FROM {Job._meta.db_table} WHERE status = 'succeeded' AND type = ANY(%s)", [types])
                return cursor.fetchone()[0]

        def conveyor_run(side: str, worker: bj.Proc, n: int) -> tuple[float, bj.Cpu]:
            bj.truncate_events()
            emit = emits[side]
            meter = bj.CpuMeter([worker])
            meter.start()
            start = time.perf_counter()
            for i in range(n):
                emit(bj.FANOUT_EVENT, {"i": i})
            meter.published()
            done = wait_until(lambda: delivered() >= n * fanout, 300, f"{n * fanout} deliveries", [worker])
            cpu = meter.stop()
            wait_until(lambda: queue_length("default") == 0, 120, "drain", [worker])
            return n / (done - start), cpu

        def per(cpu: bj.Cpu, n: int) -> float:
            return (cpu.client + cpu.workers + (cpu.postgres or 0.0) + cpu.redis) * 1000 / n

        for round_ in range(args.rounds + 1):  # round 0 warms up, untimed
            for side, root in alternating(round_, ROOT, base_root):
                worker = start_worker(procs, args, root, f"conveyor-{side}", "default")
                conveyor_run(side, worker, 50)
                rate, bare_cpu = bare_run(args.events)
                conveyor, cpu = conveyor_run(side, worker, args.events)
                procs.stop(worker)
                if round_ == 0:
                    continue
                n = args.events * fanout
                add(f"{side} x", conveyor / rate)
                add(f"{side} events/s", conveyor)
                add(f"{side} bare events/s", rate)
                add(f"{side} client", cpu.client * 1000 / n)
                add(f"{side} workers", cpu.workers * 1000 / n)
                add(f"{side} postgres", (cpu.postgres or 0.0) * 1000 / n)
                add(f"{side} total", per(cpu, n))
                add(f"{side} bare total", per(bare_cpu, n))
                print(f"bench.ab_events:   round {round_} {side}: bare {rate:.0f} events/s, Conveyor {conveyor:.0f} "
                      f"({conveyor / rate:.2f}x); CPU ms per delivery client / workers / PostgreSQL / Redis "
                      f"{cpu.per_item_ms(n)} (bare {bare_cpu.per_item_ms(n)})", flush=True)
        rows = []
        for what in ("x", "events/s", "bare events/s", "client", "workers", "postgres", "total", "bare total"):
            new, base = results[f"new {what}"], results[f"base {what}"]
            ratio = percentile(new, 0.5) / percentile(base, 0.5) if percentile(base, 0.5) else float("nan")
            rows.append((what, ", ".join(f"{v:.2f}" for v in base), ", ".join(f"{v:.2f}" for v in new), f"{ratio:.2f}"))
        header = ("median of rounds", f"base ({args.base})", "new (this tree)", "new/base")
        return "\n".join([f"bench.ab_events: {args.events} {bj.FANOUT_EVENT} events x {fanout} subscribers per run; x = "
                          "events/s / bare Celery's fan-out in the same round; CPU = ms per delivery (client: emit only)",
                          *table(header, rows)])

    return session_removing("bench.ab_events", body, base_root)

if __name__ == "__main__":
    sys.exit(main())
