"""`python -m bench.streams`: 1,000 open live streams while the platform runs jobs, and what they
cost the ordinary API requests.

    python -m bench.streams                      1,000 streams, 600 requests per phase
    python -m bench.streams --streams 50 --requests 100    a quick run
    python -m bench.streams --loop-cpu           and the servers' event loop CPU by callback

One `manage.py start` instance (shared: gunicorn with --web-concurrency uvicorn workers, and a
Celery worker with --concurrency processes, no beat) on a free port of 127.0.0.1, a bearer token of
scope jobs:read, and three phases, each measuring --requests `GET /api/jobs/{id}` (a token check and
a row read) paced at --rate per second from --clients threads (bench.cluster's client):

1. idle: nothing runs, no stream is open;
2. jobs: the worker runs a backlog of `examples.sleep` jobs (--job-seconds each), no stream is
   open;
3. jobs + streams: the same, with --streams open `GET /api/jobs/{id}/stream` on the backlog's
   jobs (the next ones to run: each sees pending, running, progress, its end), held by one
   asyncio loop in a process of its own (forked: its reading takes nothing from the timed client;
   its CPU is reported, ~0.005 s/s: it takes next to nothing from the servers' 2 cores), measured
   once the servers hold every open stream's end (their advisory locks, `holds()`): the phase is
   of open streams, not of their opening. The next round's phase 2 waits for them to be given back.

Phases 2 and 3 alternate in --rounds rounds (3: 2, 3, 2, 3, 2, 3, each with --requests / --rounds
requests; the streams opened anew on the next jobs each round and closed after it), each phase's
figures over all its rounds: on a shared machine whose load drifts within minutes, one phase 2
then one phase 3 compared two different machines (600 requests: 1.05x to 1.69x from run to run).

It reports the p50 and p99 of each phase and their ratio to the idle one (the target: phase 3's p99
within 1.2x of phase 2's, i.e. the open streams cost the requests under 20%), the events the streams
received, the PostgreSQL connections the servers held (pg_stat_activity: the pool and the listening
connection, whatever the number of streams), the servers' threads and memory, and the CPU of the
servers and of PostgreSQL (seconds per second of the measurement: what the streams cost, whatever
else loads the machine; phases 2 and 3 run the same jobs).

With no DATABASE_URL / REDIS_URL it runs on embedded servers in a fresh folder under /tmp,
stopped and removed at the end. Otherwise it uses the configured ones, and TRUNCATEs the jobs
tables there: point it at a database you can empty.
"""
from __future__ import annotations

import argparse
import asyncio
import io
import multiprocessing
import os
import queue
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from bench.common import (
    MANAGE,
    BenchError,
    Proc,
    Procs,
    child_env,
    context,
    load_average,
    percentile,
    session,
    table,
    postmaster_pid,
    tree_cpu,
    truncate_jobs,
    wait_until,
)

PROG = "bench.streams"
TARGET = 1.2  # phase 3's p99 over phase 2's


# --- The streams: one asyncio loop in a process of their own -----------------------------------


OPENED, EVENTS, ENDS, ERRORS, CLOSED = range(5)
#: Errors kept word for word (the rest only counted).
KEPT_ERRORS = 20


class Streams:
    """--streams open streams read by one event loop in a process of its own (forked): its reading
    takes no CPU time and no GIL from this process's timed client threads, which would otherwise
    count the client's own waits as the server's latency. Counts of what they received."""

    def __init__(self) -> None:
        ctx = multiprocessing.get_context("fork")
        # opened (answered 200 with a first event), events, ends, errors, over (an end event, or closed without)
        self.counts = ctx.Array("q", 5)
        self.kept = ctx.Queue()
        self.stopping = ctx.Event()
        self.ready = ctx.Event()
        self.process: multiprocessing.process.BaseProcess | None = None
        self._errors: list[str] = []
        self._ctx = ctx

    @property
    def opened(self) -> int:
        return self.counts[OPENED]

    @property
    def events(self) -> int:
        return self.counts[EVENTS]

    @property
    def ends(self) -> int:
        return self.counts[ENDS]

    @property
    def closed(self) -> int:
        return self.counts[CLOSED]

    @property
    def errors(self) -> list[str]:
        while True:
            try:
                self._errors.append(self.kept.get_nowait())
            except queue.Empty:
                break
        # Counted beyond those kept: the number stays right.
        return self._errors + ["(more)"] * max(0, self.counts[ERRORS] - len(self._errors))

    def start(self, port: int, token: str, ids: list[int], connect_rate: float = 500.0) -> None:
        self.process = self._ctx.Process(
            target=_hold, args=(port, token, ids, connect_rate, self.counts, self.kept, self.ready, self.stopping),
            name="bench-streams", daemon=True,
        )
        self.process.start()
        if not self.ready.wait(60):
            raise BenchError("the streams' process did not start opening them within 60 s")

    def stop(self) -> None:
        if self.process is None:
            return
        self.stopping.set()
        self.process.join(30)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)


