"""`python -m bench.per_run`: what one job costs on each one-by-one path, in this process, no Celery.

    python -m bench.per_run --jobs 400 --rounds 2
    python -m bench.per_run --profile worker:djtasks      cProfile (CPU time) of that side and path

The three ways a user enqueues one job at a time (issue 28): plain `jobs.enqueue`
(`examples.echo`), django.tasks' `task.enqueue()` on ConveyorBackend (examples/djtasks `add`) and
Celery's `.delay()` of a `@shared_task` made durable by conveyor_celery (examples/tasks.py `add`).
For each, N jobs enqueued here (the client side: the row and the publish, coalescing off), then
run here one after the other by `runner.execute`, as a worker's pool process runs a message's id
(the worker side without Celery's own cost per message, which is the same on every path). Per job
and side: this process's CPU, PostgreSQL's CPU, and the statements PostgreSQL executed (its
`log_statement = 'all'`, set on this run's embedded server: BEGIN and COMMIT count). On a loaded
machine the CPU figures move with the load; the statement counts do not.
"""
from __future__ import annotations

import argparse
import cProfile
import glob
import io
import os
import pstats
import sys
import time
from typing import Any, Callable

from bench.common import Procs, postmaster_pid, session, table, tree_cpu, truncate_jobs

PATHS = ("plain", "djtasks", "delay")
WORKER = "per-run@bench/1"


def server_logs() -> list[str]:
    """PostgreSQL's log files (the embedded server's, under its data folder), with statements logged."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("ALTER SYSTEM SET log_statement = 'all'")
        cursor.execute("SELECT pg_reload_conf()")
        cursor.execute("SHOW data_directory")
        data = cursor.fetchone()[0]
    time.sleep(0.5)
    found = [p for p in glob.glob(os.path.join(data, "**", "*log*"), recursive=True) if os.path.isfile(p)]
    return found + glob.glob(os.path.join(os.path.dirname(data), "*.log"))


class Statements:
    """Counts the statements PostgreSQL logs from `start()` on."""

    def __init__(self, logs: list[str]) -> None:
        self.logs = logs

    def start(self) -> None:
        self.sizes = {path: os.path.getsize(path) for path in self.logs}

    def count(self) -> int:
        found = 0
        for path, size in self.sizes.items():
            with open(path, errors="replace") as log:
                log.seek(size)
                found += sum(1 for line in log if "statement: " in line or "execute " in line)
        return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.per_run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--profile", default="", help="SIDE:PATH (client or worker : plain, djtasks or delay): cProfile it, once")
    args = parser.parse_args(argv)

    def body(procs: Procs) -> str:
        from django.conf import settings

        from examples.djtasks.tasks import add as djtasks_add
        from examples.tasks import add as celery_add
        from jobs import enqueue
        from jobs.engine import runner
        from jobs.models import Job

        settings.CONVEYOR["PUBLISH_COALESCE_MS"] = 0.0  # one message per job, as not coalesced
        calls: dict[str, Callable[[int], Any]] = {
            "plain": lambda i: enqueue("examples.echo", {"i": i}),
            "djtasks": lambda i: djtasks_add.enqueue(i, 1),
            "delay": lambda i: celery_add.delay(i, 1),
        }
        statements = Statements(server_logs())
        postmaster = postmaster_pid()
        results: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
        profiles: list[str] = []

        def measured(side: str, path: str, work: Callable[[], None], n: int) -> None:
            profile = cProfile.Profile(time.process_time) if args.profile == f"{side}:{path}" and not profiles else None
            statements.start()
            pg0, cpu0 = tree_cpu(postmaster), time.process_time()
            if profile:
                profile.enable()
            work()
            if profile:
                profile.disable()
                text = io.StringIO()
                pstats.Stats(profile, stream=text).sort_stats("cumulative").print_stats(50)
                profiles.append(text.getvalue())
            cpu, pg = time.process_time() - cpu0, tree_cpu(postmaster) - pg0
            results.setdefault((side, path), []).append((cpu * 1000 / n, pg * 1000 / n, statements.count() / n))

        def run_all() -> None:
            for job_id in Job.objects.order_by("id").values_list("id", flat=True):
                runner.execute(job_id, WORKER, True)

        for round_ in range(args.rounds + 1):  # round 0 warms up
            for path, call in calls.items():
                truncate_jobs()
                n = args.jobs if round_ else 20
                if round_:
                    measured("client", path, lambda: [call(i) for i in range(n)], n)
                    measured("worker", path, run_all, n)
                else:
                    for i in range(n):
                        call(i)
                    run_all()
                if Job.objects.filter(status="succeeded").count() != n:
                    raise RuntimeError(f"{path}: not every job succeeded")
        truncate_jobs()
        rows = []
        for (side, path), runs in results.items():
            med = [sorted(v)[(len(v) - 1) // 2] for v in zip(*runs)]
            rows.append((f"{side}: {path}", f"{med[0]:.3f}", f"{med[1]:.3f}", f"{med[2]:.2f}",
                         ", ".join(f"{cpu:.3f}" for cpu, _, _ in runs)))
        header = ("per job (median of rounds)", "CPU ms", "PostgreSQL CPU ms", "statements", "CPU ms per round")
        return "\n".join([f"bench.per_run: {args.jobs} jobs per path and round, {args.rounds} rounds; client: enqueue "
                          "(row + publish, not coalesced); worker: runner.execute in this process (no Celery)",
                          *table(header, sorted(rows)), *profiles])

    return session("bench.per_run", body)


if __name__ == "__main__":
    sys.exit(main())
