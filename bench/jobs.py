"""`python -m bench.jobs`: Conveyor's jobs against bare Celery on the same Redis, in one run.

    python -m bench.jobs                          5,000 jobs, 300 chains, prefork pool x2
    python -m bench.jobs --jobs 500 --chains 50   a quick run (well under a minute)
    python -m bench.jobs --events 0               without the events phase

Two phases, each with its own workers (started here with the same pool and concurrency, stopped
at the end of the phase), the two sides interleaved round by round so that load from elsewhere
on the machine falls on both alike:
1. Throughput. Bare Celery: N no-op tasks (a Redis INCR each: how completion is counted)
   published one by one to a `celery worker` of the bare app (bench/bare.py) configured with
   Conveyor's own Celery settings. Conveyor: N `examples.echo` jobs (a durable row each) enqueued
   one by one with jobs.enqueue, then N with jobs.enqueue_many (batches of --batch), run by
   `manage.py start` in WORKER_MODE=worker; done when COUNT(succeeded rows) = N.
2. Handoff. Conveyor: --chains chains examples.echo (queue default) -> examples.ping (queue
   notifications), one worker per queue; handoff = step 2 started_at - step 1 finished_at (DB
   timestamps). Bare Celery: a task on queue A publishes a task on queue B, one worker per queue;
   handoff = B's start - A's end (time.time(), stored in Redis). Starts are paced
   (--chain-interval), so this is latency at light load, not under a backlog.
3. Events (--events N, default 2000; 0 skips it), run between 1 and 2. Conveyor: N
   `bench.fanout` events emitted one by one with subscribers.emit; each has three no-op
   subscribers (bench.fanout-1/2/3, queue default), so three deliveries, each a job, run by one
   `manage.py start` worker; done when all 3N `deliver:bench.fanout-*` rows succeeded. Bare
   Celery: the equivalent fan-out, three no-op tasks published per event. Same workers' pool and
   concurrency as phase 1, runs interleaved the same way.
Throughput is end to end: from the first publish until the last job is done. Every phase starts
with a short warm-up (worker processes connect, import, fill caches) that is not timed.

With no DATABASE_URL / REDIS_URL it runs on embedded servers in a fresh folder under /tmp,
stopped and removed at the end. Otherwise it uses the configured ones, and TRUNCATEs the jobs
and events tables there: point it at a database you can empty.
"""
from __future__ import annotations

import argparse
import json
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
    bare_config,
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
    truncate_jobs,
    wait_until,
)

THROUGHPUT_TARGET = 0.5  # Conveyor >= 0.5x bare Celery's jobs/s
HANDOFF_P50_TARGET_MS = 10.0  # chain handoff p50 < 10 ms


# --- Workers ------------------------------------------------------------------------------------


def start_conveyor_workers(procs: Procs, args: argparse.Namespace, **queues: str) -> list[Proc]:
    """`manage.py start` in WORKER_MODE=worker, one per name=queue, started side by side."""
    started = []
    for name, queue in queues.items():
        argv = [
            sys.executable, MANAGE, "start", "--queues", queue, "--pool", args.pool,
            "--concurrency", str(args.concurrency), "--grace", "10",
        ]
        started.append(procs.spawn(name, argv, child_env(WORKER_MODE="worker", WORKER_ID=f"{name}@bench")))
    for proc in started:
        procs.wait_ready(proc)
    return started


def start_bare_workers(procs: Procs, args: argparse.Namespace, **queues: str) -> list[Proc]:
    """Bare Celery workers, one per name=queue: the command line `manage.py start` builds."""
    from bench import bare

    started = []
    for name, queue in queues.items():
        argv = [
            sys.executable, "-m", "celery", "-A", "bench.bare", "worker", "--hostname", f"{name}@bench",
            "--queues", queue, "--pool", args.pool, "--concurrency", str(args.concurrency),
            "--loglevel", "INFO", "--without-mingle", "--without-gossip",
        ]
        started.append(procs.spawn(name, argv, child_env(**{bare.CONFIG_ENV: json.dumps(bare_config())})))
    for proc in started:
        procs.wait_ready(proc)
    return started


