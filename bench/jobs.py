"""`python -m bench.jobs`: Conveyor's jobs against bare Celery on the same Redis, in one run.

    python -m bench.jobs                          5,000 jobs, 300 chains, prefork pool x2
    python -m bench.jobs --jobs 500 --chains 50   a quick run (well under a minute)

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
Throughput is end to end: from the first publish until the last job is done. Every phase starts
with a short warm-up (worker processes connect, import, fill caches) that is not timed.

With no DATABASE_URL / REDIS_URL it runs on embedded servers in a fresh folder under /tmp,
stopped and removed at the end. Otherwise it uses the configured ones, and TRUNCATEs the jobs
tables there: point it at a database you can empty.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
MANAGE = str(ROOT / "manage.py")

THROUGHPUT_TARGET = 0.5  # Conveyor >= 0.5x bare Celery's jobs/s
HANDOFF_P50_TARGET_MS = 10.0  # chain handoff p50 < 10 ms
POLL = 0.05  # seconds between completion checks


class BenchError(RuntimeError):
    pass


# --- Processes ----------------------------------------------------------------------------------


@dataclass
class Proc:
    name: str
    process: subprocess.Popen
    log_path: Path

    def alive(self) -> bool:
        return self.process.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@dataclass
class Procs:
    """Every process the benchmark starts, each the leader of its own process group."""

    folder: Path
    procs: list[Proc] = field(default_factory=list)  # running
    started: list[Proc] = field(default_factory=list)  # all, for their logs

    def spawn(self, name: str, argv: list[str], env: dict[str, str]) -> Proc:
        log_path = self.folder / f"{name}.log"
        with open(log_path, "wb") as out:
            process = subprocess.Popen(
                argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=_die_with_parent,
            )
        proc = Proc(name, process, log_path)
        self.procs.append(proc)
        self.started.append(proc)
        return proc

    def wait_ready(self, proc: Proc, timeout: float = 90.0) -> None:
        """A Celery worker logs `... ready.` once it consumes."""
        deadline = time.monotonic() + timeout
        while " ready." not in proc.log():
            if not proc.alive():
                raise BenchError(f"{proc.name} exited with {proc.process.returncode}:\n{tail(proc.log())}")
            if time.monotonic() > deadline:
                raise BenchError(f"{proc.name} not ready after {timeout:.0f}s:\n{tail(proc.log())}")
            time.sleep(0.1)

    def stop(self, *procs: Proc, grace: float = 20.0) -> None:
        """SIGTERM each leader (a warm shutdown), then SIGKILL whatever is left of its tree.

        `manage.py start` runs each child in a session of its own, so the tree is found by
        descent (before and after the grace period), and each member's process group is killed.
        """
        tree = {proc.name: _descendants(proc.process.pid) for proc in procs}
        for proc in procs:
            if proc.alive():
                proc.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        while any(proc.alive() for proc in procs) and time.monotonic() < deadline:
            time.sleep(0.05)
        for proc in procs:
            members = [*tree[proc.name], *_descendants(proc.process.pid)]
            _kill_group(proc.process.pid)
            for member in members:
                try:
                    if member.is_running():
                        _kill_group(os.getpgid(member.pid))
                        member.kill()
                except Exception:  # noqa: BLE001 - already gone
                    pass
            try:
                proc.process.wait(10)
            except subprocess.TimeoutExpired:
                print(f"bench: warning: {proc.name} (pid {proc.process.pid}) did not exit", file=sys.stderr)
            if proc in self.procs:
                self.procs.remove(proc)

    def stop_all(self) -> None:
        self.stop(*self.procs, grace=10.0)


def _kill_group(pgid: int) -> None:
    if pgid == os.getpgid(0):
        return  # never our own group
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _die_with_parent() -> None:
    """In a child before exec: SIGTERM when the benchmark dies, even by SIGKILL (Linux only)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _descendants(pid: int) -> list[Any]:
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.splitlines()[-lines:])


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, procs: list[Proc] = ()) -> float:
    """Poll until true; return time.perf_counter() when it was seen true. Bounded by `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return time.perf_counter()
        for proc in procs:
            if not proc.alive():
                raise BenchError(f"{proc.name} died while waiting for {what}:\n{tail(proc.log())}")
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(POLL)


# --- Setup --------------------------------------------------------------------------------------


def setup_django(folder: Path) -> None:
    """Django on this run's database (embedded under `folder` unless configured), migrated."""
    # A fresh data folder: the embedded servers of this run only, if any (short: Unix socket
    # paths), and the supervisors' state files.
    os.environ["CONVEYOR_DATA"] = str(folder / "data")
    os.environ["DJANGO_SETTINGS_MODULE"] = "project.settings"
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)


def embedded_servers() -> list[Any]:
    """The embedded server processes (psutil) of this run, to be sure they are gone at the end."""
    import psutil

    from project import embedded

    servers = []
    redis_server = embedded._handles.get("redis")
    if redis_server is not None and getattr(redis_server, "pid", None):
        try:
            servers.append(psutil.Process(int(redis_server.pid)))
        except psutil.Error:
            pass
    info = getattr(embedded._handles.get("database"), "_postmaster_info", None)
    if info is not None:
        servers.append(info.process)
    return servers