def _hold(port: int, token: str, ids: list[int], connect_rate: float, counts, kept, ready, stopping) -> None:
    """The streams' process: open every stream, read them until told to stop."""
    code = 0
    try:
        asyncio.run(_hold_all(port, token, ids, connect_rate, counts, kept, ready, stopping))
    except BaseException:  # (reported by the counts; the parent decides)
        code = 1
    finally:
        os._exit(code)  # nothing of the parent's (its connections, its atexit) runs here


async def _hold_all(port: int, token: str, ids: list[int], connect_rate: float, counts, kept, ready, stopping) -> None:
    loop = asyncio.get_running_loop()
    tasks = []
    ready.set()
    for index, job_id in enumerate(ids):
        tasks.append(loop.create_task(_follow(port, token, job_id, counts, kept)))
        if connect_rate and index % 50 == 49:
            await asyncio.sleep(50 / connect_rate)  # not 1,000 connects in the same ms
    while not stopping.is_set():
        await asyncio.sleep(0.1)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def _follow(port: int, token: str, job_id: int, counts, kept) -> None:
    writer = None
    counted = ended = False  # opened: its first event came; its end event came

    def error(text: str) -> None:
        counts[ERRORS] += 1
        if counts[ERRORS] <= KEPT_ERRORS:
            kept.put(text)

    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
        writer.write(
            f"GET /api/jobs/{job_id}/stream HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n"
            f"Authorization: Bearer {token}\r\n\r\n".encode()
        )
        await writer.drain()
        status = await reader.readline()
        if b" 200 " not in status:
            error(status.decode(errors="replace").strip())
            return
        async for line in reader:
            if line.startswith(b"event: "):
                counts[EVENTS] += 1
                if not counted:
                    counts[OPENED] += 1
                    counted = True
                if line.startswith(b"event: end"):
                    counts[ENDS] += 1
                    # over at its end event (the connection itself may stay open for the
                    # keep-alive's 5 s: counted then, the wait below lagged the jobs' ends)
                    counts[CLOSED] += 1
                    ended = True
        if counted and not ended:
            counts[CLOSED] += 1  # closed with no end (a lost listening connection, a drain)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        error(f"{type(exc).__name__}: {exc}")
        if counted and not ended:
            counts[CLOSED] += 1
    finally:
        if writer is not None:
            writer.close()


# --- Measuring -----------------------------------------------------------------------------------


@dataclass
class Phase:
    label: str
    latencies: list[float]
    errors: int
    jobs_done: int  # jobs that ended during the measurement
    connections: int  # the servers' PostgreSQL connections at the end of it
    threads: int  # the servers' threads
    rss_mb: float
    web_cpu: float  # CPU seconds the servers used per second of the measurement
    pg_cpu: float | None  # PostgreSQL's (None: not on this machine)
    client_cpu: float | None = None  # the streams' own client process's (phase 3 only)
    windows: tuple[tuple[float, float], ...] = ()  # (wall clock) when it was measured: --loop-cpu's


def server_figures(server_pids: list[int]) -> tuple[int, int, float]:
    """(PostgreSQL connections of the HTTP servers, their threads, their resident MB)."""
    import psutil
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'conveyor-web-%%'")
        conns = cursor.fetchone()[0]
    threads, rss = 0, 0
    for pid in server_pids:
        try:
            process = psutil.Process(pid)
            threads += process.num_threads()
            rss += process.memory_info().rss
        except psutil.Error:
            pass
    return conns, threads, rss / 1e6


def gunicorn_workers(root_pid: int) -> list[int]:
    """The uvicorn worker processes under an instance (the children of its gunicorn arbiter)."""
    import psutil

    found = []
    for member in psutil.Process(root_pid).children(recursive=True):
        try:
            cmdline = " ".join(member.cmdline())
            parent = member.parent()
        except psutil.Error:
            continue
        if "gunicorn" in cmdline and parent is not None and "gunicorn" in " ".join(parent.cmdline()):
            found.append(member.pid)
    return found