# --- Phases -------------------------------------------------------------------------------------


SKIPPED = "s: 'skipped'"  # Celery's log line for a run_job that found nothing to claim


@dataclass
class Throughput:
    jobs: int
    seconds: float  # first publish -> last job done
    publish_seconds: float  # first publish -> last publish
    skipped: int = 0  # Conveyor: duplicate messages seen (nothing to claim)

    @property
    def rate(self) -> float:
        return self.jobs / self.seconds

    @property
    def publish_rate(self) -> float:
        return self.jobs / self.publish_seconds


def timeout_for(jobs: int, args: argparse.Namespace) -> float:
    return args.timeout if args.timeout else 120.0 + jobs / 10.0  # a stall, not a slow machine


def throughput(procs: Procs, args: argparse.Namespace) -> dict[str, list[Throughput]]:
    """Bare Celery and Conveyor side by side: one worker each, runs interleaved round by round.

    Both workers stay up for the whole phase (an idle worker costs next to nothing), so a
    neighbour's load on the machine falls on both sides alike rather than on one phase.
    """
    from django.db import connection

    from bench import bare
    from jobs import Step, enqueue, enqueue_many
    from jobs.models import Job

    client = redis_client()
    started = time.perf_counter()
    bare_worker, worker = (
        start_bare_workers(procs, args, **{"bare-worker": bare.QUEUE})
        + start_conveyor_workers(procs, args, **{"conveyor-worker": "default"})
    )
    print(f"bench.jobs:   workers ready in {time.perf_counter() - started:.1f}s", flush=True)

    def bare_run(n: int) -> Throughput:
        client.set(bare.DONE_KEY, 0)
        start = time.perf_counter()
        for _ in range(n):
            bare.noop.apply_async(queue=bare.QUEUE, routing_key=bare.QUEUE)
        published = time.perf_counter()
        done = wait_until(
            lambda: int(client.get(bare.DONE_KEY) or 0) >= n, timeout_for(n, args), f"{n} bare tasks", [bare_worker]
        )
        return Throughput(n, done - start, published - start)

    def succeeded() -> int:
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT count(*) FROM {Job._meta.db_table} WHERE status = 'succeeded'")
            return cursor.fetchone()[0]

    def one_by_one(n: int) -> None:
        for i in range(n):
            enqueue("examples.echo", {"i": i})

    def in_bulk(n: int) -> None:
        for first in range(0, n, args.batch):
            enqueue_many([Step("examples.echo", {"i": i}) for i in range(first, min(n, first + args.batch))])

    def conveyor_run(n: int, enqueue_all: Callable[[int], None]) -> Throughput:
        truncate_jobs()
        skipped_before = worker.log().count(SKIPPED)
        start = time.perf_counter()
        enqueue_all(n)
        published = time.perf_counter()
        done = wait_until(lambda: succeeded() >= n, timeout_for(n, args), f"{n} succeeded rows", [worker])
        # Every row is done, but duplicate messages (the relay's) may still wait in the queue:
        # let the worker drain them, untimed, so that they neither slow the next run down nor
        # are left out of the count of messages that found nothing to claim.
        wait_until(lambda: queue_length("default") == 0, timeout_for(n, args), "the queue to drain", [worker])
        time.sleep(0.5)  # the last prefetched messages
        skipped = worker.log().count(SKIPPED) - skipped_before
        return Throughput(n, done - start, published - start, skipped)

    try:
        bare_run(args.warmup)
        conveyor_run(args.warmup, one_by_one)
        conveyor_run(args.warmup, in_bulk)
        results: dict[str, list[Throughput]] = {"bare": [], "single": [], "bulk": []}
        for round_ in range(args.rounds):
            if args.rounds > 1:
                print(f"bench.jobs:   round {round_ + 1}/{args.rounds}", flush=True)
            for key, label, run in (
                ("bare", "bare Celery", lambda: bare_run(args.jobs)),
                ("single", "Conveyor, enqueue one by one", lambda: conveyor_run(args.jobs, one_by_one)),
                ("bulk", "Conveyor, enqueue_many", lambda: conveyor_run(args.jobs, in_bulk)),
            ):
                result = run()
                results[key].append(result)
                print(f"bench.jobs:   {label}: {result.jobs:,} in {result.seconds:.2f}s, {result.rate:,.0f} jobs/s", flush=True)
        truncate_jobs()
        return results
    finally:
        procs.stop(bare_worker, worker)


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
    bare_worker, worker = (
        start_bare_workers(procs, args, **{"bare-events": bare.QUEUE})
        + start_conveyor_workers(procs, args, **{"conveyor-events": ",".join(queues)})
    )
    print(f"bench.jobs:   workers ready in {time.perf_counter() - started:.1f}s", flush=True)

    def bare_run(n: int) -> Throughput:
        client.set(bare.DONE_KEY, 0)
        start = time.perf_counter()
        for _ in range(n):
            for _ in range(fanout):
                bare.noop.apply_async(queue=bare.QUEUE, routing_key=bare.QUEUE)
        published = time.perf_counter()
        done = wait_until(
            lambda: int(client.get(bare.DONE_KEY) or 0) >= n * fanout, timeout_for(n * fanout, args),
            f"{n * fanout} bare tasks ({n} events)", [bare_worker],
        )
        return Throughput(n, done - start, published - start)

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
        start = time.perf_counter()
        for i in range(n):
            emit(FANOUT_EVENT, {"i": i})
        published = time.perf_counter()
        done = wait_until(
            lambda: delivered() >= n * fanout, timeout_for(n * fanout, args), f"{n * fanout} succeeded deliveries ({n} events)", [worker]
        )
        if fully_delivered() != n:
            raise BenchError(f"{n * fanout} deliveries succeeded but only {fully_delivered()} of {n} events have all {fanout}")
        # As in the throughput phase: drain duplicate messages, untimed, and count them.
        wait_until(lambda: sum(map(queue_length, queues)) == 0, timeout_for(n * fanout, args), "the queue to drain", [worker])
        time.sleep(0.5)
        skipped = worker.log().count(SKIPPED) - skipped_before
        return Throughput(n, done - start, published - start, skipped)

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
        procs.stop(bare_worker, worker)


