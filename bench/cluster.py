"""`python -m bench.cluster`: the HTTP server's latency while the workers are saturated.

    python -m bench.cluster                        500 requests per scenario, 4 client threads
    python -m bench.cluster --requests 200         a quicker run
    python -m bench.cluster --rate 0               requests back to back (the server's capacity)
    python -m bench.cluster --rounds 3 --shared none   every split scenario 3 times, interleaved

Three scenarios, each on a fresh `manage.py start` cluster (no beat) on a free port of 127.0.0.1:
1. idle: `--cluster 2 --servers 1 --workers 1` (one server: gunicorn x2; one worker: Celery
   prefork x2), nothing to do.
2. loaded, split: the same cluster with a backlog of CPU-heavy `images.resize` jobs (512x512 out of
   a 2048x2048 source, ~0.3 s of CPU each), enough to keep both worker processes busy for the
   whole measurement (--load-seconds of work), queued before the cluster starts.
2b. loaded, split, idle jobs: the same, the worker started with WORKER_CPU_POLICY=idle (its job
   threads at SCHED_IDLE, its autogroup at nice 19 where autogroup applies: docs/deployment.md).
   The split layout emulates separate machines, where the worker takes no CPU from the server;
   on one machine `idle` is the nearest to it. --split-policy normal|idle|both (default both)
   picks which loaded split runs, each judged against the target.
3. loaded, shared: the same backlog on shared instances with as many processes of each kind as
   in 2: `--cluster 2` with gunicorn x1 and Celery x1 in each (default), or `--shared single`:
   one shared instance (WORKER_MODE=shared) with gunicorn x2 and Celery x2.
In each, once the servers answer and (loaded) the workers have finished their first jobs, the
bench sends --requests GET requests (--endpoint job: GET /api/jobs/{id} with a bearer token, a
token lookup and a row read; ready: GET /health/ready, a PostgreSQL and a Redis round trip) from
--clients threads, a new connection each (gunicorn's sync workers close it), after an untimed
warm-up; latency is connect to last byte. Requests are paced (--rate per second, default 50): a
steady load well under what the server can take when idle, so that the idle run measures service
time rather than the clients' own queueing (--rate 0 sends them back to back, which on a small
machine saturates the CPU even with the workers idle). It also counts the resize jobs that finished during the
measurement (jobs/s), so a low latency cannot come from starved workers unnoticed.

Bare Celery has no HTTP server: there is no bare baseline here; the ratios are to the idle run.
The client threads run in this process on the same machine and take CPU of their own.

With no DATABASE_URL / REDIS_URL it runs on embedded servers in a fresh folder under /tmp,
stopped and removed at the end. Otherwise it uses the configured ones, and TRUNCATEs the jobs
tables there: point it at a database you can empty.
"""
from __future__ import annotations

import argparse
import http.client
import io
import math
import os
import random
import socket
import sys
import threading
import time
from dataclasses import dataclass, field

from bench.common import (
    MANAGE,
    postmaster_pid,
    BenchError,
    Proc,
    Procs,
    child_env,
    context,
    load_average,
    percentile,
    redis_client,
    session,
    table,
    tail,
    truncate_jobs,
    wait_until,
)

RESIZE = "images.resize"
PROG = "bench.cluster"


@dataclass(frozen=True)
class Scenario:
    key: str
    label: str
    loaded: bool
    argv: list[str]  # `manage.py start` options
    env: dict[str, str]
    celery_workers: int  # Celery worker instances (each logs `ready.`)
    processes: str  # what runs, for the report


@dataclass
class Result:
    scenario: Scenario
    latencies: list[float]  # ms, successful requests
    seconds: float  # first request sent -> last answer read
    errors: int
    late: int  # paced requests sent late: every client thread was busy
    jobs_done: int = 0  # resize jobs finished during the measurement
    backlog_left: int = 0  # resize jobs still pending or running at the end
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds per kind of process, during it
    others: float = 0.0  # CPU seconds the machine's other processes (not this bench's) used during it

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.seconds

    @property
    def jobs_rate(self) -> float:
        return self.jobs_done / self.seconds


