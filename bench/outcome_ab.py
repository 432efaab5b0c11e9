"""`python -m bench.outcome_ab`: a chain step's outcome in one statement against the general path, in process.

    python -m bench.outcome_ab --chains 300 --rounds 2

Issue 28's lever on the chain handoff (jobs.engine.continuing: the success and the next step's
insert in one statement) measured where it acts, without Celery's hops, whose noise on a shared
machine hides a millisecond (`bench.handoff_ab` measures the whole path across two workers). In
this process, on embedded servers of its own: two-step chains (examples.echo -> examples.ping);
step 1 is run by `runner.execute` as a worker consuming neither queue runs it, and a consumer
thread takes the early message off Redis as it arrives and claims and runs step 2
(`published_early`, as the next worker's pool process does), often while step 1's COMMIT is in
flight. The two sides alternate chain by chain ("general": `continuing.applies` answering False;
"one statement": as shipped), so a load that moves moves both. Per side: the handoff (step 2's
started_at - step 1's finished_at, PostgreSQL's clock, as bench.jobs measures it), the time from
the outcome's start to its publish and to its COMMIT's result, and the outcome's CPU (its
thread's) to the publish.
"""
from __future__ import annotations

import argparse
import base64
import json
import queue
import sys
import threading
import time
from typing import Any

from bench.common import Procs, load_average, percentile, redis_client, session, table, truncate_jobs

SIDES = ("general", "one statement")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.outcome_ab", description=__doc__.split("\n\n")[0])
    parser.add_argument("--chains", type=int, default=300, help="chains per side and round")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)

    def body(procs: Procs) -> str:
        from django.db import connections

        from jobs import Step, start_chain
        from jobs.engine import continuing, early, runner
        from jobs.models import Job

        started_load = load_average()
        side = {"now": SIDES[0]}
        marks: dict[str, float] = {}
        shipped_applies, shipped_succeed, shipped_send = continuing.applies, runner._succeed, early.send

        def applies(*a: Any, **k: Any) -> bool:
            return side["now"] == SIDES[1] and shipped_applies(*a, **k)

        def first_step() -> bool:  # step 1's outcome (this thread), not the consumer's step 2
            return threading.current_thread() is threading.main_thread()

        def succeed(*a: Any, **k: Any) -> str:
            if first_step():
                marks["start"], marks["cpu"] = time.perf_counter(), time.thread_time()
            out = shipped_succeed(*a, **k)
            if first_step():
                marks["end"] = time.perf_counter()
            return out

        def send(messages: list[Any]) -> int:
            if first_step():
                marks["publish"], marks["publish_cpu"] = time.perf_counter(), time.thread_time()
            return shipped_send(messages)

        continuing.applies, runner._succeed, early.send = applies, succeed, send
        keys = ["notifications"] + [f"notifications:{p}" for p in range(1, 10)]
        arrived: queue.Queue[int] = queue.Queue()
        stop = threading.Event()

        def consumer() -> None:  # the next worker's pool process: claim as the message arrives
            client = redis_client()
            try:
                while not stop.is_set():
                    item = client.brpop(keys, timeout=1)
                    if item is None:
                        continue
                    envelope = json.loads(item[1])
                    payload = envelope["body"]
                    if envelope["properties"].get("body_encoding") == "base64":
                        payload = base64.b64decode(payload)
                    (job_id, *_), _kwargs, _embed = json.loads(payload)
                    runner.execute(int(job_id), worker="next@bench/2/x", published_early=True)
                    arrived.put(int(job_id))
            finally:
                connections.close_all()

        thread = threading.Thread(target=consumer, daemon=True)
        thread.start()
        results: dict[str, list[tuple[float, float, float, float]]] = {s: [] for s in SIDES}
        try:
            for round_no in range(args.rounds):
                truncate_jobs()
                for n in range(2 * args.chains):
                    side["now"] = SIDES[n % 2]
                    chain = start_chain([Step("examples.echo", {"n": n}), Step("examples.ping", {})])
                    first = Job.objects.get(chain=chain, chain_index=0)
                    marks.clear()
                    runner.execute(first.pk, worker="first@bench/1/x")
                    second = Job.objects.get(pk=arrived.get(timeout=30))
                    first.refresh_from_db()
                    handoff = (second.started_at - first.finished_at).total_seconds() * 1000
                    results[side["now"]].append((handoff, (marks["publish"] - marks["start"]) * 1000,
                                                 (marks["end"] - marks["start"]) * 1000,
                                                 (marks["publish_cpu"] - marks["cpu"]) * 1000))
                print(f"bench.outcome_ab:   round {round_no + 1} done", flush=True)
        finally:
            stop.set()
            thread.join(5)
        rows = []
        for name in SIDES:
            columns = list(zip(*results[name]))
            rows.append((name, *(f"{percentile(list(c), 0.5):.2f}" for c in columns), f"{percentile(list(columns[0]), 0.99):.2f}"))
        base = percentile(list(list(zip(*results[SIDES[0]]))[0]), 0.5)
        new = percentile(list(list(zip(*results[SIDES[1]]))[0]), 0.5)
        lines = table(("outcome of a chain step", "handoff p50 ms", "to publish p50 ms", "to COMMIT read p50 ms",
                       "CPU to publish p50 ms", "handoff p99 ms"), rows)
        lines += ["", f"one statement / general, handoff p50: {new / base:.2f}x; {args.chains} chains per side and round, "
                      f"{args.rounds} rounds, sides alternating chain by chain",
                  f"load average at start {started_load}, at end {load_average()}"]
        return "\n".join(lines)

    return session("bench.outcome_ab", body)


if __name__ == "__main__":
    sys.exit(main())
