"""`python -m bench.handoff_ab --base REV`: the chain handoff across two workers, this tree's
workers against REV's and bare Celery's task -> task, in one run, rounds interleaved.

    python -m bench.handoff_ab --base HEAD~1 --chains 200 --rounds 3

`bench.jobs`' handoff phase, sides A and B: two-step chains (examples.echo on `default`, then
examples.ping on `notifications`), one worker per queue, so the local handoff does not apply
(jobs.engine.handoff: a worker runs the next step itself only when it consumes its queue). Each
round runs bare Celery (a task on queue A publishes one on queue B, Celery's defaults: the base
of the ratios), this tree's two workers ("new") and REV's ("base", from `git archive REV`), the
order alternating from round to round; the handoff is step 2's started_at - step 1's finished_at
(PostgreSQL's clock), bare Celery's B's start - A's end. A lever of the handoff (issue 28) is kept
only if this shows it; on a shared machine, compare inside one run.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench import jobs as bj
from bench.ab import alternating, export, session_removing
from bench.common import ROOT, Procs, child_env, percentile, table, truncate_jobs, wait_until


def start_workers(procs: Procs, args: argparse.Namespace, root: Path, side: str) -> list[bj.Proc]:
    """Two `manage.py start` workers of the tree at `root`, one for each queue of the chain."""
    started = []
    for queue in ("default", "notifications"):
        argv = [sys.executable, str(root / "manage.py"), "start", "--queues", queue, "--pool", args.pool,
                "--concurrency", str(args.concurrency), "--grace", "10"]
        env = child_env(WORKER_MODE="worker", WORKER_ID=f"{side}-{queue}@bench", PYTHONPATH=str(root))
        started.append(procs.spawn(f"conveyor-{side}-{queue}", argv, env, cwd=root))
    for proc in started:
        procs.wait_ready(proc)
    return started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.handoff_ab", description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="the git revision to compare this tree with")
    parser.add_argument("--new", default=None, help="a git revision as the new side (default: this tree's files)")
    parser.add_argument("--chains", type=int, default=200)
    parser.add_argument("--chain-interval", type=float, default=50.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--pool", default="prefork", choices=("prefork", "threads", "solo"))
    args = parser.parse_args(argv)
    base_root = export(args.base)
    new_root = export(args.new) if args.new else ROOT

    def body(procs: Procs) -> str:
        from django.db import connection

        from bench import bare
        from jobs import Step, start_chain
        from jobs.models import Chain, ChainStatus

        bare.configure(bj.bare_config())
        bare.defaults_app.conf.update(bj.bare_defaults_config())
        client = bj.redis_client()
        client.delete(*bare.KEYS)
        bare_workers = bj.start_bare_workers(procs, args, defaults=True, **{"bare-a": bare.QUEUE_A, "bare-b": bare.QUEUE_B})
        p50s: dict[str, list[float]] = {"bare": [], "base": [], "new": []}
        samples: dict[str, list[float]] = {"bare": [], "base": [], "new": []}

        def conveyor_run(workers: list[bj.Proc], n: int) -> list[float]:
            truncate_jobs()
            bj.paced(n, args.chain_interval / 1000, lambda i: start_chain([Step("examples.echo", {"i": i}), Step("examples.ping", {})]))
            wait_until(lambda: Chain.objects.filter(status=ChainStatus.SUCCEEDED).count() >= n, 60.0 + n * 0.2, "chains", workers)
            with connection.cursor() as cursor:
                cursor.execute("""SELECT EXTRACT(EPOCH FROM (b.started_at - a.finished_at)) * 1000
                                    FROM jobs_job a JOIN jobs_job b ON b.chain_id = a.chain_id AND b.chain_index = 1
                                   WHERE a.chain_index = 0""")
                return [float(row[0]) for row in cursor.fetchall()]

        def bare_run(n: int) -> list[float]:
            client.delete(bare.HOPS_DONE_KEY, bare.A_END_KEY, bare.B_START_KEY)
            bj.paced(n, args.chain_interval / 1000,
                     lambda i: bare.defaults_app.send_task("bench.hop_a", (i,), queue=bare.QUEUE_A, routing_key=bare.QUEUE_A))
            wait_until(lambda: int(client.get(bare.HOPS_DONE_KEY) or 0) >= n, 60.0 + n * 0.2, "bare hand-offs", bare_workers)
            wait_until(lambda: client.hlen(bare.A_END_KEY) >= n, 30.0, "bare step 1 end times", bare_workers)
            ends, starts = client.hgetall(bare.A_END_KEY), client.hgetall(bare.B_START_KEY)
            return [(float(starts[key]) - float(ends[key])) * 1000 for key in starts]

        bare_run(20)
        for round_ in range(1, args.rounds + 1):
            for side, root in alternating(round_, new_root, base_root):
                workers = start_workers(procs, args, root, side)
                conveyor_run(workers, 20)  # warm-up: connections, imports, prepared statements
                bare_lat = bare_run(args.chains)
                lat = conveyor_run(workers, args.chains)
                procs.stop(*workers)
                for key, values in (("bare", bare_lat), (side, lat)):
                    p50s[key].append(percentile(values, 0.5))
                    samples[key] += values
                print(f"bench.handoff_ab:   round {round_} {side}: p50 {percentile(lat, 0.5):.2f} ms, "
                      f"bare Celery {percentile(bare_lat, 0.5):.2f} ms", flush=True)
        rows = []
        labels = (("bare", "bare Celery task -> task"), ("base", f"Conveyor base ({args.base})"),
                  ("new", f"Conveyor new ({args.new or 'this tree'})"))
        for key, label in labels:
            values = samples[key]
            rows.append((label, f"{percentile(values, 0.5):.2f}", f"{percentile(values, 0.99):.2f}",
                         f"{percentile(values, 0.5) / percentile(samples['bare'], 0.5):.2f}x",
                         ", ".join(f"{v:.2f}" for v in p50s[key])))
        header = ("chain handoff across two workers", "p50 ms", "p99 ms", "p50 / bare", "p50 per round")
        return "\n".join([f"bench.handoff_ab: {args.chains} chains per round and side, {args.rounds} rounds, "
                          f"one every {args.chain_interval:g} ms; load average {bj.load_average()}", *table(header, rows)])

    return session_removing("bench.handoff_ab", body, base_root, *([new_root] if args.new else []))

if __name__ == "__main__":
    sys.exit(main())
