"""The scale table (issue 15): end-to-end jobs/s across hosts, Conveyor next to bare Celery.

    python -m bench.scale                      the full table (make chaos runs it)
    python -m bench.scale --cpu-jobs 20 --io-jobs 20 --configs 1,hosts    a smoke run
    python -m bench.scale --configs auto       the autoscaled row only

The hosts are network namespaces (hosts/harness.py): a data host (PostgreSQL; the Redis
master, its replica and two sentinels: REDIS_URL is `sentinel://`), worker hosts w1 and w2. This
process, in the root namespace, is the client: it enqueues (Conveyor: `enqueue_many`, one
transaction; bare Celery: `apply_async` one by one over one producer connection, bench/bare.py's
app with Conveyor's Celery settings) and times from the first enqueue to the last job done
(Conveyor: its row succeeded; bare: a Redis counter), in rounds interleaved between the sides,
the best of each side kept. Jobs: CPU-bound (`work` loop iterations, ~22 ms) and I/O-bound (a
50 ms sleep). Worker processes (prefork): 1, 2, 4 on w1, then 2 on w1 + 2 on w2. Both sides'
workers of a configuration run side by side, one side measured at a time.

`auto` (issue 29): one `manage.py start --cluster 1 --workers 1 --autoscale 1,4` on w1 (prefork, one
process per worker instance), a burst of I/O jobs: when the supervisor decided to grow, when 4
workers consumed, the burst's rate, and how long after its last job the workers were back to 1
(--shrink-after 5 s); every job must have run once (checked: a shortfall fails the run). Printed
under the table (no bare Celery side: Celery has no autoscaler of worker processes across queues'
rows).

Next to each rate, what bounded it, from the CPU seconds each part used during the run: the
machine's cores (the run's busy cores near all of them), PostgreSQL or Redis (one of them near
one core busy), or the I/O jobs' sleep (the rate near processes / 0.05 s).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from bench.common import table, tree_cpu
from hosts.harness import MANAGE, REDIS_PORT, Proc, Topology, stop_together, unavailable

CPU_WORK = 200_000  # loop iterations: ~22 ms of one core here
IO_SLEEP = 0.05
QUEUE_BARE = "bench-scale"
CONFIGS = {
    "1": {"w1": 1},
    "2": {"w1": 2},
    "4": {"w1": 4},
    "hosts": {"w1": 2, "w2": 2},
}
#: The autoscaled phase: bounds, seconds between reads, seconds of less work before shrinking.
AUTO_BOUNDS, AUTO_INTERVAL, AUTO_SHRINK_AFTER = (1, 4), 1.0, 5.0
LABELS = {"1": "1 process (w1)", "2": "2 processes (w1)", "4": "4 processes (w1)", "hosts": "2 hosts x 2 processes"}


@dataclass
class Cell:
    rate: float
    seconds: float
    #: Cores busy on average during the run: workers, PostgreSQL, Redis (master).
    workers: float
    postgres: float
    redis: float
    #: Fraction of the machine's cores busy during the run (every process: other tenants too).
    machine: float = 0.0


def machine_times() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far."""
    import psutil

    times = psutil.cpu_times()
    total = sum(times)
    return total - times.idle - getattr(times, "iowait", 0.0), total


def limit(kind: str, processes: int, cell: Cell, cores: int) -> str:
    """What bounded a run, from where the CPU went."""
    busy = cell.workers + cell.postgres + cell.redis
    if kind == "io" and cell.rate >= 0.75 * processes / IO_SLEEP:
        return f"the sleep: {processes} x 1/{IO_SLEEP:g}s = {processes / IO_SLEEP:.0f}/s"
    if cell.postgres >= 0.7:
        return f"PostgreSQL ({cell.postgres:.1f} core)"
    if cell.redis >= 0.7:
        return f"Redis ({cell.redis:.1f} core)"
    if busy >= 0.75 * cores:
        return f"cores ({busy:.1f} of {cores} busy: workers {cell.workers:.1f}, PG {cell.postgres:.1f})"
    if cell.machine >= 0.85:
        return f"cores (machine {cell.machine:.0%} busy, this run's parts {busy:.1f} core)"
    if kind == "cpu" and cell.workers >= 0.75 * processes:
        return f"its {processes} process(es) ({cell.workers:.1f} core)"
    return f"per-job overhead ({busy:.1f} of {cores} cores busy)"