# --- Scenarios ----------------------------------------------------------------------------------


def scenarios(args: argparse.Namespace) -> list[Scenario]:
    split = ["--cluster", "2", "--servers", "1", "--workers", "1", "--web-concurrency", "2", "--concurrency", "2"]
    split_desc = "1 server (gunicorn x2) + 1 worker (Celery prefork x2)"
    if args.shared == "none":
        shared_layout: list[Scenario] = []
    elif args.shared == "cluster":
        shared, shared_env, shared_workers = ["--cluster", "2", "--web-concurrency", "1", "--concurrency", "1"], {}, 2
        shared_desc = "2 shared instances, each gunicorn x1 + Celery prefork x1"
    else:
        shared, shared_env, shared_workers = ["--web-concurrency", "2", "--concurrency", "2"], {"WORKER_MODE": "shared"}, 1
        shared_desc = "1 shared instance (WORKER_MODE=shared), gunicorn x2 + Celery prefork x2"
    if args.shared != "none":
        shared_layout = [Scenario("shared", "loaded, shared", True, shared, shared_env, shared_workers, shared_desc)]
    loaded_split = []
    if args.split_policy in ("normal", "both"):
        loaded_split.append(Scenario("split", "loaded, split", True, split, {"WORKER_CPU_POLICY": "normal"}, 1, split_desc))
    if args.split_policy in ("idle", "both"):
        loaded_split.append(Scenario(
            "split-idle", "loaded, split, idle jobs", True, split, {"WORKER_CPU_POLICY": "idle"}, 1,
            split_desc + ", WORKER_CPU_POLICY=idle",
        ))
    return [
        Scenario("idle", "idle, split", False, split, {}, 1, split_desc),
        *loaded_split,
        *shared_layout,
    ]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_cluster(procs: Procs, scenario: Scenario, port: int, args: argparse.Namespace) -> Proc:
    argv = [
        sys.executable, MANAGE, "start", *scenario.argv, "--pool", "prefork", "--port", str(port),
        "--no-beat", "--grace", "10",
    ]
    return procs.spawn(f"cluster-{scenario.key}", argv, child_env(**scenario.env))


def wait_cluster_ready(proc: Proc, scenario: Scenario, port: int, timeout: float) -> None:
    """Every Celery worker consumes (`ready.` in the log) and /health/ready answers 200."""
    wait_until(
        lambda: proc.log().count(" ready.") >= scenario.celery_workers,
        timeout,
        f"{scenario.celery_workers} Celery worker(s) of {proc.name}",
        [proc],
    )

    def answers() -> bool:
        try:
            return get(port, "/health/ready", {}, 2.0)[0] == 200
        except OSError:
            return False

    wait_until(answers, timeout, f"GET /health/ready on port {port}", [proc])


# --- Load ---------------------------------------------------------------------------------------


def resize_input(args: argparse.Namespace) -> dict[str, int]:
    return {"width": args.size, "height": args.size, "source": args.source}


def calibrate(args: argparse.Namespace) -> float:
    """Seconds of CPU one resize job's work takes here (the handler's image work, in-process)."""
    from PIL import Image

    best = math.inf
    for _ in range(3):
        began = time.perf_counter()
        source = Image.linear_gradient("L").resize((args.source, args.source)).convert("RGB")
        result = source.resize((args.size, args.size), Image.Resampling.LANCZOS)
        result.save(io.BytesIO(), format="PNG")
        best = min(best, time.perf_counter() - began)
    return best


def enqueue_backlog(n: int, args: argparse.Namespace) -> None:
    from jobs import Step, enqueue_many

    for first in range(0, n, 500):
        enqueue_many([Step(RESIZE, resize_input(args)) for _ in range(first, min(n, first + 500))])


