"""`python -m bench.jobs`: Conveyor's jobs against the Celery a user would otherwise run, in one run.

    python -m bench.jobs                          5,000 jobs, 300 chains, 2,000 events, 100,000 for memory
    python -m bench.jobs --jobs 500 --chains 50 --events 200 --memory-jobs 10000   a quick run
    python -m bench.jobs --events 0 --memory-jobs 0                               throughput and handoff only

Four phases, each with its own workers (started here with the same pool and concurrency, stopped
at the end of the phase), the sides interleaved round by round so that load from elsewhere on the
machine falls on all alike:
1. Throughput. Bare Celery twice: N no-op tasks (a Redis INCR each: how completion is counted)
   published one by one to a `celery worker` of the bare app (bench/bare.py) with Celery's own
   defaults (only the broker URL: what a user would run instead, and the base of every ratio),
   and with Conveyor's Celery settings (prefetch 1, late acks, its transport options). Conveyor:
   N `examples.echo` jobs (a durable row each) enqueued one by one with jobs.enqueue, N django.tasks
   tasks (examples/djtasks `add`) with the framework's `task.enqueue()` on ConveyorBackend, N calls
   of a Celery `@shared_task` (examples/tasks.py `add`, durable by `from conveyor_celery import
   shared_task`) with `.delay()`, then N with jobs.enqueue_many (batches of --batch), run by `manage.py start` in WORKER_MODE=worker; done
   when COUNT(succeeded rows) = N (`--coalesce-ms 0,5`: one more one-by-one row per window, this
   process's publishes coalesced over it, 0 not at all: jobs.engine.coalesce). Procrastinate (bench/procra.py, pinned in
   bench/requirements.txt; skipped with a line when not installed): N no-op tasks deferred one
   by one, then with batch_defer, on the same PostgreSQL, one worker process per pool process.
2. Events (--events N, default 2000; 0 skips it). Conveyor: N `bench.fanout` events emitted one
   by one with subscribers.emit; each has three no-op subscribers (bench.fanout-1/2/3, queue
   default), so three deliveries, each a job; done when all 3N `deliver:bench.fanout-*` rows
   succeeded. Bare Celery (defaults): the equivalent fan-out, three no-op tasks per event.
3. Handoff. Conveyor: --chains chains bench.hop-a (queue default) -> bench.hop-b (queue
   notifications); bare Celery (defaults): a task on queue A publishes a task on queue B. Both
   sides: handoff = step 2's handler's start - step 1's handler's end (time.time() in the
   handlers: Conveyor's in the steps' outputs, bare Celery's in Redis). In two layouts: a worker
   per queue (the specialized queues: each step's message goes to the other worker), then one
   worker for both queues (Conveyor's local handoff: no message). Starts are paced
   (--chain-interval), so this is latency at light load, not under a backlog.
4. Memory (--memory-jobs N, default 100,000; 0 skips it): the RSS of a whole worker (main
   process and pool) after N/10 and after N jobs, Conveyor (enqueue_many) and bare Celery.
Throughput is end to end: from the first publish until the last job is done. Every phase starts
with a short warm-up (worker processes connect, import, fill caches) that is not timed. Beside
every rate, the CPU milliseconds per job each side spent: the publishing client, the workers,
PostgreSQL (when it runs on this machine) and Redis. The last table is issues 14's and 28's targets, each
met or MISSED in this run; bench.cluster measures the HTTP target.

With no DATABASE_URL / REDIS_URL it runs on embedded servers in a fresh folder under /tmp,
stopped and removed at the end. Otherwise it uses the configured ones, and TRUNCATEs the jobs,
events and procrastinate_jobs tables there: point it at a database you can empty.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

from bench.common import (  # noqa: F401 - re-exported: the helpers used to live here
    MANAGE,
    POLL,
    ROOT,
    BenchError,
    Proc,
    Procs,
    Cpu,
    CpuMeter,
    bare_config,
    bare_defaults_config,
    child_env,
    cleanup,
    context,
    embedded_servers,
    load_average,
    percentile,
    queue_length,
    redis_client,
    session,
    setup_django,
    table,
    tail,
    tree_rss,
    truncate_jobs,
    wait_until,
)



# --- Workers ------------------------------------------------------------------------------------


def start_conveyor_workers(procs: Procs, args: argparse.Namespace, wait: bool = True, **queues: str) -> list[Proc]:
    """`manage.py start` in WORKER_MODE=worker, one per name=queue, started side by side (ready
    when it returns, unless `wait` is False: then `ready` waits for them with the others)."""
    started = []
    for name, queue in queues.items():
        argv = [
            sys.executable, MANAGE, "start", "--queues", queue, "--pool", args.pool,
            "--concurrency", str(args.concurrency), "--grace", "10",
        ]
        started.append(procs.spawn(name, argv, child_env(WORKER_MODE="worker", WORKER_ID=f"{name}@bench")))
    return ready(procs, started) if wait else started


def start_bare_workers(procs: Procs, args: argparse.Namespace, defaults: bool = False, wait: bool = True, **queues: str) -> list[Proc]:
    """Bare Celery workers, one per name=queue: the command line `manage.py start` builds, with
    Conveyor's Celery configuration, or with Celery's own defaults (`defaults`)."""
    from bench import bare

    config = bare_defaults_config() if defaults else bare_config()
    started = []
    for name, queue in queues.items():
        argv = [
            sys.executable, "-m", "celery", "-A", "bench.bare", "worker", "--hostname", f"{name}@bench",
            "--queues", queue, "--pool", args.pool, "--concurrency", str(args.concurrency),
            "--loglevel", "INFO", "--without-mingle", "--without-gossip",
        ]
        started.append(procs.spawn(name, argv, child_env(**{bare.CONFIG_ENV: json.dumps(config)})))
    return ready(procs, started) if wait else started


def start_procrastinate_workers(procs: Procs, args: argparse.Namespace, wait: bool = True) -> list[Proc]:
    """Procrastinate workers: one process per pool process of the other sides."""
    from bench import procra

    started = [
        procs.spawn(f"procrastinate-{i + 1}", procra.worker_argv(sys.executable), child_env())
        for i in range(args.concurrency)
    ]
    return ready(procs, started, marker=procra.READY) if wait else started


def ready(procs: Procs, started: list[Proc], marker: str = " ready.") -> list[Proc]:
    """Wait until each of `started` is ready. A phase spawns all its workers first (wait=False),
    then waits here: their start-ups overlap instead of adding up."""
    for proc in started:
        procs.wait_ready(proc, marker=marker)
    return started


def count(sql: str) -> int:
    """One count(*) on this run's database (how every phase sees its work done)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(sql)
        return cursor.fetchone()[0]