class Bench:
    def __init__(self, net: Topology, log: Callable[[str], None]) -> None:
        self.net, self.log = net, log
        self.master_url = f"redis://{net.data_ip}:{REDIS_PORT}/0"

    def setup_django(self) -> None:
        os.environ.update(self.net.conveyor_env("client"))
        os.environ["DJANGO_SETTINGS_MODULE"] = "project.settings"
        import django

        django.setup()
        from bench import bare
        from bench.common import bare_config

        self.bare_config = bare_config()
        bare.configure(self.bare_config)

    def start(self, config: dict[str, int]) -> list[Proc]:
        procs = []
        for host, processes in config.items():
            procs.append(self.net.start_worker(host, "images", "prefork", processes, name=f"conveyor-{host}-{processes}"))
            procs.append(self.net.spawn(host, f"bare-{host}-{processes}", [
                sys.executable, "-m", "celery", "-A", "bench.bare", "worker", "--queues", QUEUE_BARE, "--pool", "prefork",
                "--concurrency", str(processes), "--loglevel", "INFO", "--without-mingle", "--without-gossip",
                "--hostname", f"bare-{host}-{processes}@{self.net.prefix}",
            ], {**self.net.conveyor_env(host), "BENCH_BARE_CONFIG": json.dumps(self.bare_config), "REDIS_URL": self.master_url}))
        for proc in procs:
            self.net.wait_ready(proc) if proc.name.startswith("conveyor") else self._wait_bare(proc)
        return procs

    def _wait_bare(self, proc: Proc, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while "ready." not in proc.log(10**6):
            if not proc.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"{proc.name} not ready:\n{proc.log()}")
            time.sleep(0.2)

    def measure(self, workers: list[Proc], go: Callable[[], None], done: Callable[[], bool], jobs: int) -> Cell:
        def cpu() -> tuple[float, float, float]:
            return (sum(tree_cpu(p.pid) for p in workers), tree_cpu(self.net.pg.pid), tree_cpu(self.redis_master_pid()))

        before, machine_before = cpu(), machine_times()
        start = time.perf_counter()
        go()
        deadline = time.monotonic() + 120 + jobs
        while not done():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{jobs} jobs not done in time:\n" + "\n".join(p.log(1500) for p in workers))
            time.sleep(0.02)
        seconds = time.perf_counter() - start
        after, machine_after = cpu(), machine_times()
        used = [(b - a) / seconds for a, b in zip(before, after)]
        machine = (machine_after[0] - machine_before[0]) / max(1e-9, machine_after[1] - machine_before[1])
        return Cell(jobs / seconds, seconds, *used, machine=machine)

    def redis_master_pid(self) -> int:
        return self.net.redis_master.pid

    def conveyor(self, workers: list[Proc], kind: str, jobs: int) -> Cell:
        from django.db import connection

        from jobs import Step, enqueue_many

        with connection.cursor() as cursor:
            cursor.execute("SELECT coalesce(max(id), 0) FROM jobs_job")
            first = cursor.fetchone()[0]
        step = Step("scale.cpu", {"work": CPU_WORK}) if kind == "cpu" else Step("scale.io", {"seconds": IO_SLEEP})

        def done() -> bool:
            with connection.cursor() as cursor:
                cursor.execute("SELECT count(*) FROM jobs_job WHERE id > %s AND status = 'succeeded'", [first])
                return cursor.fetchone()[0] >= jobs

        return self.measure(workers, lambda: enqueue_many([step] * jobs), done, jobs)

    def bare(self, workers: list[Proc], kind: str, jobs: int) -> Cell:
        import redis

        from bench import bare

        client = redis.Redis.from_url(self.master_url)
        client.set(bare.DONE_KEY, 0)
        task, args = (bare.burn, (CPU_WORK,)) if kind == "cpu" else (bare.nap, (IO_SLEEP,))

        def go() -> None:  # one producer connection for all, as Conveyor's enqueue_many publishes
            with bare.app.producer_or_acquire() as producer:
                for _ in range(jobs):
                    task.apply_async(args, queue=QUEUE_BARE, routing_key=QUEUE_BARE, producer=producer)

        return self.measure(workers, go, lambda: int(client.get(bare.DONE_KEY) or 0) >= jobs, jobs)


    def autoscaled(self, jobs: int) -> str:
        """The `auto` phase: a burst of `jobs` I/O jobs on an autoscaled cluster on w1; its line."""
        from django.db import connection

        from jobs import Step, enqueue_many

        low, high = AUTO_BOUNDS
        proc = self.net.spawn("w1", "conveyor-auto", [
            sys.executable, MANAGE, "start", "--cluster", "1", "--workers", str(low), "--autoscale", f"{low},{high}",
            "--autoscale-interval", str(AUTO_INTERVAL), "--shrink-after", str(AUTO_SHRINK_AFTER), "--queues", "images",
            "--pool", "prefork", "--concurrency", "1", "--no-beat", "--grace", "5",
        ], self.net.conveyor_env("w1", WORKER_MODE="worker", WORKER_ID=f"auto@{self.net.prefix}"))
        try:
            self.net.wait_ready(proc, workers=low)
            with connection.cursor() as cursor:
                cursor.execute("SELECT coalesce(max(id), 0) FROM jobs_job")
                first = cursor.fetchone()[0]

            def succeeded() -> int:
                with connection.cursor() as cursor:
                    cursor.execute("SELECT count(*) FROM jobs_job WHERE id > %s AND status = 'succeeded'", [first])
                    return cursor.fetchone()[0]

            marks: dict[str, float] = {}
            start = time.monotonic()
            enqueue_many([Step("scale.io", {"seconds": IO_SLEEP})] * jobs)
            deadline = start + 120 + jobs * IO_SLEEP
            # Until every job is done, the pool has been at MAX, and it is back at MIN (drained).
            while "shrunk" not in marks:
                now, log = time.monotonic(), proc.log(10**7)
                if "grow" not in marks and "autoscale: grow" in log:
                    marks["grow"] = now
                if "ready" not in marks and log.count(" ready.") >= high:
                    marks["ready"] = now
                if "done" not in marks and succeeded() >= jobs:
                    marks["done"] = now
                if "done" in marks and "ready" in marks and log.count("retired worker-") >= high - low:
                    marks["shrunk"] = now
                if now > deadline or not proc.alive():
                    raise RuntimeError(f"autoscaled phase stuck ({sorted(marks)}):\n{proc.log()}")
                time.sleep(0.05)
            with connection.cursor() as cursor:  # every job once: one attempt each, none left
                cursor.execute("SELECT count(*), count(*) FILTER (WHERE attempt <> 1) FROM jobs_job WHERE id > %s", [first])
                total, repeated = cursor.fetchone()
            if (total, repeated) != (jobs, 0):
                raise RuntimeError(f"autoscaled phase: {total} rows for {jobs} jobs, {repeated} run more than once")
        finally:
            proc.stop()
        self.log(f"bench.scale: auto: {marks}")
        return (f"autoscaled {low}..{high} processes (w1), {jobs} I/O jobs (50 ms sleep) in one burst: grow decided "
                f"{marks['grow'] - start:.1f}s after it, {high} workers consuming after {marks['ready'] - start:.1f}s, "
                f"all done after {marks['done'] - start:.1f}s ({jobs / (marks['done'] - start):.1f} jobs/s); back to {low} "
                f"worker {marks['shrunk'] - marks['done']:.1f}s after the last job (--shrink-after {AUTO_SHRINK_AFTER:g}s); "
                "each job run once")