def paced(n: int, interval: float, start_one: Callable[[int], None]) -> None:
    """Start n items at a steady rate (one every `interval` seconds, no drift)."""
    begin = time.perf_counter()
    for i in range(n):
        delay = begin + i * interval - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        start_one(i)


def handoff(procs: Procs, args: argparse.Namespace) -> dict[str, list[float]]:
    """Two-step hand-offs across two queues, one worker per queue; Conveyor and bare Celery
    interleaved round by round (all four workers up), latencies in ms."""
    from django.db import connection

    from bench import bare
    from jobs import Step, start_chain
    from jobs.models import Chain, ChainStatus, Job

    client = redis_client()
    started = time.perf_counter()
    workers = start_conveyor_workers(
        procs, args, **{"conveyor-default": "default", "conveyor-notifications": "notifications"}
    ) + start_bare_workers(procs, args, **{"bare-a": bare.QUEUE_A, "bare-b": bare.QUEUE_B})
    conveyor_workers, bare_workers = workers[:2], workers[2:]
    print(f"bench.jobs:   workers ready in {time.perf_counter() - started:.1f}s", flush=True)

    def conveyor_run(n: int) -> list[float]:
        truncate_jobs()
        paced(n, args.chain_interval / 1000, lambda i: start_chain([Step("examples.echo", {"i": i}), Step("examples.ping", {})]))
        wait_until(
            lambda: Chain.objects.filter(status=ChainStatus.SUCCEEDED).count() >= n,
            60.0 + n * 0.2, f"{n} chains", conveyor_workers,
        )
        table = Job._meta.db_table
        with connection.cursor() as cursor:
            cursor.execute(
                f"""SELECT EXTRACT(EPOCH FROM (b.started_at - a.finished_at)) * 1000
                      FROM {table} a JOIN {table} b ON b.chain_id = a.chain_id AND b.chain_index = 1
                     WHERE a.chain_index = 0"""
            )
            return [float(row[0]) for row in cursor.fetchall()]

    def bare_run(n: int) -> list[float]:
        client.delete(bare.HOPS_DONE_KEY, bare.A_END_KEY, bare.B_START_KEY)
        paced(n, args.chain_interval / 1000, lambda i: bare.hop_a.apply_async((i,), queue=bare.QUEUE_A, routing_key=bare.QUEUE_A))
        wait_until(
            lambda: int(client.get(bare.HOPS_DONE_KEY) or 0) >= n, 60.0 + n * 0.2, f"{n} bare hand-offs", bare_workers
        )
        # B may record its start before A records its end: wait for both hashes to be full.
        wait_until(lambda: client.hlen(bare.A_END_KEY) >= n, 30.0, "bare step 1 end times", bare_workers)
        ends, starts = client.hgetall(bare.A_END_KEY), client.hgetall(bare.B_START_KEY)
        return [(float(starts[key]) - float(ends[key])) * 1000 for key in starts]

    try:
        warmup = min(20, args.chains)
        conveyor_run(warmup)
        bare_run(warmup)
        results: dict[str, list[float]] = {"conveyor": [], "bare": []}
        for _ in range(args.rounds):
            for key, label, run in (("conveyor", "Conveyor chains", conveyor_run), ("bare", "bare Celery task -> task", bare_run)):
                started = time.perf_counter()
                latencies = run(args.chains)
                results[key] += latencies
                print(
                    f"bench.jobs:   {label}: {len(latencies)} in {time.perf_counter() - started:.1f}s, "
                    f"p50 {percentile(latencies, 0.5):.2f} ms", flush=True,
                )
        truncate_jobs()
        return results
    finally:
        procs.stop(*workers)