def finished_jobs() -> int:
    from jobs.models import Job

    return Job.objects.filter(status__in=("succeeded", "dead", "cancelled")).count()


def holds() -> int:
    """The advisory locks the servers' listening connections hold: one per streamed row whose end
    they wait for (jobs/interfaces/listener.py), taken after the stream's first event and given back
    after it closes, each a round trip on the one connection."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND a.application_name LIKE 'conveyor-web-%%-listen'"
        )
        return cursor.fetchone()[0]


def settled(condition: Callable[[], bool], what: str, seconds: float = 120.0) -> float:
    """Wait until `condition` (the streams' holds taken, or given back), bounded; the seconds it
    took. Without it a phase measured the tail of the streams' opening (phase 3) or of the last
    round's closing (the next phase 2): 1,000 holds, then 1,000 releases, one round trip each on a
    server's listening connection, which under load took the whole measurement."""
    began = time.perf_counter()
    wait_until(condition, seconds, what)
    return time.perf_counter() - began


def measure(
    label: str, port: int, token: str, job_id: int, args: argparse.Namespace, server_pids: list[int],
    client: int | None = None,
) -> Phase:
    """`client`: the streams' process, whose CPU is measured too (what it takes from the 2 cores
    the servers share with it)."""
    import psutil

    from bench.cluster import fire

    headers = {"Authorization": f"Bearer {token}"}
    path = f"/api/jobs/{job_id}"
    fire(port, path, headers, args.warmup, args)  # untimed
    before = finished_jobs()
    postmaster = postmaster_pid()
    cpu0 = sum(tree_cpu(pid) for pid in server_pids)
    pg0 = tree_cpu(postmaster) if postmaster else 0.0
    client0 = sum(psutil.Process(client).cpu_times()[:2]) if client else 0.0
    began = time.time()
    fired = fire(port, path, headers, args.requests, args)
    window = ((began, time.time()),)
    seconds = max(fired.seconds, 1e-9)
    cpu = (sum(tree_cpu(pid) for pid in server_pids) - cpu0) / seconds
    pg = (tree_cpu(postmaster) - pg0) / seconds if postmaster else None
    client_cpu = (sum(psutil.Process(client).cpu_times()[:2]) - client0) / seconds if client else None
    conns, threads, rss = server_figures(server_pids)
    return Phase(
        label, fired.latencies, len(fired.errors), finished_jobs() - before, conns, threads, rss, cpu, pg, client_cpu,
        window,
    )


def merge(label: str, parts: list[Phase]) -> Phase:
    """One phase from its rounds: every latency, the counts summed, the CPU figures averaged (each
    round timed the same number of requests), the servers' figures of the last round."""
    last = parts[-1]
    pg = [part.pg_cpu for part in parts if part.pg_cpu is not None]
    client = [part.client_cpu for part in parts if part.client_cpu is not None]
    return Phase(
        label, [ms for part in parts for ms in part.latencies], sum(p.errors for p in parts),
        sum(p.jobs_done for p in parts), last.connections, last.threads, last.rss_mb,
        sum(p.web_cpu for p in parts) / len(parts), sum(pg) / len(pg) if pg else None,
        sum(client) / len(client) if client else None, tuple(w for part in parts for w in part.windows),
    )


class Opened:
    """What the streams of every round received, summed (the report's counts)."""

    def __init__(self) -> None:
        self.opened = self.events = self.ends = 0
        self.errors: list[str] = []
        self.settling: list[float] = []  # seconds the holds took to be taken, per round
        self.closing: list[float] = []  # and to be given back

    def add(self, streams: Streams) -> None:
        self.opened += streams.opened
        self.events += streams.events
        self.ends += streams.ends
        self.errors += streams.errors


def next_to_run(count: int) -> list[int]:
    """The ids of the `count` waiting jobs the worker runs next (roughly: lowest ids first)."""
    from jobs.models import Job

    return list(Job.objects.filter(status="pending").order_by("id").values_list("id", flat=True)[:count])


def run(port: int, token: str, args: argparse.Namespace, server_pids: list[int]) -> tuple[list[Phase], Opened]:
    """The three phases on a running instance (the bench's and the suite's smoke run's). Phases 2
    and 3 alternate in --rounds rounds (each --requests / --rounds requests; the streams opened
    anew on the next jobs to run, closed after): a machine whose load drifts during the run
    weighs on both alike, and their p99s are over all the rounds' requests."""
    from jobs import Step, enqueue_many

    [probe] = enqueue_many([Step("examples.echo", {"probe": 1})])
    wait_until(lambda: finished_jobs() >= 1, 60, "the probe job to run")
    phases = [measure("idle", port, token, probe.pk, args, server_pids)]

    # the backlog: enough sleeps to keep the worker busy through phases 2 and 3
    enqueue_many([Step("examples.sleep", {"seconds": args.job_seconds}) for _ in range(args.backlog)])
    wait_until(lambda: finished_jobs() >= 2, 60, "the backlog to start running")
    share = argparse.Namespace(**{**vars(args), "requests": max(1, args.requests // args.rounds)})
    without, beside, opened = [], [], Opened()
    label = f"jobs + {args.streams} streams"
    for _ in range(args.rounds):
        without.append(measure("jobs", port, token, probe.pk, share, server_pids))
        ids = next_to_run(args.streams)
        if len(ids) < args.streams:
            raise BenchError(f"the backlog ran out: {len(ids)} jobs left to stream, --streams {args.streams}")
        streams = Streams()
        streams.start(port, token, ids)
        try:
            wait_until(lambda: streams.opened + len(streams.errors) >= len(ids), 120, f"{len(ids)} streams to open")
            # the open streams' holds all taken (their end heard at once): the measure is of open
            # streams, not of their opening
            opened.settling.append(settled(
                lambda: holds() >= streams.opened - streams.closed, "the servers to hold every open stream's end",
            ))
            assert streams.process is not None
            beside.append(measure(label, port, token, probe.pk, share, server_pids, streams.process.pid))
        finally:
            streams.stop()
            opened.add(streams)
        # and given back, before the next round's phase 2 measures the same jobs without streams
        opened.closing.append(settled(lambda: holds() == 0, "the servers to release the closed streams' holds"))
    phases += [merge("jobs", without), merge(label, beside)]
    return phases, opened


def report(phases: list[Phase], streams: Opened, args: argparse.Namespace) -> list[str]:
    idle = percentile(phases[0].latencies, 0.99)
    loaded = percentile(phases[1].latencies, 0.99)
    rows = []
    for phase in phases:
        p99 = percentile(phase.latencies, 0.99)
        rows.append((
            phase.label, str(len(phase.latencies)), f"{percentile(phase.latencies, 0.5):.1f}", f"{p99:.1f}",
            f"{p99 / idle:.2f}x", str(phase.errors), str(phase.jobs_done), str(phase.connections), str(phase.threads),
            f"{phase.rss_mb:.0f}", f"{phase.web_cpu:.2f}", "-" if phase.pg_cpu is None else f"{phase.pg_cpu:.2f}", "",
        ))
    ratio = percentile(phases[2].latencies, 0.99) / loaded
    verdict = "within" if ratio <= TARGET else "OVER"
    lines = table(
        ("phase", "requests", "p50 ms", "p99 ms", "p99/idle", "errors", "jobs ended", "web PG conns",
         "web threads", "web RSS MB", "web CPU s/s", "PG CPU s/s", ""),
        rows,
    )
    lines.append("")
    lines.append(
        f"streams: {streams.opened} opened, {streams.events} events received, {streams.ends} ended with their job, "
        f"{len(streams.errors)} errors{(': ' + streams.errors[0]) if streams.errors else ''}"
    )
    if streams.settling:
        lines.append(
            "the streams' holds (one advisory lock per streamed row) taken in "
            + ", ".join(f"{s:.1f}" for s in streams.settling) + " s after the last stream opened, given back in "
            + ", ".join(f"{s:.1f}" for s in streams.closing) + " s after they closed (not measured: each phase waits)"
        )
    if phases[2].client_cpu is not None:
        lines.append(
            f"the streams' client process (1 asyncio loop, {args.streams} connections): {phases[2].client_cpu:.3f} CPU s/s "
            "during phase 3, beside the servers' above"
        )
    lines.append(f"p99 with the streams open / without them (same jobs running): {ratio:.2f}x ({verdict} the {TARGET}x target)")
    return lines


# --- --loop-cpu: the servers' event loop CPU by callback (bench/loopcpu/sitecustomize.py) -------------

LOOP_CPU = Path(__file__).resolve().parent / "loopcpu"


def loop_cpu(folder: str, phase: Phase) -> dict[str, tuple[float, float]]:
    """Per callback kind, (calls, CPU ms) per second of the phase's measurement, over every server."""
    import glob

    sums: dict[str, list[float]] = {}
    for name in glob.glob(os.path.join(folder, "*.log")):
        with open(name) as log:
            for line in log:
                stamp, calls, ms, key = line.rstrip("\n").split("\t", 3)
                # a record is the second or so before its stamp: counted in the window its stamp is
                # in (a window's edges err by up to a second each, alike in every phase)
                if any(began < float(stamp) <= ended for began, ended in phase.windows):
                    entry = sums.setdefault(key, [0.0, 0.0])
                    entry[0] += float(calls)
                    entry[1] += float(ms)
    seconds = sum(ended - began for began, ended in phase.windows) or 1.0
    return {key: (calls / seconds, ms / seconds) for key, (calls, ms) in sums.items()}


def full_passes(folder: str) -> list[tuple[float, float, float]]:
    """The servers' passes of the oldest generation over the whole run (the streams' opening and
    closing too, which the phases leave out, and each server's `gc.collect()` at its start): per
    second that had any, (seconds since the servers' first record, passes, CPU ms)."""
    import glob

    first, found = float("inf"), []
    for name in glob.glob(os.path.join(folder, "*.log")):
        with open(name) as log:
            for line in log:
                stamp, count, spent, key = line.rstrip("\n").split("\t", 3)
                first = min(first, float(stamp))
                if key == "gc: a pass of generation 2":
                    found.append((float(stamp), float(count), float(spent)))
    return [(stamp - first, count, spent) for stamp, count, spent in sorted(found)]


def collections_report(
    without: dict[str, tuple[float, float]], beside: dict[str, tuple[float, float]], phases: list[Phase]
) -> list[str]:
    """The servers' collector passes by generation in phases 2 and 3 (bench/loopcpu times each with
    the loop thread's CPU clock): how many, and their CPU ms, over the phase's measurement. A pass
    of the oldest generation walks every object of the process (1,000 open streams: ~100,000) and
    stalls every request in flight on that server: what set phase 3's p99 (docs/streams.md)."""
    rows = []
    for generation in (0, 1, 2):
        key = f"gc: a pass of generation {generation}"
        cells = []
        for figures, phase in ((without, phases[0]), (beside, phases[1])):
            seconds = sum(ended - began for began, ended in phase.windows)
            calls, ms = figures.get(key, (0.0, 0.0))
            cells += [f"{calls * seconds:.0f}", f"{ms * seconds:.0f}"]
        rows.append((str(generation), *cells))
    return [
        "the servers' collector passes during the measurement (every server; CPU ms of the loop thread):",
        *table(("generation", "passes, jobs", "ms, jobs", "passes, + streams", "ms, + streams"), rows),
        "",
    ]


def loop_cpu_report(folder: str, phases: list[Phase], top: int = 15) -> list[str]:
    """What the servers' loops spent more per second with the streams open than without (phase 3 - 2)."""
    without, beside = loop_cpu(folder, phases[1]), loop_cpu(folder, phases[2])
    total = [sum(ms for _, ms in figures.values()) for figures in (without, beside)]
    keys = sorted(set(without) | set(beside), key=lambda k: -(beside.get(k, (0, 0))[1] - without.get(k, (0, 0))[1]))
    rows = [
        (key[:90], f"{beside.get(key, (0, 0))[0]:.1f}", f"{without.get(key, (0, 0))[1]:.2f}",
         f"{beside.get(key, (0, 0))[1]:.2f}", f"{beside.get(key, (0, 0))[1] - without.get(key, (0, 0))[1]:+.2f}")
        for key in keys[:top]
    ]
    return [
        "",
        *collections_report(without, beside, phases[1:3]),
        "the servers' passes of the oldest generation over the whole run (the streams' openings and closings too; "
        "at +seconds from the servers' first record: passes, CPU ms): "
        + (", ".join(f"+{at:.0f}s: {count:.0f}, {ms:.0f} ms" for at, count, ms in full_passes(folder)) or "none"),
        "",
        f"the servers' event loops, CPU ms per second (thread_time, every server): {total[0]:.1f} without the streams, "
        f"{total[1]:.1f} with them; the callbacks that cost more with them:",
        *table(("callback (a task's coroutine @ where it waited)", "calls/s", "ms/s jobs", "ms/s + streams", "more"), rows),
    ]


# --- The bench as a program -----------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.streams", description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=1000, help="streams open in phase 3 (default 1000)")
    parser.add_argument("--requests", type=int, default=600, help="timed requests per phase (default 600)")
    parser.add_argument(
        "--rounds", type=int, default=3,
        help="phases 2 and 3 alternate this many times, --requests split between the rounds (default 3)",
    )
    parser.add_argument("--rate", type=float, default=50.0, help="requests per second, paced (default 50)")
    parser.add_argument("--clients", type=int, default=4, help="client threads (default 4)")
    parser.add_argument("--warmup", type=int, default=40, help="untimed requests before each phase (default 40)")
    parser.add_argument("--web-concurrency", type=int, default=2, help="uvicorn worker processes (default 2)")
    parser.add_argument("--concurrency", type=int, default=2, help="Celery worker processes (default 2)")
    parser.add_argument("--job-seconds", type=float, default=0.5, help="each backlog job's sleep (default 0.5)")
    parser.add_argument("--backlog", type=int, default=0, help="backlog jobs (default: --streams plus what the phases run)")
    parser.add_argument("--request-timeout", type=float, default=10.0, help="seconds per request (default 10)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds the instance may take to get ready")
    parser.add_argument(
        "--loop-cpu", action="store_true",
        help="time every callback of the servers' event loops (bench/loopcpu) and report what costs more with the streams",
    )
    args = parser.parse_args(argv)
    if min(args.streams, args.requests, args.rounds, args.clients, args.warmup, args.web_concurrency, args.concurrency) < 1:
        parser.error("--streams, --requests, --rounds, --clients, --warmup and the concurrencies must be at least 1")
    if args.rate <= 0 or args.job_seconds <= 0:
        parser.error("--rate and --job-seconds must be positive")
    if not args.backlog:
        per_second = args.concurrency / args.job_seconds
        # the jobs run while phases 2 and 3 are timed, their warm-ups, and the streams' openings
        timed = 2 * args.requests + 2 * args.rounds * args.warmup
        args.backlog = args.streams + int(per_second * (timed / args.rate + 20 * args.rounds)) + 100
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def body(procs: Procs) -> str:
        from django.contrib.auth import get_user_model
        from django.core.management import call_command

        from api.auth import issue_token
        from bench.cluster import free_port, get

        load_start = load_average()
        machine = context()
        user, _ = get_user_model().objects.get_or_create(username="bench@example.com", defaults={"email": "bench@example.com"})
        call_command("grant", "--email", "bench@example.com", "--scope", "jobs:read", stdout=io.StringIO())
        token = issue_token(user, "jobs:read")
        truncate_jobs()
        port = free_port()
        argv = [
            sys.executable, MANAGE, "start", "--port", str(port), "--no-beat", "--grace", "5",
            "--web-concurrency", str(args.web_concurrency), "--concurrency", str(args.concurrency),
        ]
        # Streams per token per process: the bench's one token holds them all.
        extra = {"CONVEYOR_STREAMS_PER_TOKEN": str(args.streams + 100)}
        loop_folder = None
        if args.loop_cpu:
            loop_folder = tempfile.mkdtemp(prefix="cvb-loopcpu-")
            extra["CONVEYOR_BENCH_LOOP_CPU"] = loop_folder
            extra["PYTHONPATH"] = os.pathsep.join(filter(None, [str(LOOP_CPU), os.environ.get("PYTHONPATH")]))
        proc: Proc = procs.spawn("conveyor", argv, child_env(**extra))
        procs.wait_ready(proc, args.timeout)

        def answers() -> bool:
            try:
                return get(port, "/health/ready", {}, 2.0)[0] == 200
            except OSError:
                return False

        wait_until(answers, args.timeout, f"GET /health/ready on port {port}", [proc])
        began = time.perf_counter()
        print(f"{PROG}: {args.streams} streams, {args.requests} requests per phase at {args.rate:g}/s ...", flush=True)
        try:
            phases, streams = run(port, token, args, gunicorn_workers(proc.process.pid))
            lines = report(phases, streams, args)
            if loop_folder:
                lines += loop_cpu_report(loop_folder, phases)
        finally:
            if loop_folder:
                shutil.rmtree(loop_folder, ignore_errors=True)
        truncate_jobs()
        return "\n".join([
            f"{PROG}: {machine}; load average {load_start} at the start; "
            f"gunicorn x{args.web_concurrency} (uvicorn workers), Celery x{args.concurrency}; "
            f"{time.perf_counter() - began:.0f}s",
            *lines,
        ])

    return session(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