def best(kept: Cell | None, new: Cell) -> Cell:
    return new if kept is None or new.rate > kept.rate else kept


def scale(folder: Path, configs: list[str], cpu_jobs: int, io_jobs: int, rounds: int = 2,
          log: Callable[[str], None] = print, auto_jobs: int = 400) -> list[str]:
    """Build the hosts, measure every configuration, return the table's lines."""
    cores = os.cpu_count() or 1
    results: list[tuple[str, str, Cell, Cell]] = []
    auto_line = ""
    with Topology.up(folder, names=("data", "w1", "w2"), log=log) as net:
        net.start_data()
        net.release(host="w1")
        bench = Bench(net, log)
        bench.setup_django()
        for name in configs:
            if name == "auto":
                auto_line = bench.autoscaled(auto_jobs)
                continue
            config = CONFIGS[name]
            workers = bench.start(config)
            conveyor = [p for p in workers if p.name.startswith("conveyor")]
            bare = [p for p in workers if p.name.startswith("bare")]
            for kind, jobs in (("cpu", cpu_jobs), ("io", io_jobs)):
                scaled = jobs * sum(config.values())
                # Rounds interleaved, the best of each side kept: the machine may be shared, and a
                # neighbour's burst then falls on one round of each side, not on one side.
                ours = theirs = None
                for _ in range(rounds):
                    ours = best(ours, bench.conveyor(conveyor, kind, scaled))
                    theirs = best(theirs, bench.bare(bare, kind, scaled))
                assert ours is not None and theirs is not None
                results.append((kind, name, ours, theirs))
                log(f"bench.scale: {kind} {LABELS[name]}: Conveyor {ours.rate:.1f}/s, bare Celery {theirs.rate:.1f}/s ({scaled} jobs)")
            stop_together(workers, 20.0, log)
    rows = []
    for kind, name, ours, theirs in results:
        processes = sum(CONFIGS[name].values())
        rows.append((
            "CPU (~22 ms)" if kind == "cpu" else "I/O (50 ms sleep)", LABELS[name], f"{ours.rate:.1f}", f"{theirs.rate:.1f}",
            f"{ours.rate / theirs.rate:.2f}x", limit(kind, processes, ours, cores), limit(kind, processes, theirs, cores),
        ))
    header = ("jobs", "worker processes", "Conveyor jobs/s", "bare Celery jobs/s", "Conveyor/bare",
              "Conveyor limited by", "bare Celery limited by")
    load = " ".join(f"{value:.1f}" for value in os.getloadavg())
    lines = [f"scale table: end to end, enqueue to done, best of {rounds} interleaved rounds per side; hosts are network "
            f"namespaces of one machine with {cores} cores (load average at the end {load})",
            *(table(header, rows) if rows else [])]
    # The autoscaled row: its figures (times to grow and shrink) do not fit the columns above.
    return lines + ([auto_line] if auto_line else [])


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-jobs", type=int, default=60, help="CPU jobs per worker process in each run")
    parser.add_argument("--io-jobs", type=int, default=40, help="I/O jobs per worker process in each run")
    parser.add_argument("--configs", default="1,2,4,hosts,auto", help="comma-separated: 1, 2, 4, hosts, auto")
    parser.add_argument("--auto-jobs", type=int, default=400, help="I/O jobs in the autoscaled phase's burst")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds per side; the best is kept")
    parser.add_argument("--output", type=Path, help="also write the table here")
    args = parser.parse_args(argv)
    # SIGTERM (a test's timeout, a CI cancel) unwinds like Ctrl-C: the hosts are torn down on the way out.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in configs if c not in CONFIGS and c != "auto"]
    if unknown:
        print(f"--configs: unknown {', '.join(unknown)} (choose from {', '.join(CONFIGS)}, auto)", file=sys.stderr)
        return 2
    reason = unavailable()
    if reason:
        print(f"bench.scale: cannot run here: {reason}")
        return 3
    folder = Path(tempfile.mkdtemp(prefix="cvy-scale-", dir="/tmp"))
    try:
        lines = scale(folder, configs, args.cpu_jobs, args.io_jobs, max(1, args.rounds), log=lambda line: print(line, flush=True),
                      auto_jobs=args.auto_jobs)
    except BaseException:
        print(f"bench.scale: failed; logs kept in {folder}", flush=True)
        raise
    shutil.rmtree(folder, ignore_errors=True)
    print("\n".join(lines), flush=True)
    if args.output:
        args.output.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
