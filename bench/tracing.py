"""`python -m bench.tracing`: what tracing costs per job, off and on, in one run.

    python -m bench.tracing                   10 rounds of 300 jobs each way
    python -m bench.tracing --jobs 30 --rounds 2   a quick run

A job's traced path, in this process (no Celery worker: the same functions a worker's task
calls): `jobs.enqueue` of an `examples.echo` job (its insert, its publish after commit), then
`runner.execute` (the claim, the run, the outcome). Rounds alternate off and on, so that load
from elsewhere on the machine falls on both alike; the figure of each side is its median round.

- off: tracing as every deployment has it by default (no OTEL_* variable): the hot path's added
  work is a few reads of one boolean and a NULL column. Its cost is put as what those reads take
  (timed on their own) against a job's time: they are below what a round-to-round comparison
  could measure, which is the point.
- on: the SDK as project/tracing.py sets it up (its sampler, a BatchSpanProcessor, the OTLP/HTTP
  exporter) exporting to an OTLP receiver in this process (hosts.otlp), the store's statements
  through the psycopg instrumentation: the extra time per job, and the spans received per job.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
import timeit
import urllib.request

from bench.common import Procs, child_env, context, load_average, redis_client, session, table, truncate_jobs

PROG = "bench.tracing"
WORKER = "bench-tracing@bench/1"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=300, help="jobs per round")
    parser.add_argument("--rounds", type=int, default=10, help="rounds of each side (off, on), interleaved")
    return parser.parse_args(argv)


def one_round(jobs: int) -> tuple[float, float]:
    """(seconds per job, CPU seconds of this process per job): enqueue, then run, `jobs`
    examples.echo jobs in this process. The CPU counts every thread of the process (the span
    exporter's too) and not the waits on PostgreSQL and Redis, which a loaded machine stretches."""
    from jobs import enqueue
    from jobs.engine import runner

    began, cpu = time.perf_counter(), time.process_time()
    for n in range(jobs):
        job = enqueue("examples.echo", {"n": n})
        outcome = runner.execute(job.pk, WORKER)
        if outcome != "succeeded":
            raise RuntimeError(f"job {job.pk}: {outcome} ({outcome.error[-300:]})")
    return (time.perf_counter() - began) / jobs, (time.process_time() - cpu) / jobs


def check_cost(per_job_checks: int = 6) -> float:
    """Seconds the off path's added checks (`if tracing.on`) take per job: the runner's two, the
    enqueue's, the insert's column, the log filter's; counted generously."""
    from jobs.engine import tracing

    n = 1_000_000
    seconds = timeit.timeit("tracing.on", globals={"tracing": tracing}, number=n)
    return seconds / n * per_job_checks


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def body(procs: Procs) -> str:
        from bench.cluster import free_port
        from jobs.engine import tracing
        from project import tracing as setup

        load_start, machine = load_average(), context()
        truncate_jobs()
        # The receiver in a process of its own: decoding the spans is not this process's cost.
        port = free_port()
        receiver = procs.spawn("otlp-receiver", [sys.executable, "-m", "hosts.otlp", str(port)], child_env())
        procs.wait_ready(receiver, 30, marker="listening on")

        def received() -> int:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/count", timeout=5) as response:
                return int(response.read())

        environ = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}"}
        provider = setup.provider_for("bench", environ)
        cursor = setup.statement_cursor(provider)

        def traced(on: bool) -> None:
            if on:
                tracing.enable(provider)
                tracing.statement_cursor = cursor
            else:
                tracing.disable()

        # Warm-up: connections, prepared statements, imports; not timed.
        for on in (False, True):
            traced(on)
            one_round(max(5, args.jobs // 10))
        provider.force_flush()
        before = received()
        times: dict[bool, list[float]] = {False: [], True: []}
        cpus: dict[bool, list[float]] = {False: [], True: []}
        print(f"{PROG}: {args.rounds} rounds x {args.jobs} jobs each way ...", flush=True)
        for round_number in range(args.rounds):
            for on in ((False, True) if round_number % 2 == 0 else (True, False)):
                traced(on)
                wall, cpu = one_round(args.jobs)
                times[on].append(wall)
                cpus[on].append(cpu)
            truncate_jobs()
            redis_client().flushdb()  # the messages published for jobs already run
        traced(False)
        provider.force_flush()
        provider.shutdown()
        spans = received() - before
        off, on = statistics.median(times[False]), statistics.median(times[True])
        cpu_off, cpu_on = statistics.median(cpus[False]), statistics.median(cpus[True])
        checks = check_cost()
        rows = [
            ("off (default)", f"{off * 1e6:,.0f}", f"{cpu_off * 1e6:,.0f}", "-",
             f"{checks * 1e9:,.0f} ns of checks = {100 * checks / cpu_off:.3f}% of a job's CPU", "0"),
            ("on (OTLP/HTTP)", f"{on * 1e6:,.0f}", f"{cpu_on * 1e6:,.0f}",
             f"{(cpu_on - cpu_off) * 1e6:+,.0f} us CPU ({cpu_on / cpu_off:.2f}x), {(on - off) * 1e6:+,.0f} us wall ({on / off:.2f}x)",
             "-", f"{spans / (args.jobs * args.rounds):.1f}"),
        ]
        return "\n".join([
            f"{PROG}: {machine}; load average {load_start} at the start; {args.rounds} rounds x {args.jobs} jobs each way, "
            "interleaved; enqueue + run in one process (examples.echo); median round",
            *table(("tracing", "us per job", "CPU us per job", "on minus off", "cost of the off path", "spans per job"), rows),
        ])

    return session(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