def succeeded_jobs() -> int:
    from jobs.models import Job

    return count(f"SELECT count(*) FROM {Job._meta.db_table} WHERE status = 'succeeded'")


# --- Phases -------------------------------------------------------------------------------------


# Celery's log line for a run_job that found nothing to claim (jobs.interfaces.monitoring.skipped:
# `Ignore`, logged "Task examples.echo[<id>] ignored"; a cancel ends so too, none here).
SKIPPED = "] ignored"


@dataclass
class Throughput:
    jobs: int
    seconds: float  # first publish -> last job done
    publish_seconds: float  # first publish -> last publish
    skipped: int = 0  # Conveyor: duplicate messages seen (nothing to claim)
    cpu: Cpu | None = None  # CPU seconds per side over the run

    @property
    def rate(self) -> float:
        return self.jobs / self.seconds

    @property
    def publish_rate(self) -> float:
        return self.jobs / self.publish_seconds


def timeout_for(jobs: int, args: argparse.Namespace) -> float:
    return args.timeout if args.timeout else 120.0 + jobs / 10.0  # a stall, not a slow machine


# The throughput phase's systems, in the order they run each round: key, label.
SYSTEMS = (
    ("defaults", "bare Celery, Celery's defaults"),
    ("bare", "bare Celery, Conveyor's configuration"),
    ("single", "Conveyor, enqueue one by one"),
    ("tasks", "django.tasks on Conveyor, task.enqueue() one by one"),
    ("delay", "Celery's .delay() on Conveyor, one by one"),
    ("bulk", "Conveyor, enqueue_many"),
    ("procrastinate", "Procrastinate, defer one by one"),
    ("procrastinate_bulk", "Procrastinate, batch_defer"),
)


def systems(args: argparse.Namespace) -> list[tuple[str, str]]:
    """SYSTEMS, with a one-by-one row per --coalesce-ms window after the configured one."""
    out = []
    for key, label in SYSTEMS:
        out.append((key, label))
        if key == "single":
            out += [(coalesced_key(ms), f"{label}, coalesced {ms:g} ms" if ms else f"{label}, not coalesced")
                    for ms in args.coalesce_ms]
    return out


#: Seconds a phase's workers get to drain when it ends: none. What the phase measures is over
#: (every job done), and an idle worker's warm shutdown took 2-4 s a phase (a third of a smoke
#: run): `Procs.stop` kills each tree at once (as bench.history's end does, with 3 s).
PHASE_END_GRACE = 0.0


def coalesced_key(ms: float) -> str:
    return f"single@{ms:g}"