def bare_config() -> dict[str, Any]:
    """Conveyor's Celery settings (CELERY_* in Django settings) as a plain Celery config."""
    from django.conf import settings

    config = {}
    for name in dir(settings):
        if name.startswith("CELERY_"):
            key = name[len("CELERY_") :].lower()
            if key.startswith("beat_") or key == "visibility_timeout":  # beat's; Conveyor's own
                continue
            config[key] = getattr(settings, name)
    return config


def truncate_jobs() -> None:
    """Empty the jobs tables. Ids go on from where they were: a message left over from an earlier
    phase can never name a row of a later one."""
    from django.db import connection

    from jobs.models import Chain, Job

    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {Job._meta.db_table}, {Chain._meta.db_table} CASCADE")


def queue_length(queue: str) -> int:
    """Messages waiting in a Celery queue on Redis, over its priority lists (`q`, `q:1`, ...)."""
    from django.conf import settings

    sep = settings.CELERY_BROKER_TRANSPORT_OPTIONS.get("sep", "\x06\x16")
    steps = settings.CELERY_BROKER_TRANSPORT_OPTIONS.get("priority_steps", [0])
    pipe = redis_client().pipeline(transaction=False)
    for step in steps:
        pipe.llen(queue if not step else f"{queue}{sep}{step}")
    return sum(pipe.execute())


_redis: Any = None


def redis_client() -> Any:
    """This process's one Redis client (closed before the embedded Redis is stopped)."""
    global _redis
    if _redis is None:
        import redis
        from django.conf import settings

        _redis = redis.Redis.from_url(settings.REDIS_URL)
    return _redis


def child_env(**extra: str) -> dict[str, str]:
    from django.conf import settings

    env = {**os.environ, "DATABASE_URL": settings.DATABASE_URL, "REDIS_URL": settings.REDIS_URL}
    for name in ("WORKER_QUEUES", "WORKER_CONCURRENCY", "WORKER_ID"):
        env.pop(name, None)
    env["LOG_LEVEL"] = "INFO"
    env.update(extra)
    return env


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


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


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
    for q, label in ((0.5, "p50"), (0.99, "p99")):
        b, c = percentile(bare_lat, q), percentile(conveyor_lat, q)
        target = label == "p50"
        verdict = ("meets" if c < HANDOFF_P50_TARGET_MS else "MISSES") if target else ""
        rows.append((f"chain handoff {label} (ms)", f"{b:.2f}", f"{c:.2f}", f"{c / b:.1f}x" if b > 0 else "-",
                     f"< {HANDOFF_P50_TARGET_MS:g} ms" if target else "", verdict))
    rows.append(("chain handoff max (ms)", f"{max(bare_lat):.2f}", f"{max(conveyor_lat):.2f}",
                 f"{max(conveyor_lat) / max(bare_lat):.1f}x", "", ""))

    header = ("", "bare Celery", "Conveyor", "Conveyor/bare", "target", "")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    def line(row: tuple[str, ...]) -> str:
        cells = [row[0].ljust(widths[0])] + [cell.rjust(widths[i]) for i, cell in enumerate(row[1:5], 1)] + [row[5]]
        return "  ".join(cells).rstrip()

    def runs(key: str) -> str:
        return ", ".join(f"{run.seconds:.2f}s" for run in results["throughput"][key])

    skipped = sum(run.skipped for key in ("single", "bulk") for run in results["throughput"][key])
    rounds = f", median of {args.rounds} rounds" if args.rounds > 1 else ""
    out = [
        f"bench.jobs: {args.jobs:,} jobs per run (Conveyor: examples.echo rows; bare: a no-op task + INCR){rounds}; "
        f"{args.chains:,} chains per round (examples.echo -> examples.ping, one started every {args.chain_interval:g} ms)",
        f"            {args.pool} pool x{args.concurrency} per worker, both sides; {context}",
        "",
        line(header),
        "  ".join("-" * w for w in widths[:5]),
        *map(line, rows),
        "",
        "end to end = first publish until the last job is done; publish only = first until last publish.",
        f"run times: bare {runs('bare')}; Conveyor one by one {runs('single')}, enqueue_many {runs('bulk')}; "
        f"duplicate messages seen by Conveyor (nothing to claim): {skipped}",
        f"handoff samples: bare {len(bare_lat)}, Conveyor {len(conveyor_lat)}; mean bare {sum(bare_lat) / len(bare_lat):.2f} ms, "
        f"Conveyor {sum(conveyor_lat) / len(conveyor_lat):.2f} ms",
        f"total run {elapsed:.1f}s; load average at start {results['load'][0]}, at end {load_average()}",
    ]
    return "\n".join(out)