def resize_counts() -> tuple[int, int]:
    """(succeeded, not finished yet) images.resize rows."""
    from django.db import connection

    from jobs.models import Job

    with connection.cursor() as cursor:
        cursor.execute(
            f"""SELECT count(*) FILTER (WHERE status = 'succeeded'),
                       count(*) FILTER (WHERE status IN ('pending', 'running', 'failed'))
                  FROM {Job._meta.db_table} WHERE type = %s""",
            [RESIZE],
        )
        done, left = cursor.fetchone()
        return int(done), int(left)


def purge_queues() -> None:
    """Drop the messages a stopped cluster left in Redis (their rows are truncated too)."""
    from django.conf import settings

    from jobs.engine import registry

    options = settings.CELERY_BROKER_TRANSPORT_OPTIONS
    sep, steps = options.get("sep", "\x06\x16"), options.get("priority_steps", [0])
    keys = [queue if not step else f"{queue}{sep}{step}" for queue in registry.queues() for step in steps]
    redis_client().delete(*keys)


# --- HTTP ---------------------------------------------------------------------------------------


def get(port: int, path: str, headers: dict[str, str], timeout: float) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


LATE_MS = 10.0  # a request sent this much after its slot: every client thread was still busy


@dataclass
class Fired:
    latencies: list[float]  # ms, successful requests
    errors: list[str]
    seconds: float  # first slot -> last answer
    late: int  # requests sent more than LATE_MS after their slot


def fire(port: int, path: str, headers: dict[str, str], n: int, args: argparse.Namespace) -> Fired:
    """n GET requests from --clients threads, request i due at i / --rate seconds (0: at once,
    each thread sending its next request as soon as it has the previous answer)."""
    lock = threading.Lock()
    next_index = [0]
    fired = Fired([], [], 0.0, 0)
    interval = 1.0 / args.rate if args.rate else 0.0
    began = time.perf_counter() + 0.05  # every thread started

    def client() -> None:
        while True:
            with lock:
                index = next_index[0]
                if index >= n:
                    return
                next_index[0] += 1
            slot = began + index * interval
            delay = slot - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            sent = time.perf_counter()
            try:
                status, body = get(port, path, headers, args.request_timeout)
                problem = "" if status == 200 else f"HTTP {status}: {body[:200]!r}"
            except OSError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            elapsed = (time.perf_counter() - sent) * 1000
            with lock:
                if problem:
                    fired.errors.append(problem)
                else:
                    fired.latencies.append(elapsed)
                if interval and (sent - slot) * 1000 > LATE_MS:
                    fired.late += 1

    threads = [threading.Thread(target=client, daemon=True, name=f"bench-client-{i}") for i in range(args.clients)]
    for thread in threads:
        thread.start()
    # Each request is bounded by --request-timeout (connect, then each read): so is the whole.
    limit = n * interval + args.request_timeout * (n / args.clients + 2) + 10
    deadline = time.monotonic() + limit
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    if any(thread.is_alive() for thread in threads):
        raise BenchError(f"HTTP clients still running after {limit:.0f}s")
    fired.seconds = time.perf_counter() - began
    return fired


# --- CPU ----------------------------------------------------------------------------------------