def throughput(procs: Procs, args: argparse.Namespace) -> dict[str, list[Throughput]]:
    """Bare Celery (twice), Conveyor and Procrastinate side by side, runs interleaved round by round.

    Every worker stays up for the whole phase (an idle worker costs next to nothing), so a
    neighbour's load on the machine falls on every side alike rather than on one phase.
    """
    from django.db import connection

    from bench import bare, procra
    from jobs import Step, enqueue, enqueue_many

    client = redis_client()
    started = time.perf_counter()
    defaults_worker, bare_worker, worker = spawned = (
        start_bare_workers(procs, args, defaults=True, wait=False, **{"bare-defaults": bare.QUEUE_DEFAULTS})
        + start_bare_workers(procs, args, wait=False, **{"bare-worker": bare.QUEUE})
        + start_conveyor_workers(procs, args, wait=False, **{"conveyor-worker": "default"})
    )
    procrastinate_workers: list[Proc] = []
    if args.procrastinate:
        procrastinate_workers = start_procrastinate_workers(procs, args, wait=False)
    ready(procs, spawned)
    if args.procrastinate:
        ready(procs, procrastinate_workers, marker=procra.READY)
        procra.app.open()
    print(f"bench.jobs:   workers ready in {time.perf_counter() - started:.1f}s", flush=True)

    def bare_run(n: int, task: Any, queue: str, workers: list[Proc]) -> Throughput:
        client.set(bare.DONE_KEY, 0)
        meter = CpuMeter(workers)
        meter.start()
        start = time.perf_counter()
        for _ in range(n):
            task.apply_async(queue=queue, routing_key=queue)
        published = time.perf_counter()
        meter.published()
        done = wait_until(lambda: int(client.get(bare.DONE_KEY) or 0) >= n, timeout_for(n, args), f"{n} bare tasks", workers)
        return Throughput(n, done - start, published - start, cpu=meter.stop())

    def one_by_one(n: int) -> None:
        for i in range(n):
            enqueue("examples.echo", {"i": i})

    def task_by_task(n: int) -> None:
        # The framework's API end to end: validation, the JSON check, the row, task_enqueued.
        from examples.djtasks.tasks import add

        for i in range(n):
            add.enqueue(i, 1)

    def delay_by_delay(n: int) -> None:
        # A `@shared_task` as Celery's docs write it, made durable by `from conveyor_celery import
        # shared_task` (examples/tasks.py): `.delay()` writes its row through the adapter.
        from examples.tasks import add

        for i in range(n):
            add.delay(i, 1)

    def in_bulk(n: int) -> None:
        for first in range(0, n, args.batch):
            enqueue_many([Step("examples.echo", {"i": i}) for i in range(first, min(n, first + args.batch))])

    def conveyor_run(n: int, enqueue_all: Callable[[int], None]) -> Throughput:
        truncate_jobs()
        skipped_before = worker.log().count(SKIPPED)
        meter = CpuMeter([worker])
        meter.start()
        start = time.perf_counter()
        enqueue_all(n)
        published = time.perf_counter()
        meter.published()
        done = wait_until(
            lambda: succeeded_jobs() >= n,
            timeout_for(n, args), f"{n} succeeded rows", [worker],
        )
        cpu = meter.stop()
        # Every row is done, but duplicate messages (the relay's) may still wait in the queue:
        # let the worker drain them, untimed, so that they neither slow the next run down nor
        # are left out of the count of messages that found nothing to claim.
        wait_until(lambda: queue_length("default") == 0, timeout_for(n, args), "the queue to drain", [worker])
        time.sleep(0.5)  # the last prefetched messages
        skipped = worker.log().count(SKIPPED) - skipped_before
        return Throughput(n, done - start, published - start, skipped, cpu)

    def procrastinate_run(n: int, bulk: bool) -> Throughput:
        with connection.cursor() as cursor:
            cursor.execute("TRUNCATE procrastinate_jobs CASCADE")
        meter = CpuMeter(procrastinate_workers)
        meter.start()
        start = time.perf_counter()
        if bulk:
            for first in range(0, n, args.batch):
                procra.noop.batch_defer(*({"i": i} for i in range(first, min(n, first + args.batch))))
        else:
            for i in range(n):
                procra.noop.defer(i=i)
        published = time.perf_counter()
        meter.published()
        done = wait_until(
            lambda: count("SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'") >= n,
            timeout_for(n, args), f"{n} succeeded Procrastinate jobs", procrastinate_workers,
        )
        return Throughput(n, done - start, published - start, cpu=meter.stop())

    def coalesced(ms: float) -> Callable[[int], None]:
        """One by one with this process's publishes coalesced over `ms` (jobs.engine.coalesce)."""
        from django.conf import settings

        def enqueue_all(n: int) -> None:
            configured = settings.CONVEYOR.get("PUBLISH_COALESCE_MS", 0.0)
            settings.CONVEYOR["PUBLISH_COALESCE_MS"] = ms
            try:
                one_by_one(n)
            finally:
                settings.CONVEYOR["PUBLISH_COALESCE_MS"] = configured

        return enqueue_all

    runs: dict[str, Callable[[int], Throughput]] = {
        "defaults": lambda n: bare_run(n, bare.noop_defaults, bare.QUEUE_DEFAULTS, [defaults_worker]),
        "bare": lambda n: bare_run(n, bare.noop, bare.QUEUE, [bare_worker]),
        "single": lambda n: conveyor_run(n, one_by_one),
        **{coalesced_key(ms): (lambda n, ms=ms: conveyor_run(n, coalesced(ms))) for ms in args.coalesce_ms},
        "tasks": lambda n: conveyor_run(n, task_by_task),
        "delay": lambda n: conveyor_run(n, delay_by_delay),
        "bulk": lambda n: conveyor_run(n, in_bulk),
    }
    if args.procrastinate:
        runs["procrastinate"] = lambda n: procrastinate_run(n, bulk=False)
        runs["procrastinate_bulk"] = lambda n: procrastinate_run(n, bulk=True)
    try:
        for run in runs.values():
            run(args.warmup)
        results: dict[str, list[Throughput]] = {key: [] for key in runs}
        for round_ in range(args.rounds):
            if args.rounds > 1:
                print(f"bench.jobs:   round {round_ + 1}/{args.rounds}", flush=True)
            for key, label in systems(args):
                if key not in runs:
                    continue
                result = runs[key](args.jobs)
                results[key].append(result)
                print(f"bench.jobs:   {label}: {result.jobs:,} in {result.seconds:.2f}s, {result.rate:,.0f} jobs/s", flush=True)
        truncate_jobs()
        return results
    finally:
        if args.procrastinate:
            procra.app.close()
        procs.stop(defaults_worker, bare_worker, worker, *procrastinate_workers, grace=PHASE_END_GRACE)


FANOUT_EVENT = "bench.fanout"  # three no-op subscribers: examples/subscribers.py


def truncate_events() -> None:
    """Empty the event log and the jobs tables (ids go on, as in truncate_jobs)."""
    from django.db import connection

    from jobs.models import Chain, Job
    from subscribers.models import Delivery, Event

    tables = ", ".join(model._meta.db_table for model in (Delivery, Event, Job, Chain))
    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {tables} CASCADE")