# --- Main ---------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.jobs", description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=5000, help="jobs per throughput phase (default 5000)")
    parser.add_argument("--chains", type=int, default=300, help="two-step chains for the handoff latency (default 300)")
    parser.add_argument("--concurrency", type=int, default=2, help="worker processes, both sides (default 2)")
    parser.add_argument("--pool", default="prefork", choices=("prefork", "threads", "solo"), help="Celery pool, both sides (default prefork)")
    parser.add_argument("--batch", type=int, default=500, help="jobs per enqueue_many call (default 500)")
    parser.add_argument("--chain-interval", type=float, default=50.0, help="ms between chain starts (default 50)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed jobs before each phase (default jobs/20, 20..200)")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved runs of each measurement; the median is shown (default 1)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds each throughput run may take (default 120 + jobs/10)")
    args = parser.parse_args(argv)
    for name in ("jobs", "chains", "concurrency", "batch", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.chain_interval < 0:
        parser.error("--chain-interval must not be negative")
    if args.warmup is None:
        args.warmup = max(20, min(200, args.jobs // 20))
    args.warmup = max(1, args.warmup)
    return args


def load_average() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def _server_version() -> str:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version")
        return cursor.fetchone()[0].split()[0]


def _on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # run the finally blocks: workers and servers are stopped


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    began = time.perf_counter()
    folder = Path(tempfile.mkdtemp(prefix="cvb-", dir="/tmp"))
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _on_signal)
    procs = Procs(folder)
    servers: list[Any] = []
    try:
        print(f"bench.jobs: setting up in {folder} ...", flush=True)
        setup_django(folder)
        servers = embedded_servers()
        from bench import bare
        from project import embedded

        bare.configure(bare_config())
        redis_client().delete(*bare.KEYS)
        results: dict[str, Any] = {"load": (load_average(),)}
        context = (
            f"{os.cpu_count()} CPUs, Python {platform.python_version()}, "
            f"{'embedded ' if embedded.is_embedded('database') else ''}PostgreSQL {_server_version()}, "
            f"{'embedded ' if embedded.is_embedded('redis') else ''}Redis {redis_client().info('server')['redis_version']}"
        )
        steps = (
            ("throughput", "throughput: bare Celery, Conveyor enqueue, Conveyor enqueue_many", throughput),
            ("handoff", "handoff: Conveyor chains, bare Celery task -> task", handoff),
        )
        for key, label, phase in steps:
            started = time.perf_counter()
            print(f"bench.jobs: {label} ...", flush=True)
            results[key] = phase(procs, args)
            print(f"bench.jobs:   done in {time.perf_counter() - started:.1f}s", flush=True)
        print()
        print(report(args, results, time.perf_counter() - began, context), flush=True)
        return 0
    except BenchError as exc:
        print(f"bench.jobs: failed: {exc}", file=sys.stderr)
        for proc in procs.started:
            print(f"--- {proc.name} (pid {proc.process.pid}) log, last lines ---\n{tail(proc.log(), 15)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench.jobs: interrupted", file=sys.stderr)
        return 130
    finally:
        procs.stop_all()
        _cleanup(servers)
        shutil.rmtree(folder, ignore_errors=True)


def _cleanup(servers: list[Any]) -> None:
    """Close this process's connections, stop the embedded servers, make sure they are gone.

    The embedded Redis only shuts down when its handle is its last client: every connection of
    this process (our client, kombu's pools, Django's cache) is closed first.
    """
    global _redis
    if _redis is not None:
        try:
            from bench import bare

            _redis.delete(*bare.KEYS)
        except Exception:  # noqa: BLE001 - Redis away
            pass
        _redis.close()
        _redis.connection_pool.disconnect()
        _redis = None
    try:
        from django.db import connections

        connections.close_all()
    except Exception:  # noqa: BLE001
        pass
    for app in _celery_apps():
        try:
            app.amqp.producer_pool.force_close_all()
            app.pool.force_close_all()
            app.close()
        except Exception:  # noqa: BLE001
            pass
    try:  # Django's Redis cache keeps its pools open (its close() does nothing)
        from django.core.cache import cache

        for pool in getattr(getattr(cache, "_cache", None), "_pools", {}).values():
            pool.disconnect()
    except Exception:  # noqa: BLE001
        pass
    if "project.embedded" in sys.modules:
        from project import embedded

        embedded.stop()
    import psutil

    for process in servers:  # still up (a client held it): stop it (psutil checks for pid reuse)
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                print(f"bench: stopping leftover server {process.name()} (pid {process.pid})", file=sys.stderr)
                process.terminate()
                process.wait(10)
        except psutil.TimeoutExpired:
            process.kill()
        except psutil.Error:
            pass


def _celery_apps() -> list[Any]:
    apps = []
    if "bench.bare" in sys.modules:
        apps.append(sys.modules["bench.bare"].app)
    if "project.celery" in sys.modules:
        apps.append(sys.modules["project.celery"].app)
    return apps


if __name__ == "__main__":
    sys.exit(main())