# --- Report -------------------------------------------------------------------------------------


# --- Report -------------------------------------------------------------------------------------


def median_run(runs: list[Throughput]) -> Throughput:
    return sorted(runs, key=lambda run: run.rate)[(len(runs) - 1) // 2]


def report(args: argparse.Namespace, results: dict[str, Any], elapsed: float, context: str) -> str:
    bare_tp = median_run(results["throughput"]["bare"])
    single = median_run(results["throughput"]["single"])
    bulk = median_run(results["throughput"]["bulk"])
    conveyor_lat: list[float] = results["handoff"]["conveyor"]
    bare_lat: list[float] = results["handoff"]["bare"]

    rows: list[tuple[str, str, str, str, str, str]] = []

    def throughput_row(label: str, bare_rate: float, rate: float, target: bool) -> None:
        ratio = rate / bare_rate
        verdict = ("meets" if ratio >= THROUGHPUT_TARGET else "MISSES") if target else ""
        rows.append((label, f"{bare_rate:,.0f}", f"{rate:,.0f}", f"{ratio:.2f}x",
                     f">= {THROUGHPUT_TARGET}x" if target else "", verdict))

    throughput_row("end to end, enqueue one by one (jobs/s)", bare_tp.rate, single.rate, True)
    throughput_row(f"end to end, enqueue_many x{args.batch} (jobs/s)", bare_tp.rate, bulk.rate, True)
    throughput_row("  publish only, one by one (jobs/s)", bare_tp.publish_rate, single.publish_rate, False)
    throughput_row(f"  publish only, enqueue_many x{args.batch} (jobs/s)", bare_tp.publish_rate, bulk.publish_rate, False)
    if "events" in results:
        fanout = results["events"]["fanout"]
        bare_ev, conveyor_ev = median_run(results["events"]["bare"]), median_run(results["events"]["conveyor"])
        throughput_row("events end to end, emit one by one (events/s)", bare_ev.rate, conveyor_ev.rate, False)
        throughput_row(f"  deliveries end to end, {fanout} per event (jobs/s)", bare_ev.rate * fanout, conveyor_ev.rate * fanout, False)
        throughput_row("  publish only, emit one by one (events/s)", bare_ev.publish_rate, conveyor_ev.publish_rate, False)
    for q, label in ((0.5, "p50"), (0.99, "p99")):
        b, c = percentile(bare_lat, q), percentile(conveyor_lat, q)
        target = label == "p50"
        verdict = ("meets" if c < HANDOFF_P50_TARGET_MS else "MISSES") if target else ""
        rows.append((f"chain handoff {label} (ms)", f"{b:.2f}", f"{c:.2f}", f"{c / b:.1f}x" if b > 0 else "-",
                     f"< {HANDOFF_P50_TARGET_MS:g} ms" if target else "", verdict))
    rows.append(("chain handoff max (ms)", f"{max(bare_lat):.2f}", f"{max(conveyor_lat):.2f}",
                 f"{max(conveyor_lat) / max(bare_lat):.1f}x", "", ""))

    header = ("", "bare Celery", "Conveyor", "Conveyor/bare", "target", "")

    def runs(key: str, phase: str = "throughput") -> str:
        return ", ".join(f"{run.seconds:.2f}s" for run in results[phase][key])

    skipped = sum(run.skipped for key in ("single", "bulk") for run in results["throughput"][key])
    rounds = f", median of {args.rounds} rounds" if args.rounds > 1 else ""
    out = [
        f"bench.jobs: {args.jobs:,} jobs per run (Conveyor: examples.echo rows; bare: a no-op task + INCR){rounds}; "
        f"{args.chains:,} chains per round (examples.echo -> examples.ping, one started every {args.chain_interval:g} ms)",
        f"            {args.pool} pool x{args.concurrency} per worker, both sides; {context}",
        "",
        *table(header, rows),
        "",
        "end to end = first publish until the last job is done; publish only = first until last publish.",
        f"run times: bare {runs('bare')}; Conveyor one by one {runs('single')}, enqueue_many {runs('bulk')}; "
        f"duplicate messages seen by Conveyor (nothing to claim): {skipped}",
        f"handoff samples: bare {len(bare_lat)}, Conveyor {len(conveyor_lat)}; mean bare {sum(bare_lat) / len(bare_lat):.2f} ms, "
        f"Conveyor {sum(conveyor_lat) / len(conveyor_lat):.2f} ms",
    ]
    if "events" in results:
        fanout = results["events"]["fanout"]
        out.append(
            f"events: {args.events:,} per run; Conveyor: {FANOUT_EVENT} emitted (an event row, {fanout} delivery rows and "
            f"{fanout} jobs each), done when all {fanout} no-op deliveries of every event succeeded; bare: {fanout} no-op tasks per event"
        )
        out.append(
            f"events run times: bare {runs('bare', 'events')}; Conveyor {runs('conveyor', 'events')}; "
            f"duplicate messages seen by Conveyor: {sum(run.skipped for run in results['events']['conveyor'])}"
        )
    out += [
        f"total run {elapsed:.1f}s; load average at start {results['load'][0]}, at end {load_average()}",
    ]
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
    parser.add_argument("--timeout", type=float, default=None, help="seconds each throughput run may take (default 120 + jobs/10)")
    args = parser.parse_args(argv)
    for name in ("jobs", "chains", "concurrency", "batch", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.events < 0:
        parser.error("--events must not be negative")
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
        redis_client().delete(*bare.KEYS)
        results: dict[str, Any] = {"load": (load_average(),)}
        machine = context()
        steps = [
            ("throughput", "throughput: bare Celery, Conveyor enqueue, Conveyor enqueue_many", throughput),
            ("handoff", "handoff: Conveyor chains, bare Celery task -> task", handoff),
        ]
        if args.events:
            steps.insert(1, ("events", f"events: bare Celery fan-out, Conveyor emit ({FANOUT_EVENT})", events))
        for key, label, phase in steps:
            started = time.perf_counter()
            print(f"bench.jobs: {label} ...", flush=True)
            results[key] = phase(procs, args)
            print(f"bench.jobs:   done in {time.perf_counter() - started:.1f}s", flush=True)
        return report(args, results, time.perf_counter() - began, machine)

    return session("bench.jobs", body)


if __name__ == "__main__":
    sys.exit(main())