def events(procs: Procs, args: argparse.Namespace) -> dict[str, Any]:
    """N events emitted one by one, each delivered to three subscribers (three jobs), against
    bare Celery publishing three no-op tasks per event; one worker each, runs interleaved."""
    from django.db import connection

    from bench import bare
    from jobs.models import Job
    from subscribers import emit
    from subscribers.models import Delivery
    from subscribers.registry import matching

    subs = matching(FANOUT_EVENT)
    if not subs:
        raise BenchError(f"no subscriber of {FANOUT_EVENT!r} (examples/subscribers.py declares three)")
    fanout = len(subs)
    types = [sub.job_type for sub in subs]
    queues = sorted({sub.queue for sub in subs})
    client = redis_client()
    started = time.perf_counter()
    bare_worker, worker = ready(procs, (
        start_bare_workers(procs, args, defaults=True, wait=False, **{"bare-events": bare.QUEUE_DEFAULTS})
        + start_conveyor_workers(procs, args, wait=False, **{"conveyor-events": ",".join(queues)})
    ))
    print(f"bench.jobs:   workers ready in {time.perf_counter() - started:.1f}s", flush=True)

    def bare_run(n: int) -> Throughput:
        client.set(bare.DONE_KEY, 0)
        meter = CpuMeter([bare_worker])
        meter.start()
        start = time.perf_counter()
        for _ in range(n):
            for _ in range(fanout):
                bare.noop_defaults.apply_async(queue=bare.QUEUE_DEFAULTS, routing_key=bare.QUEUE_DEFAULTS)
        published = time.perf_counter()
        meter.published()
        done = wait_until(
            lambda: int(client.get(bare.DONE_KEY) or 0) >= n * fanout, timeout_for(n * fanout, args),
            f"{n * fanout} bare tasks ({n} events)", [bare_worker],
        )
        return Throughput(n, done - start, published - start, cpu=meter.stop())

    def delivered() -> int:
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT count(*) FROM {Job._meta.db_table} WHERE status = 'succeeded' AND type = ANY(%s)", [types]
            )
            return cursor.fetchone()[0]

    def fully_delivered() -> int:
        """Events whose every delivery succeeded (checked once a run is done)."""
        with connection.cursor() as cursor:
            cursor.execute(
                f"""SELECT count(*) FROM (
                      SELECT d.event_id FROM {Delivery._meta.db_table} d JOIN {Job._meta.db_table} j ON j.id = d.job_id
                       WHERE j.status = 'succeeded' GROUP BY d.event_id HAVING count(*) = %s) full_events""",
                [fanout],
            )
            return cursor.fetchone()[0]

    def conveyor_run(n: int) -> Throughput:
        truncate_events()
        skipped_before = worker.log().count(SKIPPED)
        meter = CpuMeter([worker])
        meter.start()
        start = time.perf_counter()
        for i in range(n):
            emit(FANOUT_EVENT, {"i": i})
        published = time.perf_counter()
        meter.published()
        done = wait_until(
            lambda: delivered() >= n * fanout, timeout_for(n * fanout, args), f"{n * fanout} succeeded deliveries ({n} events)", [worker]
        )
        cpu = meter.stop()
        if fully_delivered() != n:
            raise BenchError(f"{n * fanout} deliveries succeeded but only {fully_delivered()} of {n} events have all {fanout}")
        # As in the throughput phase: drain duplicate messages, untimed, and count them.
        wait_until(lambda: sum(map(queue_length, queues)) == 0, timeout_for(n * fanout, args), "the queue to drain", [worker])
        time.sleep(0.5)
        skipped = worker.log().count(SKIPPED) - skipped_before
        return Throughput(n, done - start, published - start, skipped, cpu)

    try:
        warmup = max(10, min(100, args.events // 20))
        bare_run(warmup)
        conveyor_run(warmup)
        results: dict[str, Any] = {"fanout": fanout, "bare": [], "conveyor": []}
        for round_ in range(args.rounds):
            if args.rounds > 1:
                print(f"bench.jobs:   round {round_ + 1}/{args.rounds}", flush=True)
            for key, label, run in (
                ("bare", f"bare Celery, {fanout} tasks per event", bare_run),
                ("conveyor", "Conveyor, emit one by one", conveyor_run),
            ):
                result = run(args.events)
                results[key].append(result)
                print(
                    f"bench.jobs:   {label}: {result.jobs:,} events in {result.seconds:.2f}s, {result.rate:,.0f} events/s, "
                    f"{result.rate * fanout:,.0f} deliveries/s", flush=True,
                )
        truncate_events()
        return results
    finally:
        procs.stop(bare_worker, worker, grace=PHASE_END_GRACE)


def paced(n: int, interval: float, start_one: Callable[[int], None]) -> None:
    """Start n items at a steady rate (one every `interval` seconds, no drift)."""
    begin = time.perf_counter()
    for i in range(n):
        delay = begin + i * interval - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        start_one(i)


#: The handoff phase's layouts: the key suffix of their results, their name, and the workers of
#: each side (name=queues). Split: a worker per queue, the specialized queues of the architecture
#: (no local handoff: each step's message goes to the other worker). Shared: one worker consumes
#: both queues, as a worker started without --queues does (Conveyor's local handoff: the outcome's
#: transaction claims the next step and the worker runs it with no message; bare Celery's task
#: publishes the next one to the same worker).
HANDOFF_LAYOUTS = (
    ("", "a worker per queue", {"conveyor-default": "default", "conveyor-notifications": "notifications"}, ("bare-a", "bare-b")),
    ("_shared", "one worker for both queues", {"conveyor-both": "default,notifications"}, ("bare-both",)),
)


def handoff(procs: Procs, args: argparse.Namespace) -> dict[str, list[float]]:
    """Two-step hand-offs across two queues in each layout (HANDOFF_LAYOUTS); Conveyor and bare
    Celery interleaved round by round, latencies in ms from step 1's handler's end to step 2's
    handler's start, on the workers' clock, both sides alike."""
    from django.db import connection

    from bench import bare
    from jobs import Step, start_chain
    from jobs.models import Chain, ChainStatus, Job

    client = redis_client()
    bare_queues = {"bare-a": bare.QUEUE_A, "bare-b": bare.QUEUE_B, "bare-both": f"{bare.QUEUE_A},{bare.QUEUE_B}"}

    def conveyor_run(n: int, workers: list[Proc]) -> list[float]:
        truncate_jobs()
        paced(n, args.chain_interval / 1000, lambda i: start_chain([Step("bench.hop-a", {"i": i}), Step("bench.hop-b", {})]))
        wait_until(lambda: Chain.objects.filter(status=ChainStatus.SUCCEEDED).count() >= n, 60.0 + n * 0.2, f"{n} chains", workers)
        table = Job._meta.db_table
        with connection.cursor() as cursor:
            cursor.execute(
                f"""SELECT ((b.output->>'started')::float8 - (a.output->>'ended')::float8) * 1000
                      FROM {table} a JOIN {table} b ON b.chain_id = a.chain_id AND b.chain_index = 1
                     WHERE a.chain_index = 0"""
            )
            return [float(row[0]) for row in cursor.fetchall()]

    def bare_run(n: int, workers: list[Proc]) -> list[float]:
        client.delete(bare.HOPS_DONE_KEY, bare.A_END_KEY, bare.B_START_KEY)
        def start_one(i: int) -> None:
            bare.defaults_app.send_task("bench.hop_a", (i,), queue=bare.QUEUE_A, routing_key=bare.QUEUE_A)

        paced(n, args.chain_interval / 1000, start_one)
        wait_until(lambda: int(client.get(bare.HOPS_DONE_KEY) or 0) >= n, 60.0 + n * 0.2, f"{n} bare hand-offs", workers)
        # B may record its start before A records its end: wait for both hashes to be full.
        wait_until(lambda: client.hlen(bare.A_END_KEY) >= n, 30.0, "bare step 1 end times", workers)
        ends, starts = client.hgetall(bare.A_END_KEY), client.hgetall(bare.B_START_KEY)
        return [(float(starts[key]) - float(ends[key])) * 1000 for key in starts]

    results: dict[str, list[float]] = {}
    for suffix, layout, conveyor_queues, bare_names in HANDOFF_LAYOUTS:
        started = time.perf_counter()
        workers = ready(procs, start_conveyor_workers(procs, args, wait=False, **conveyor_queues) + start_bare_workers(
            procs, args, defaults=True, wait=False, **{name: bare_queues[name] for name in bare_names}
        ))
        conveyor_workers, bare_workers = workers[:len(conveyor_queues)], workers[len(conveyor_queues):]
        print(f"bench.jobs:   {layout}: workers ready in {time.perf_counter() - started:.1f}s", flush=True)
        try:
            warmup = min(20, args.chains)
            conveyor_run(warmup, conveyor_workers)
            bare_run(warmup, bare_workers)
            results["conveyor" + suffix], results["bare" + suffix] = [], []
            for _ in range(args.rounds):
                for key, label, run, side in (
                    ("conveyor", "Conveyor chains", conveyor_run, conveyor_workers),
                    ("bare", "bare Celery task -> task", bare_run, bare_workers),
                ):
                    started = time.perf_counter()
                    latencies = run(args.chains, side)
                    results[key + suffix] += latencies
                    print(
                        f"bench.jobs:   {label}, {layout}: {len(latencies)} in {time.perf_counter() - started:.1f}s, "
                        f"p50 {percentile(latencies, 0.5):.2f} ms", flush=True,
                    )
            if not suffix:
                results["wait"] = wait_lags(min(args.chains, WAITS))
                waits = results["wait"]
                print(f"bench.jobs:   jobs.wait: {len(waits)} waits, p50 {percentile(waits, 0.5):.2f} ms after the end", flush=True)
            truncate_jobs()
        finally:
            procs.stop(*workers, grace=PHASE_END_GRACE)
    return results


#: Waits measured by the handoff phase (each on a job sleeping SLEPT seconds: one at a time).
WAITS = 20
SLEPT = 0.05


def wait_lags(n: int) -> list[float]:
    """ms from a job's end (its row's finished_at, the ending transaction's now()) to the moment
    `jobs.wait`, blocked on it since before it ended, returned it: both on PostgreSQL's clock. The
    figure tests/acceptance/test_wait_live.py no longer asserts (it proves the mechanism)."""
    from django.db import connection

    import jobs
    from jobs import enqueue

    lags = []
    for _ in range(n):
        job = enqueue("examples.sleep", {"seconds": SLEPT})
        jobs.wait(job, 30)
        with connection.cursor() as cursor:
            cursor.execute("SELECT EXTRACT(EPOCH FROM clock_timestamp() - finished_at) * 1000 FROM jobs_job WHERE id = %s", [job.pk])
            lags.append(float(cursor.fetchone()[0]))
    return lags


def memory(procs: Procs, args: argparse.Namespace) -> dict[str, Any]:
    """Worker memory over a long run: RSS of the whole worker (main process and pool) after a
    tenth of --memory-jobs and after all of them, Conveyor (enqueue_many) and bare Celery with
    its defaults, each on a worker of its own; Redis' key count beside Conveyor's."""

    from bench import bare
    from jobs import Step, enqueue_many

    client = redis_client()
    bare_worker, worker = ready(procs, (
        start_bare_workers(procs, args, defaults=True, wait=False, **{"bare-memory": bare.QUEUE_DEFAULTS})
        + start_conveyor_workers(procs, args, wait=False, **{"conveyor-memory": "default"})
    ))
    total = args.memory_jobs
    checkpoints = sorted({max(1, total // 10), total})
    chunk = max(1, min(10_000, total // 10))

    def conveyor_upto(done_before: int, n: int) -> None:
        for first in range(done_before, n, chunk):
            last = min(n, first + chunk)
            for start in range(first, last, args.batch):
                enqueue_many([Step("examples.echo", {"i": i}) for i in range(start, min(last, start + args.batch))])
            wait_until(lambda: succeeded_jobs() >= last, timeout_for(chunk, args), f"{last} succeeded rows", [worker])

    def bare_upto(done_before: int, n: int) -> None:
        for first in range(done_before, n, chunk):
            last = min(n, first + chunk)
            for _ in range(first, last):
                bare.noop_defaults.apply_async(queue=bare.QUEUE_DEFAULTS, routing_key=bare.QUEUE_DEFAULTS)
            wait_until(lambda: int(client.get(bare.DONE_KEY) or 0) >= last, timeout_for(chunk, args), f"{last} bare tasks", [bare_worker])

    try:
        truncate_jobs()
        client.set(bare.DONE_KEY, 0)
        results: dict[str, Any] = {"checkpoints": checkpoints, "conveyor": [], "bare": [], "keys": []}
        started = time.perf_counter()
        done = 0
        for point in checkpoints:
            conveyor_upto(done, point)
            bare_upto(done, point)
            time.sleep(0.5)  # the last acks, the metrics' flush
            results["conveyor"].append(tree_rss(worker.process.pid))
            results["bare"].append(tree_rss(bare_worker.process.pid))
            results["keys"].append(client.dbsize())
            done = point
            print(
                f"bench.jobs:   {point:,} jobs each: worker RSS Conveyor {results['conveyor'][-1] / 2**20:.1f} MiB, "
                f"bare Celery {results['bare'][-1] / 2**20:.1f} MiB, Redis keys {results['keys'][-1]}", flush=True,
            )
        results["seconds"] = time.perf_counter() - started
        truncate_jobs()
        return results
    finally:
        procs.stop(bare_worker, worker, grace=PHASE_END_GRACE)


# --- Report -------------------------------------------------------------------------------------


def median_run(runs: list[Throughput]) -> Throughput:
    return sorted(runs, key=lambda run: run.rate)[(len(runs) - 1) // 2]


@dataclass
class Target:
    what: str
    measured: str
    met: bool | None  # None: not measured in this run

    def row(self) -> tuple[str, str, str]:
        return (self.what, self.measured, "-" if self.met is None else ("met" if self.met else "MISSED"))


def targets(args: argparse.Namespace, results: dict[str, Any]) -> list[Target]:
    """Issues 14's and 28's targets, each a ratio or a figure measured in this run."""
    tp = {key: median_run(runs) for key, runs in results["throughput"].items()}
    out: list[Target] = []

    def ratio(what: str, key: str, base: str, at_least: float) -> None:
        if key in tp and base in tp:
            value = tp[key].rate / tp[base].rate
            out.append(Target(what, f"{value:.2f}x ({tp[key].rate:,.0f} / {tp[base].rate:,.0f} jobs/s)", value >= at_least))
        else:
            out.append(Target(what, "not run", None))

    ratio("durable jobs one by one >= 1.0x bare Celery defaults", "single", "defaults", 1.0)
    # The same target on the two adapters' one-by-one paths (what `@task.enqueue()` and `.delay()` users take).
    ratio("django.tasks task.enqueue() one by one >= 1.0x bare Celery defaults", "tasks", "defaults", 1.0)
    ratio("Celery's .delay() on Conveyor one by one >= 1.0x bare Celery defaults", "delay", "defaults", 1.0)
    ratio(f"durable jobs enqueue_many x{args.batch} >= 2x bare Celery defaults", "bulk", "defaults", 2.0)
    if "events" in results:
        ev = results["events"]
        fanout, bare_ev, conveyor_ev = ev["fanout"], median_run(ev["bare"]), median_run(ev["conveyor"])
        value = conveyor_ev.rate / bare_ev.rate
        measured = f"{value:.2f}x ({conveyor_ev.rate:,.0f} / {bare_ev.rate:,.0f} events/s)"
        out.append(Target("events end to end >= 1.0x bare Celery's fan-out", measured, value >= 1.0))
        per_sub = conveyor_ev.cpu.client * 1000 / (conveyor_ev.jobs * fanout)
        out.append(Target("emit's CPU per subscriber < 1 ms", f"{per_sub:.2f} ms", per_sub < 1.0))
    else:
        out.append(Target("events end to end >= 1.0x bare Celery's fan-out", "not run (--events 0)", None))
    lat_c = results["handoff"]["conveyor"]
    p50, p99 = percentile(lat_c, 0.5), percentile(lat_c, 0.99)
    out.append(Target("chain handoff p50 <= 3 ms (a worker per queue)", f"{p50:.2f} ms", p50 <= 3.0))
    out.append(Target("chain handoff p99 <= 10 ms (a worker per queue)", f"{p99:.2f} ms", p99 <= 10.0))
    for suffix, layout, _, _ in HANDOFF_LAYOUTS:
        p50, bare_p50 = percentile(results["handoff"]["conveyor" + suffix], 0.5), percentile(results["handoff"]["bare" + suffix], 0.5)
        measured = f"{p50 / bare_p50:.2f}x ({p50:.2f} / {bare_p50:.2f} ms)"
        out.append(Target(f"chain handoff p50 at or below bare Celery's task -> task p50 ({layout})", measured, p50 <= bare_p50))
    ratio("one by one >= 2x Procrastinate (defer)", "single", "procrastinate", 2.0)
    ratio("in bulk >= 2x Procrastinate (batch_defer)", "bulk", "procrastinate_bulk", 2.0)
    if "memory" in results:
        mem = results["memory"]
        first, last = mem["checkpoints"][0], mem["checkpoints"][-1]
        value = mem["conveyor"][-1] / mem["conveyor"][0]
        out.append(Target(
            f"worker RSS after {last:,} jobs within 20% of after {first:,}",
            f"{value:.2f}x ({mem['conveyor'][0] / 2**20:.1f} -> {mem['conveyor'][-1] / 2**20:.1f} MiB; "
            f"bare {mem['bare'][-1] / mem['bare'][0]:.2f}x)",
            value <= 1.2,
        ))
    else:
        out.append(Target("worker RSS flat over a long run", "not run (--memory-jobs 0)", None))
    out.append(Target("HTTP p99 under saturated workers <= 1.2x idle", "see python -m bench.cluster", None))
    return out


def report(args: argparse.Namespace, results: dict[str, Any], elapsed: float, context: str) -> str:
    tp = {key: median_run(runs) for key, runs in results["throughput"].items()}
    base = tp["defaults"]
    rows: list[tuple[str, ...]] = []
    for key, label in systems(args):
        if key not in tp:
            rows.append((label, "-", "-", "-", "not run (pip install -r bench/requirements.txt)", ""))
            continue
        run = tp[key]
        rate, publish, ratio = f"{run.rate:,.0f}", f"{run.publish_rate:,.0f}", f"{run.rate / base.rate:.2f}x"
        rows.append((label, rate, publish, ratio, run.cpu.per_item_ms(run.jobs), ""))
    if "events" in results:
        ev = results["events"]
        fanout = ev["fanout"]
        bare_ev, conveyor_ev = median_run(ev["bare"]), median_run(ev["conveyor"])
        for label, run in (
            (f"events: bare Celery defaults, {fanout} tasks per event", bare_ev),
            (f"events: Conveyor emit, {fanout} subscribers", conveyor_ev),
        ):
            rows.append((label + " (events/s)", f"{run.rate:,.0f}", f"{run.publish_rate:,.0f}", f"{run.rate / bare_ev.rate:.2f}x",
                         run.cpu.per_item_ms(run.jobs * fanout), "per delivery"))
    header = ("end to end", "jobs/s", "publish/s", "x base", "CPU ms per job: client / workers / PostgreSQL / Redis", "")
    lat_rows = [
        (f"{layout}: handoff {name} (ms)", f"{b:.2f}", f"{c:.2f}", f"{c / b:.2f}x", "")
        for suffix, layout, _, _ in HANDOFF_LAYOUTS
        for name, b, c in (
            (name, percentile(results["handoff"]["bare" + suffix], q), percentile(results["handoff"]["conveyor" + suffix], q))
            for name, q in (("p50", 0.5), ("p99", 0.99), ("max", 1.0))
        )
    ]

    def runs(key: str, phase: str = "throughput") -> str:
        return ", ".join(f"{run.rate:,.0f}" for run in results[phase].get(key, []))

    skipped = sum(run.skipped for key in ("single", "bulk") for run in results["throughput"][key])
    rounds = f", median of {args.rounds} rounds" if args.rounds > 1 else ""
    out = [
        f"bench.jobs: {args.jobs:,} jobs per run{rounds}; {args.pool} pool x{args.concurrency} per worker on every side "
        f"(Procrastinate: {args.concurrency} worker processes); {context}",
        "x base = jobs/s / bare Celery with Celery's defaults (events: / bare Celery's fan-out, defaults)",
        "",
        *table(header, rows),
        "",
        *table(("", "bare Celery", "Conveyor", "Conveyor/bare", ""), lat_rows),
        "",
        *table(("target (issues 14, 28)", "measured", ""), [t.row() for t in targets(args, results)]),
        "",
        "end to end = first publish until the last job is done; publish = first until last publish.",
        "CPU = CPU time of each side during the run (client: the publishing process, publish only; workers: every "
        "process of the side's workers; PostgreSQL: the server's processes, '-' when not on this machine; Redis: its INFO)",
        "Conveyor: examples.echo rows; bare Celery: a no-op task + INCR (defaults: only the broker URL; Conveyor's "
        "configuration: prefetch 1, late acks, its transport options); Procrastinate: a no-op task on the same PostgreSQL",
        f"runs (jobs/s): defaults {runs('defaults')}; Conveyor's configuration {runs('bare')}; one by one {runs('single')}; "
        f"django.tasks {runs('tasks')}; .delay() {runs('delay')}; enqueue_many {runs('bulk')}; "
        f"Procrastinate {runs('procrastinate') or '-'}, batch {runs('procrastinate_bulk') or '-'}; "
        f"duplicate messages seen by Conveyor (nothing to claim): {skipped}",
        f"handoff: {args.chains:,} chains per round and layout (bench.hop-a on default -> bench.hop-b on notifications, one started "
        f"every {args.chain_interval:g} ms); bare Celery: a task on queue A publishes one on queue B (Celery's defaults); "
        f"from step 1's handler's end to step 2's handler's start, time.time() in the handlers on both sides; "
        f"samples bare {len(results['handoff']['bare'])}, Conveyor {len(results['handoff']['conveyor'])} per layout; "
        f"one worker for both queues: Conveyor's local handoff (the outcome's transaction claims the next step: no message)",
    ]
    if results["handoff"].get("wait"):
        waits = results["handoff"]["wait"]
        out.append(
            f"wait: jobs.wait answered p50 {percentile(waits, 0.5):.2f} ms, max {max(waits):.2f} ms after the job's end "
            f"({len(waits)} waits on a {SLEPT:g} s examples.sleep, one at a time; PostgreSQL's clock: finished_at to clock_timestamp())"
        )
    if "events" in results:
        fanout = results["events"]["fanout"]
        out.append(
            f"events: {args.events:,} per run; Conveyor: {FANOUT_EVENT} emitted (an event row, {fanout} delivery rows and "
            f"{fanout} jobs each), done when all {fanout} no-op deliveries of every event succeeded; runs bare {runs('bare', 'events')}, "
            f"Conveyor {runs('conveyor', 'events')} events/s"
        )
    if "memory" in results:
        mem = results["memory"]
        points = ", ".join(
            f"{point:,}: Conveyor {c / 2**20:.1f} MiB, bare {b / 2**20:.1f} MiB, Redis keys {k}"
            for point, c, b, k in zip(mem["checkpoints"], mem["conveyor"], mem["bare"], mem["keys"])
        )
        out.append(f"memory: worker RSS (main process + pool) after {points} ({mem['seconds']:.0f}s)")
    out.append(f"total run {elapsed:.1f}s; load average at start {results['load'][0]}, at end {load_average()}")
    return "\n".join(out)


# --- Main ---------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.jobs", description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=5000, help="jobs per throughput phase (default 5000)")
    parser.add_argument("--chains", type=int, default=300, help="two-step chains for the handoff latency (default 300)")
    parser.add_argument("--concurrency", type=int, default=2, help="worker processes, both sides (default 2)")
    parser.add_argument(
        "--pool", default="prefork", choices=("prefork", "threads", "solo"), help="Celery pool, both sides (default prefork)"
    )
    parser.add_argument("--batch", type=int, default=500, help="jobs per enqueue_many call (default 500)")
    parser.add_argument("--chain-interval", type=float, default=50.0, help="ms between chain starts (default 50)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed jobs before each phase (default jobs/20, 20..200)")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved runs of each measurement; the median is shown (default 1)")
    parser.add_argument(
        "--events",
        type=int,
        default=2000,
        help=f"events emitted per run of the events phase, {FANOUT_EVENT} to 3 subscribers (default 2000; 0 skips the phase)",
    )
    parser.add_argument(
        "--memory-jobs", type=int, default=100_000,
        help="jobs of the memory phase: worker RSS after a tenth of them and after all (default 100000; 0 skips it)",
    )
    parser.add_argument(
        "--no-procrastinate", dest="procrastinate", action="store_false",
        help="without the Procrastinate baseline (it also skips itself when bench/requirements.txt is not installed)",
    )
    parser.add_argument("--timeout", type=float, default=None, help="seconds each throughput run may take (default 120 + jobs/10)")
    parser.add_argument(
        "--coalesce-ms", default="", type=lambda raw: [float(ms) for ms in raw.split(",") if ms.strip()],
        help="comma-separated windows (ms, 0: off): a one-by-one row each, the bench process's publishes coalesced over "
             "it (CONVEYOR_PUBLISH_COALESCE_MS), beside the configured one (default none)",
    )
    args = parser.parse_args(argv)
    if any(ms < 0 for ms in args.coalesce_ms):
        parser.error("--coalesce-ms must not be negative")
    for name in ("jobs", "chains", "concurrency", "batch", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.events < 0:
        parser.error("--events must not be negative")
    if args.memory_jobs < 0:
        parser.error("--memory-jobs must not be negative")
    if args.chain_interval < 0:
        parser.error("--chain-interval must not be negative")
    if args.warmup is None:
        args.warmup = max(20, min(200, args.jobs // 20))
    args.warmup = max(1, args.warmup)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    began = time.perf_counter()

    def body(procs: Procs) -> str:
        from bench import bare

        bare.configure(bare_config())
        bare.defaults_app.conf.update(bare_defaults_config())
        redis_client().delete(*bare.KEYS)
        if args.procrastinate:
            from bench import procra

            if procra.available():
                procra.ensure_schema(os.environ["DATABASE_URL"])
            else:
                print("bench.jobs: Procrastinate is not installed (pip install -r bench/requirements.txt): skipped", flush=True)
                args.procrastinate = False
        results: dict[str, Any] = {"load": (load_average(),)}
        machine = context()
        steps = [
            ("throughput", "throughput: bare Celery, Conveyor enqueue, Conveyor enqueue_many", throughput),
            ("handoff", "handoff: Conveyor chains, bare Celery task -> task", handoff),
        ]
        if args.events:
            steps.insert(1, ("events", f"events: bare Celery fan-out, Conveyor emit ({FANOUT_EVENT})", events))
        if args.memory_jobs:
            steps.append(("memory", f"memory: worker RSS over {args.memory_jobs:,} jobs, Conveyor and bare Celery", memory))
        for key, label, phase in steps:
            started = time.perf_counter()
            print(f"bench.jobs: {label} ...", flush=True)
            results[key] = phase(procs, args)
            print(f"bench.jobs:   done in {time.perf_counter() - started:.1f}s", flush=True)
        return report(args, results, time.perf_counter() - began, machine)

    return session("bench.jobs", body)


if __name__ == "__main__":
    sys.exit(main())