def run_delays(pid: int) -> dict[int, int]:
    """Nanoseconds each thread of a process has spent runnable, waiting for a core (the kernel's
    schedstat: /proc/<pid>/task/<tid>/schedstat, its second field), by thread id; {} where unknown."""
    delays = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return delays
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as stat:
                delays[int(tid)] = int(stat.read().split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return delays


def cpu_samples(proc: Proc) -> dict[tuple, float]:
    """The cluster's counters so far, one per process or thread: ("gunicorn" | "celery", pid) -> CPU
    seconds (user + system), and ("web-wait", pid, tid) -> seconds a gunicorn thread waited for a core.
    Kept apart so that a process or thread that ends or starts between two samples cannot make a
    difference negative (a sum over a process's live threads shrinks when one exits): see cpu_spent."""
    import psutil

    samples: dict[tuple, float] = {}
    try:
        members = psutil.Process(proc.process.pid).children(recursive=True)
    except psutil.Error:
        return samples
    for member in members:
        try:
            cmdline = " ".join(member.cmdline())
            times = member.cpu_times()
        except psutil.Error:
            continue
        kind = "gunicorn" if "gunicorn" in cmdline else "celery" if "celery" in cmdline else None
        if kind:
            samples[(kind, member.pid)] = times.user + times.system
        if kind == "gunicorn":
            for tid, ns in run_delays(member.pid).items():
                samples[("web-wait", member.pid, tid)] = ns / 1e9
    return samples


def cpu_spent(before: dict[tuple, float], after: dict[tuple, float]) -> dict[str, float]:
    """Seconds spent between two cpu_samples by kind (gunicorn, celery, web-wait): what each process or
    thread alive at the end spent since the first sample, or since it started."""
    totals = {"gunicorn": 0.0, "celery": 0.0, "web-wait": 0.0}
    for key, value in after.items():
        totals[key[0]] += max(0.0, value - before.get(key, 0.0))
    return totals


def machine_busy(stat: str = "/proc/stat") -> float:
    """CPU seconds the whole machine has been busy since boot, every core summed (/proc/stat's
    first line: all but idle and iowait; guest time is inside user)."""
    with open(stat) as lines:
        fields = [int(value) for value in lines.readline().split()[1:]]
    busy = sum(fields[:8]) - fields[3] - fields[4]  # user nice system idle iowait irq softirq steal
    return busy / os.sysconf("SC_CLK_TCK")


def own_pids() -> set[int]:
    """This bench's processes: itself and its descendants (the cluster), and, when they run on
    this machine, the PostgreSQL server (with its backends) and the Redis server it uses."""
    import psutil

    roots = [os.getpid()]
    postmaster = postmaster_pid()
    if postmaster:
        roots.append(postmaster)
    try:
        redis_pid = int(redis_client().info("server")["process_id"])
        if "redis" in psutil.Process(redis_pid).name():  # else a remote server's pid, not a process here
            roots.append(redis_pid)
    except (KeyError, ValueError, psutil.Error):
        pass
    pids: set[int] = set()
    for root in roots:
        try:
            process = psutil.Process(root)
            pids.update([root, *(child.pid for child in process.children(recursive=True))])
        except psutil.Error:
            continue
    return pids


def own_cpu(pids: set[int]) -> dict[int, float]:
    """CPU seconds per process (its own, and its reaped children's: a PostgreSQL backend that
    ended counts in the postmaster's), by pid; a remote server's processes are simply absent."""
    import psutil

    seconds = {}
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        seconds[pid] = times.user + times.system + times.children_user + times.children_system
    return seconds


def others_spent(busy_before: float, busy_after: float, own_before: dict[int, float], own_after: dict[int, float]) -> float:
    """CPU seconds the machine's other processes used between two samples: the machine's busy time
    less this bench's processes' (each process alive at the second sample, since the first or
    since it started). Never negative: the two kinds of counter are read a moment apart."""
    own = sum(max(0.0, seconds - own_before.get(pid, 0.0)) for pid, seconds in own_after.items())
    return max(0.0, (busy_after - busy_before) - own)


def p99_ratio_interval(
    loaded: list[float], idle: list[float], q: float = 0.99, level: float = 0.9, draws: int = 400, seed: int = 28,
) -> tuple[float, float]:
    """The `level` interval of percentile(loaded, q) / percentile(idle, q) over `draws` bootstrap
    resamples of both samples: how far the judged ratio moves with which requests happened to be
    slow (a p99 of 1,000 requests is decided by its ten slowest). Seeded: a report is repeatable."""
    rng = random.Random(seed)
    ratios = sorted(
        percentile(rng.choices(loaded, k=len(loaded)), q) / percentile(rng.choices(idle, k=len(idle)), q)
        for _ in range(draws)
    )
    tail = (1.0 - level) / 2
    return ratios[int(tail * draws)], ratios[min(draws - 1, int((1.0 - tail) * draws))]


#: Other processes' CPU (cores, averaged over a scenario's measurements) above which the report warns:
#: the request path's processes then wait for cores behind them, in every scenario, unevenly.
OTHERS_WARN_CORES = 0.25


def busiest_for_others(results: list[Result], limit: float = OTHERS_WARN_CORES) -> Result | None:
    """The scenario during whose measurements other processes took the most cores, when that is over
    `limit` (averaged over its wall time); None on a quiet enough machine."""
    busiest = max(results, key=lambda r: r.others / r.seconds)
    return busiest if busiest.others / busiest.seconds > limit else None


# --- Run ----------------------------------------------------------------------------------------


def run_scenario(procs: Procs, scenario: Scenario, args: argparse.Namespace, backlog: int, token: str) -> Result:
    from jobs import enqueue

    truncate_jobs()
    purge_queues()
    target = enqueue("examples.echo", {"bench": "cluster"})  # the row GET /api/jobs/{id} reads
    if args.endpoint == "job":
        path, headers = f"/api/jobs/{target.pk}", {"Authorization": f"Bearer {token}"}
    else:
        path, headers = "/health/ready", {}
    if scenario.loaded:
        enqueue_backlog(backlog, args)
    port = free_port()
    began = time.perf_counter()
    proc = start_cluster(procs, scenario, port, args)
    try:
        wait_cluster_ready(proc, scenario, port, args.timeout)
        if scenario.loaded:
            # Both worker processes have picked up work (and imported, connected): saturated.
            wait_until(lambda: resize_counts()[0] >= 4, args.timeout, f"the first {RESIZE} jobs", [proc])
        print(f"{PROG}:   cluster ready in {time.perf_counter() - began:.1f}s on port {port}", flush=True)
        warm = fire(port, path, headers, args.warmup, args)
        if len(warm.errors) == args.warmup:
            raise BenchError(f"every warm-up request to {path} failed, e.g. {warm.errors[0]}")
        done_before, _ = resize_counts()
        pids = own_pids()
        busy_before, own_before = machine_busy(), own_cpu(pids)
        cpu_before = cpu_samples(proc)
        fired = fire(port, path, headers, args.requests, args)
        cpu_after = cpu_samples(proc)
        busy_after, own_after = machine_busy(), own_cpu(pids | own_pids())
        done_after, left = resize_counts()
        if not fired.latencies:
            raise BenchError(f"every request to {path} failed, e.g. {fired.errors[0]}")
        if fired.errors:
            print(f"{PROG}:   {len(fired.errors)} of {args.requests} requests failed, e.g. {fired.errors[0]}", flush=True)
        if not proc.alive():
            raise BenchError(f"{proc.name} exited during the measurement:\n{tail(proc.log())}")
        result = Result(
            scenario, fired.latencies, fired.seconds, len(fired.errors), fired.late, done_after - done_before, left,
            cpu_spent(cpu_before, cpu_after), others_spent(busy_before, busy_after, own_before, own_after),
        )
        print(
            f"{PROG}:   {len(result.latencies)} requests in {result.seconds:.2f}s ({result.late} late), "
            f"p50 {percentile(result.latencies, 0.5):.1f} ms, p99 {percentile(result.latencies, 0.99):.1f} ms; "
            f"{RESIZE} done {result.jobs_done} ({result.jobs_rate:.1f}/s), "
            f"left {left}; other processes {result.others / result.seconds:.2f} cores",
            flush=True,
        )
        if scenario.loaded and left == 0:
            print(f"{PROG}:   warning: the backlog ran out during the measurement (raise --load-seconds)", flush=True)
        return result
    finally:
        procs.stop(proc, grace=30.0)


def pooled(results: list[Result]) -> Result:
    """One scenario's rounds as one result: every latency, the sums of times, jobs and CPU."""
    first = results[0]
    cpu: dict[str, float] = {}
    for result in results:
        for kind, seconds in result.cpu.items():
            cpu[kind] = cpu.get(kind, 0.0) + seconds
    return Result(
        first.scenario, [ms for result in results for ms in result.latencies], sum(r.seconds for r in results),
        sum(r.errors for r in results), sum(r.late for r in results), sum(r.jobs_done for r in results),
        min(r.backlog_left for r in results), cpu, sum(r.others for r in results),
    )


def report(
    args: argparse.Namespace, rounds: list[list[Result]], backlog: int, job_seconds: float, elapsed: float, machine: str,
    load_start: str,
) -> str:
    results = [pooled([round_[i] for round_ in rounds]) for i in range(len(rounds[0]))]
    idle = results[0]
    idle_p50, idle_p99 = percentile(idle.latencies, 0.5), percentile(idle.latencies, 0.99)
    rows = []
    for result in results:
        p50, p99 = percentile(result.latencies, 0.5), percentile(result.latencies, 0.99)
        cpu = result.cpu
        rows.append((
            result.scenario.label,
            f"{p50:.1f}", f"{p99:.1f}", f"{max(result.latencies):.1f}", f"{result.rps:,.0f}",
            f"{result.jobs_rate:.1f}" if result.scenario.loaded else "-",
            f"{p50 / idle_p50:.1f}x", f"{p99 / idle_p99:.1f}x",
            f"{cpu.get('gunicorn', 0.0) / result.seconds:.2f} / {cpu.get('celery', 0.0) / result.seconds:.2f}",
            f"{cpu.get('web-wait', 0.0) * 1000 / max(1, len(result.latencies) + result.errors):.1f}",
            f"{result.late}" if args.rate else "-",
            f"{result.errors}",
            f"{result.others / result.seconds:.2f}",
            "" if not result.scenario.loaded or result.backlog_left else "backlog ran out",
        ))
    header = (
        "",
        "p50 ms",
        "p99 ms",
        "max ms",
        "requests/s",
        "jobs/s",
        "p50/idle",
        "p99/idle",
        "CPU cores web / worker",
        "web wait ms/req",
        "late",
        "errors",
        "other CPU cores",
        "",
    )
    endpoint = (
        "GET /api/jobs/{id} with a bearer token (token lookup + row read)" if args.endpoint == "job"
        else "GET /health/ready (PostgreSQL + Redis round trip)"
    )
    split = results[1].scenario
    shared = next((r.scenario for r in results if r.scenario.key == "shared"), None)
    # Other processes took cores during a measurement: their bursts land in one scenario's tail and
    # not another's, and move the ratio either way (a verdict of such a run says so beside it).
    busiest = busiest_for_others(results)
    busy = busiest is not None
    targets = []
    for result in results:  # the loaded split layouts: normal, idle jobs, or both
        if not result.scenario.key.startswith("split"):
            continue
        loaded_p99 = percentile(result.latencies, 0.99)
        ratio = loaded_p99 / idle_p99
        low, high = p99_ratio_interval(result.latencies, idle.latencies)
        index = results.index(result)
        per_round = [percentile(r[index].latencies, 0.99) / percentile(r[0].latencies, 0.99) for r in rounds]
        spread = f", rounds {min(per_round):.2f}-{max(per_round):.2f}x" if len(rounds) > 1 else ""
        policy = result.scenario.env.get("WORKER_CPU_POLICY", "normal")
        targets.append((
            f"HTTP p99 under saturated workers (split, WORKER_CPU_POLICY={policy}) <= 1.2x idle",
            f"{ratio:.2f}x ({loaded_p99:.1f} / {idle_p99:.1f} ms; 90% interval {low:.2f}-{high:.2f}x{spread})",
            ("met" if ratio <= 1.2 else "MISSED") + (" (busy machine)" if busy else ""),
        ))
    by_round = []
    if len(rounds) > 1:
        for number, round_ in enumerate(rounds, start=1):
            round_idle = percentile(round_[0].latencies, 0.99)
            by_round.append((
                f"round {number}", f"{round_idle:.1f}",
                *(f"{percentile(r.latencies, 0.99) / round_idle:.2f}x" for r in round_[1:]), "",
            ))
    interleaved = f" in each of {len(rounds)} interleaved rounds" if len(rounds) > 1 else ""
    out = [
        f"{PROG}: {args.requests:,} requests per scenario{interleaved} to {endpoint}, "
        + (f"paced at {args.rate:g}/s over " if args.rate else "back to back from ")
        + f"{args.clients} client threads in the bench process, a new connection each, 127.0.0.1",
        f"               no bare Celery baseline: bare Celery has no HTTP server; ratios are to the idle run. {machine}",
        "",
        *table(header, rows),
        "",
        *(
            [*table(("p99 per round", "idle ms", *(f"{r.scenario.label} / idle" for r in results[1:]), ""), by_round), ""]
            if by_round else []
        ),
        *table(("target (issue 14)", "measured", ""), targets),
        "",
        f"idle, split and loaded, split: manage.py start --cluster 2 --servers 1 --workers 1 = {split.processes}",
        "idle jobs: the worker's job processes at SCHED_IDLE (WORKER_CPU_POLICY=idle, its heartbeat normal): "
        "the server's cores as if on a machine of their own",
        *(
            [f"loaded, shared: manage.py start {' '.join(shared.argv)}{' (WORKER_MODE=shared)' if shared.env else ''} = "
             f"{shared.processes}: as many gunicorn workers and Celery pool processes as split"]
            if shared else []
        ),
        f"load: {backlog} {RESIZE} jobs {resize_input(args)} queued before each loaded cluster starts "
        f"(~{job_seconds * 1000:.0f} ms of CPU each, measured here: ~{backlog * job_seconds / 2:.0f}s of work for 2 processes); "
        "jobs/s = resize jobs finished during the measurement",
        "CPU cores = CPU seconds used by the cluster's gunicorn and Celery processes during the measurement / its wall time "
        f"(of {os.cpu_count()}); web wait = the time gunicorn's threads were runnable but waiting for a core "
        "(the kernel's schedstat run_delay), per request",
        "target: the pooled p99s of every round; 90% interval = of the ratio over bootstrap resamples of both "
        "scenarios' requests (what the slowest few requests decide: an interval across 1.2x is not a steady verdict)",
        "other CPU cores = CPU used by the machine's other processes (not this bench's, its cluster's, PostgreSQL's "
        "or Redis') during the measurement / its wall time: the request's processes wait behind them for a core",
        f"warm-up: {args.warmup} untimed requests per scenario; latency = connect to last byte; "
        "requests/s = successful requests / wall time"
        + (
            f"; late = sent over {LATE_MS:g} ms after their slot (all {args.clients} clients busy: the server fell behind)"
            if args.rate
            else ""
        ),
        f"total run {elapsed:.1f}s; load average at start {load_start}, at end {load_average()}",
    ]
    # Not the load average: the loaded scenarios' own saturated workers raise it past the CPUs on a
    # quiet machine. What disturbs the figures is the CPU other processes take during a measurement.
    if busy:
        out.append(
            f"warning: other processes used up to {busiest.others / busiest.seconds:.2f} of {os.cpu_count()} cores "
            f"during the measurements ({busiest.scenario.label}): the tails, and so the ratios, measure them too; "
            "re-run on a quiet machine"
        )
    return "\n".join(out)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=500, help="timed requests per scenario (default 500)")
    parser.add_argument("--clients", type=int, default=4, help="client threads (default 4)")
    parser.add_argument(
        "--rate", type=float, default=50.0, help="requests sent per second, paced (default 50; 0: as fast as the clients go)"
    )
    parser.add_argument(
        "--endpoint",
        choices=("job", "ready"),
        default="job",
        help="job: GET /api/jobs/{id} with a token (default); ready: GET /health/ready",
    )
    parser.add_argument(
        "--shared", choices=("cluster", "single", "none"), default="cluster",
        help="the shared layout: 2 instances x1 (default), 1 instance x2, or none (not run)"
    )
    parser.add_argument(
        "--load-seconds", type=float, default=90.0, help="seconds of resize work the backlog holds for 2 worker processes (default 90)"
    )
    parser.add_argument("--source", type=int, default=2048, help="resize jobs' source image size (default 2048)")
    parser.add_argument("--size", type=int, default=512, help="resize jobs' output width and height (default 512)")
    parser.add_argument(
        "--split-policy", choices=("normal", "idle", "both"), default="both",
        help="WORKER_CPU_POLICY of the loaded split layout's worker: normal, idle, or both, one after the other (default both)",
    )
    parser.add_argument("--rounds", type=int, default=1, help="run every scenario this many times, interleaved (default 1)")
    parser.add_argument("--warmup", type=int, default=40, help="untimed requests before each measurement (default 40)")
    parser.add_argument("--request-timeout", type=float, default=10.0, help="seconds per request (default 10)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds a cluster may take to get ready (default 120)")
    args = parser.parse_args(argv)
    for name in ("requests", "clients", "warmup", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.rate < 0:
        parser.error("--rate must not be negative")
    if args.load_seconds <= 0 or args.request_timeout <= 0 or args.timeout <= 0:
        parser.error("--load-seconds, --request-timeout and --timeout must be positive")
    if not 16 <= args.source <= 4096 or not 1 <= args.size <= 4096:
        parser.error("--source must be 16..4096 and --size 1..4096 (the images.resize schema)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    began = time.perf_counter()

    def body(procs: Procs) -> str:
        from django.contrib.auth import get_user_model

        from api.auth import issue_token

        load_start = load_average()
        machine = context()
        from django.core.management import call_command

        user, _ = get_user_model().objects.get_or_create(username="bench@example.com", defaults={"email": "bench@example.com"})
        # the bench reads jobs: a token of that one scope, which the user needs the permission for
        call_command("grant", "--email", "bench@example.com", "--scope", "jobs:read", stdout=io.StringIO())
        token = issue_token(user, "jobs:read")
        job_seconds = calibrate(args)
        backlog = max(20, min(10_000, math.ceil(args.load_seconds * 2 / job_seconds)))
        print(f"{PROG}: one {RESIZE} job ~{job_seconds * 1000:.0f} ms here: backlog of {backlog} per loaded scenario", flush=True)
        rounds: list[list[Result]] = []
        for number in range(1, args.rounds + 1):
            # Interleaved: every scenario once per round, so a change in the machine's load
            # touches them all alike.
            results: list[Result] = []
            for scenario in scenarios(args):
                started = time.perf_counter()
                label = f"round {number}, " if args.rounds > 1 else ""
                print(f"{PROG}: {label}{scenario.label}: {scenario.processes} ...", flush=True)
                results.append(run_scenario(procs, scenario, args, backlog, token))
                print(f"{PROG}:   done in {time.perf_counter() - started:.1f}s", flush=True)
            rounds.append(results)
        truncate_jobs()
        purge_queues()
        return report(args, rounds, backlog, job_seconds, time.perf_counter() - began, machine, load_start)

    try:
        return session(PROG, body)
    finally:
        # The idle workers' cgroup (WORKER_CPU_POLICY=idle), should a worker's end have missed it.
        from jobs.engine import cpu_policy

        cpu_policy.remove_idle_cgroup()


if __name__ == "__main__":
    sys.exit(main())
