"""`python -m bench.history`: the jobs table with a large history, retention, a long transaction (issue 29).

    python -m bench.history                                   10M finished + 1M pending rows, 10-minute hold
    python -m bench.history --history 100000 --pending 10000 --hold 60 --window 20    a quick run

One PostgreSQL server, two databases made from the same migrated template: `empty`, and
`history`, filled with --history finished jobs (ended 40 to 10 days ago, 2% dead) and --pending
pending ones (delayed by a day: in the table, not due), with INSERT ... SELECT generate_series in
batches, the indexes built after the fill, then VACUUM ANALYZE (old history is all-visible).

1. History. Rounds, the sides interleaved: for each database in turn, a Conveyor worker
   (`manage.py start`, WORKER_MODE=worker) pointed at it runs --jobs examples.echo jobs enqueued
   with enqueue_many (end to end: first enqueue to last row succeeded); then --claims claims by
   the bench itself, the worker's own statement (store.claim, CLAIM_SQL), each timed (p50/p99);
   then the relay's scans (store.mark_due, store.mark_stale), timed. Bare Celery (Celery's
   defaults, bench/bare.py) runs the same number of no-op tasks in every round: the base.
2. Retention (history database, a worker kept busy beside it): the cleanup's deletes for
   --retention-seconds, before (Django's delete() of 1,000 rows found by a query) and now
   (store.delete_finished_from: by job_finished_idx from where the last batch stopped, SKIP
   LOCKED, no rows loaded), interleaved: rows deleted per second against --rate (1,000 jobs/s of
   new work need 1,000 deletes/s).
3. Vacuum held back (history database): a worker kept busy (a feeder
   keeps a backlog), a REPEATABLE READ transaction opened and held for --hold seconds, then
   committed; --window seconds before and after. Per part: jobs/s (rows finished in it, by the
   database's clock), claim latency (a few timed claims a second), the relay's scans, and dead
   tuples of jobs_job (pg_stat_user_tables.n_dead_tup) at its end.

With no DATABASE_URL it runs on an embedded PostgreSQL in a fresh folder under /tmp, removed at
the end (10M rows take ~4 GB there); with DATABASE_URL it creates and drops the two databases
beside the configured one. Figures taken on a shared machine are noisy: compare inside a run.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from bench.common import (
    BenchError,
    Proc,
    Procs,
    bare_config,
    bare_defaults_config,
    context,
    load_average,
    percentile,
    queue_length,
    redis_client,
    session,
    table,
    wait_until,
)
from bench.jobs import start_bare_workers, start_conveyor_workers

PROG = "bench.history"
CLAIM_QUEUE = "bench-history-claims"  # no worker reads it: the bench's own claims
JOB = "examples.echo"


def say(text: str) -> None:
    print(f"{PROG}: {text}", flush=True)


# --- Databases ----------------------------------------------------------------------------------


class Databases:
    """The template (Django's migrated database), `empty` and `history` made from it."""

    def __init__(self) -> None:
        from django.conf import settings

        self.base_url = settings.DATABASE_URL
        self.template = settings.DATABASES["default"]["NAME"]
        self.names = {"empty": f"{self.template}_empty", "history": f"{self.template}_history"}
        self.created: list[str] = []

    def admin(self) -> Any:
        import psycopg
        from django.db import connection

        params = connection.get_connection_params()
        params.pop("cursor_factory", None)
        params.pop("context", None)
        params.pop("prepare_threshold", None)
        params["dbname"] = "postgres"
        return psycopg.connect(**{k: v for k, v in params.items() if k in ("dbname", "host", "port", "user", "password")}, autocommit=True)

    def create(self) -> None:
        from django.db import connections

        connections.close_all()  # CREATE DATABASE ... TEMPLATE wants no one connected to it
        with self.admin() as admin:
            for name in self.names.values():
                admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
                admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
                self.created.append(name)

    def drop(self) -> None:
        from django.db import connections

        connections.close_all()
        if not self.created:
            return
        with self.admin() as admin:
            for name in self.created:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.created.clear()

    def use(self, side: str) -> None:
        """This process's connections (every alias, every thread from now on) on `side`'s database."""
        from django.db import connections

        connections.close_all()
        for alias in connections:
            connections[alias].settings_dict["NAME"] = self.names[side]
        connections.close_all()

    def url(self, side: str) -> str:
        parts = urlsplit(self.base_url)
        return urlunsplit(parts._replace(path="/" + self.names[side]))


def sql(statement: str, params: Any = None, alias: str = "default") -> list[tuple]:
    from django.db import connections

    with connections[alias].cursor() as cursor:
        cursor.execute(statement, params)
        return cursor.fetchall() if cursor.description else []


FILL_FINISHED_SQL = """
INSERT INTO jobs_job (type, queue, input, output, status, attempt, max_attempts, priority, run_after,
                      published_at, worker, lease_expires_at, progress, progress_message, cancel_requested,
                      held, error, errors, crashes, created_at, started_at, finished_at, updated_at)
SELECT %(type)s, 'default', jsonb_build_object('i', g), jsonb_build_object('i', g),
       CASE WHEN g %% 50 = 0 THEN 'dead' ELSE 'succeeded' END, 1, 4, 5, t, t, 'history@bench', t + interval '30 s',
       100, '', false, '', '', '[]'::jsonb, 0, t, t, t + interval '10 ms', t + interval '10 ms'
  FROM generate_series(%(first)s::bigint, %(last)s::bigint) g,
       LATERAL (SELECT now() - interval '40 days' + (g::float8 / %(total)s) * interval '30 days' AS t) x
"""
FILL_PENDING_SQL = """
INSERT INTO jobs_job (type, queue, input, status, attempt, max_attempts, priority, run_after, published_at,
                      worker, progress, progress_message, cancel_requested, held, error, errors, crashes,
                      created_at, updated_at)
SELECT %(type)s, 'default', jsonb_build_object('i', g), 'pending', 0, 4, 5,
       now() + interval '1 day' + g * interval '1 ms', NULL, '', 0, '', false, '', '', '[]'::jsonb, 0, now(), now()
  FROM generate_series(%(first)s::bigint, %(last)s::bigint) g
"""
# The secondary indexes, dropped for the fill and built after it (as a restore does): a sort
# each instead of 11M random insertions into each.
INDEXES_SQL = """
SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid) FROM pg_index i
 WHERE i.indrelid = 'jobs_job'::regclass AND NOT i.indisprimary
   AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)
"""


def fill(finished: int, pending: int, batch: int) -> float:
    """Fill this database's jobs table; return the seconds it took."""
    from django.db import connection

    began = time.perf_counter()
    indexes = sql(INDEXES_SQL)
    for name, _ in indexes:
        sql(f"DROP INDEX {name}")
    for statement, total in ((FILL_FINISHED_SQL, finished), (FILL_PENDING_SQL, pending)):
        for first in range(1, total + 1, batch):
            last = min(total, first + batch - 1)
            sql(statement, {"type": JOB, "first": first, "last": last, "total": max(1, total)})
            say(f"  filled {last:,} of {total:,} ({time.perf_counter() - began:.0f}s)")
    with connection.cursor() as cursor:
        cursor.execute("SET maintenance_work_mem = '256MB'")
        for _, definition in indexes:
            cursor.execute(definition)
    say(f"  indexes built ({time.perf_counter() - began:.0f}s); VACUUM ANALYZE ...")
    sql("VACUUM (ANALYZE) jobs_job")
    return time.perf_counter() - began


# --- Measurements ---------------------------------------------------------------------------------


def next_id() -> int:
    return sql("SELECT COALESCE(max(id), 0) + 1 FROM jobs_job")[0][0]


def succeeded_since(first: int) -> int:
    return sql("SELECT count(*) FROM jobs_job WHERE id >= %s AND status = 'succeeded'", [first])[0][0]


def enqueue_batch(n: int, size: int = 500) -> None:
    from jobs import Step, enqueue_many

    for start in range(0, n, size):
        enqueue_many([Step(JOB, {"i": i}) for i in range(start, min(n, start + size))])


def run_jobs(n: int, worker: Proc, timeout: float) -> float:
    """jobs/s end to end: enqueue_many of n jobs until every row succeeded."""
    first = next_id()
    start = time.perf_counter()
    enqueue_batch(n)
    done = wait_until(lambda: succeeded_since(first) >= n, timeout, f"{n} succeeded rows", [worker])
    return n / (done - start)


CLAIM_ROWS_SQL = """
INSERT INTO jobs_job (type, queue, input, status, attempt, max_attempts, priority, run_after, published_at,
                      worker, progress, progress_message, cancel_requested, held, error, errors, crashes,
                      created_at, updated_at)
SELECT %s, %s, '{}'::jsonb, 'pending', 0, 1, 5, now(), now(), '', 0, '', false, '', '', '[]'::jsonb, 0, now(), now()
  FROM generate_series(1, %s)
RETURNING id
"""


def claim_latencies(n: int) -> list[float]:
    """ms of each of n claims with the workers' own statement (store.claim) on rows of a queue no
    worker reads; the rows are deleted after."""
    from jobs.engine import store

    ids = [row[0] for row in sql(CLAIM_ROWS_SQL, [JOB, CLAIM_QUEUE, n])]
    times = []
    for job_id in ids:
        began = time.perf_counter()
        claimed = store.claim(job_id, "claims@bench", 30.0)
        times.append((time.perf_counter() - began) * 1000)
        if claimed is None:
            raise BenchError(f"the bench's claim of row {job_id} found nothing")
    sql("DELETE FROM jobs_job WHERE id = ANY(%s)", [ids])
    return times


def relay_scan_ms() -> float:
    """ms of one pass of the relay's two scans (nothing due: the cost of looking)."""
    from jobs.engine import store

    began = time.perf_counter()
    store.mark_due(500)
    store.mark_stale(30, [], 300, 500)
    return (time.perf_counter() - began) * 1000


def dead_tuples() -> tuple[int, int]:
    """(n_dead_tup, n_live_tup) of jobs_job, as the statistics last reported them."""
    sql("SELECT pg_stat_clear_snapshot()")
    row = sql("SELECT n_dead_tup, n_live_tup FROM pg_stat_user_tables WHERE relname = 'jobs_job'")
    return (row[0][0], row[0][1]) if row else (0, 0)


class Feeder(threading.Thread):
    """Keeps `backlog` due pending rows in the queue: the worker never waits for work."""

    def __init__(self, backlog: int) -> None:
        super().__init__(daemon=True)
        self.backlog, self.stopping, self.error = backlog, threading.Event(), None
        self.enqueued = 0

    def run(self) -> None:
        from django.db import connections

        try:
            while not self.stopping.is_set():
                # Redis's count, not the table's: a count over the claim index would itself
                # slow down as dead index entries pile up, and measure the bench instead.
                waiting = queue_length("default")
                if waiting < self.backlog:
                    enqueue_batch(200, 200)
                    self.enqueued += 200
                else:
                    time.sleep(0.05)
        except Exception as exc:  # reported by stop()
            self.error = exc
        finally:
            connections.close_all()

    def stop(self) -> None:
        self.stopping.set()
        self.join(30)
        if self.error:
            raise BenchError(f"the feeder failed: {self.error!r}")


def db_now() -> Any:
    return sql("SELECT clock_timestamp()")[0][0]


def finished_between(first: int, t0: Any, t1: Any) -> int:
    return sql(
        "SELECT count(*) FROM jobs_job WHERE id >= %s AND finished_at >= %s AND finished_at < %s", [first, t0, t1]
    )[0][0]


# --- Phases -----------------------------------------------------------------------------------------


@dataclass
class Side:
    rates: list[float] = field(default_factory=list)
    claims: list[float] = field(default_factory=list)
    relay: list[float] = field(default_factory=list)


def history_phase(procs: Procs, args: argparse.Namespace, dbs: Databases, bare_worker: Proc, keep: bool) -> dict[str, Side]:
    """The rounds; `keep`: the last round's history worker is left running (the next phases' worker)."""
    from bench import bare

    client = redis_client()
    sides = {"bare": Side(), "empty": Side(), "history": Side()}
    timeout = args.timeout or 120 + args.jobs / 10

    def bare_run(n: int) -> float:
        client.set(bare.DONE_KEY, 0)
        start = time.perf_counter()
        for _ in range(n):
            bare.noop_defaults.apply_async(queue=bare.QUEUE_DEFAULTS, routing_key=bare.QUEUE_DEFAULTS)
        done = wait_until(lambda: int(client.get(bare.DONE_KEY) or 0) >= n, timeout, f"{n} bare tasks", [bare_worker])
        return n / (done - start)

    bare_run(args.warmup)
    for round_ in range(args.rounds):
        for side in ("empty", "history"):
            dbs.use(side)
            (worker,) = _worker(procs, args, dbs, side, round_)
            try:
                run_jobs(args.warmup, worker, timeout)
                rate = run_jobs(args.jobs, worker, timeout)
                claims = claim_latencies(args.claims)
                relay = [relay_scan_ms() for _ in range(5)]
            finally:
                if not (keep and side == "history" and round_ == args.rounds - 1):
                    procs.stop(worker, grace=0)  # what is measured is over: killed, no drain (a warm shutdown took 1-3 s)
            sides[side].rates.append(rate)
            sides[side].claims += claims
            sides[side].relay += relay
            say(
                f"  round {round_ + 1} {side}: {rate:,.0f} jobs/s, claim p50 {percentile(claims, 0.5):.2f} ms "
                f"p99 {percentile(claims, 0.99):.2f} ms, relay scans {statistics.median(relay):.2f} ms"
            )
        rate = bare_run(args.jobs)
        sides["bare"].rates.append(rate)
        say(f"  round {round_ + 1} bare Celery (defaults): {rate:,.0f} tasks/s")
    return sides


def _worker(procs: Procs, args: argparse.Namespace, dbs: Databases, side: str, round_: int) -> list[Proc]:
    """A Conveyor worker on `side`'s database (its DATABASE_URL: the child's environment)."""
    from django.conf import settings

    saved, settings.DATABASE_URL = settings.DATABASE_URL, dbs.url(side)  # child_env hands it on
    try:
        return start_conveyor_workers(procs, args, **{f"conveyor-{side}-{round_ + 1}": "default"})
    finally:
        settings.DATABASE_URL = saved


@dataclass
class Retention:
    label: str
    deleted: int = 0
    seconds: float = 0.0
    jobs: int = 0  # jobs the worker finished meanwhile

    @property
    def rate(self) -> float:
        return self.deleted / self.seconds if self.seconds else 0.0


def retention_phase(args: argparse.Namespace, dbs: Databases) -> list[Retention]:
    """The cleanup's deletes beside a busy worker: before (Django's delete) and now, interleaved;
    each slice deletes at most an eighth of the history (the other deleter's share is left)."""
    import datetime as dt

    from jobs.engine import store

    dbs.use("history")
    cap = max(1, args.history // 8)
    batch = min(1000, cap)
    feeder = Feeder(args.backlog)
    cutoff = db_now() - dt.timedelta(days=7)
    first = next_id()
    results = {"before": Retention("Django delete() of 1,000 rows a batch (before)"),
               "now": Retention("delete_finished_from, 1,000 a batch (now)")}
    feeder.start()
    try:
        time.sleep(1)
        slice_ = max(1.0, args.retention_seconds / 3)
        for _ in range(3):
            for key in ("before", "now"):
                result = results[key]
                t0, began, after = db_now(), time.perf_counter(), store.EPOCH
                deleted = 0
                while time.perf_counter() - began < slice_ and deleted < cap:
                    if key == "before":
                        n = store.delete_finished(cutoff, batch)
                    else:
                        n, last = store.delete_finished_from(cutoff, after, batch)
                        after = last or after
                    if not n:
                        break
                    deleted += n
                result.deleted += deleted
                result.seconds += time.perf_counter() - began
                result.jobs += finished_between(first, t0, db_now())
    finally:
        feeder.stop()
    for result in results.values():
        say(f"  {result.label}: {result.deleted:,} rows in {result.seconds:.1f}s, {result.rate:,.0f} rows/s; "
            f"the worker meanwhile {result.jobs / max(result.seconds, 1e-9):,.0f} jobs/s")
    return list(results.values())


class BareFeeder(threading.Thread):
    """Keeps `backlog` no-op tasks waiting for a bare Celery worker beside Conveyor's: its rate over
    the same windows is the machine's load, not PostgreSQL's (bare Celery never touches it)."""

    def __init__(self, backlog: int) -> None:
        super().__init__(daemon=True)
        self.backlog, self.stopping, self.error = backlog, threading.Event(), None

    def run(self) -> None:
        from bench import bare

        try:
            while not self.stopping.is_set():
                if queue_length(bare.QUEUE_DEFAULTS) < self.backlog:
                    for _ in range(100):
                        bare.noop_defaults.apply_async(queue=bare.QUEUE_DEFAULTS, routing_key=bare.QUEUE_DEFAULTS)
                else:
                    time.sleep(0.05)
        except Exception as exc:  # reported by stop()
            self.error = exc

    def stop(self) -> None:
        self.stopping.set()
        self.join(30)
        if self.error:
            raise BenchError(f"the bare feeder failed: {self.error!r}")


def bare_done() -> int:
    from bench import bare

    return int(redis_client().get(bare.DONE_KEY) or 0)


# What PostgreSQL's backends of this database are doing, sampled: a wait event, or CPU.
ACTIVITY_SQL = """
SELECT COALESCE(wait_event_type || ':' || wait_event, 'CPU') || ' ' || left(regexp_replace(query, '\\s+', ' ', 'g'), 40)
  FROM pg_stat_activity
 WHERE state = 'active' AND datname = current_database() AND pid <> pg_backend_pid()
"""


@dataclass
class Part:
    label: str
    seconds: float
    jobs: int
    claims: list[float]
    relay: list[float]
    dead: int
    live: int
    bare: float = 0.0  # bare Celery's tasks/s over the same window
    activity: dict[str, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.jobs / self.seconds


def hold_phase(args: argparse.Namespace, dbs: Databases, side: str) -> list[Part]:
    """Before, during and after a transaction held open for --hold seconds, beside a busy worker
    (and a busy bare Celery worker: the machine's load over the same windows)."""
    from collections import Counter

    dbs.use(side)
    feeder, bare_feeder = Feeder(args.backlog), BareFeeder(args.backlog)
    first = next_id()
    parts: list[Part] = []
    feeder.start()
    bare_feeder.start()
    holder = None
    try:
        time.sleep(min(5.0, args.window / 4))  # the workers at speed

        def part(label: str, seconds: float) -> None:
            claims: list[float] = []
            relay: list[float] = []
            activity: Counter[str] = Counter()
            t0, began, bare0 = db_now(), time.perf_counter(), bare_done()
            while time.perf_counter() - began < seconds:
                tick = time.perf_counter()
                claims += claim_latencies(5)
                relay.append(relay_scan_ms())
                activity.update(row[0] for row in sql(ACTIVITY_SQL))
                time.sleep(max(0.0, 1.0 - (time.perf_counter() - tick)))
            t1, bare_rate = db_now(), (bare_done() - bare0) / (time.perf_counter() - began)
            dead, live = dead_tuples()
            p = Part(label, (t1 - t0).total_seconds(), finished_between(first, t0, t1), claims, relay, dead, live,
                     bare_rate, dict(activity))
            parts.append(p)
            top = ", ".join(f"{name} {count}" for name, count in activity.most_common(4))
            say(f"  {label}: {p.rate:,.0f} jobs/s (bare Celery {bare_rate:,.0f}/s), claim p50 {percentile(claims, 0.5):.2f} ms p99 "
                f"{percentile(claims, 0.99):.2f} ms, relay {statistics.median(relay):.2f} ms, dead tuples {dead:,}; "
                f"PostgreSQL busy with (samples): {top or 'nothing'}")

        part("before", args.window)
        holder = open_transaction(dbs, side)
        part(f"during ({args.hold:g}s transaction open)", args.hold)
        holder.rollback()
        holder.close()
        holder = None
        part("after (committed)", args.window)
    finally:
        if holder is not None:
            holder.close()
        feeder.stop()
        bare_feeder.stop()
    return parts


def open_transaction(dbs: Databases, side: str) -> Any:
    """A connection to `side`'s database in a REPEATABLE READ transaction that has taken its
    snapshot and a transaction id: vacuum may not remove any row version it could still see."""
    import psycopg
    from django.db import connection

    params = connection.get_connection_params()
    kept = {k: v for k, v in params.items() if k in ("host", "port", "user", "password")}
    holder = psycopg.connect(**kept, dbname=dbs.names[side])
    holder.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
    holder.execute("SELECT txid_current(), count(*) FROM jobs_pause")
    return holder


# --- Report ---------------------------------------------------------------------------------------


def ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}x" if base else "-"


def report(args: argparse.Namespace, results: dict[str, Any], machine: str) -> str:
    lines = [
        f"bench.history: {machine}; load average {results['load']} at the start, {load_average()} at the end;",
        f"  taken under load on a shared machine: compare inside the run. History: {args.history:,} finished + "
        f"{args.pending:,} pending rows (filled in {results.get('fill', 0):.0f}s); {args.rounds} round(s) of "
        f"{args.jobs:,} jobs, {args.concurrency} worker process(es).",
        "",
    ]
    sides = results["history"]
    empty = sides["empty"]
    label = f"{args.history:,} finished + {args.pending:,} pending"
    rows = [("bare Celery (defaults), no-op tasks", f"{statistics.median(sides['bare'].rates):,.0f}", "-", "-", "-", "-", "")]
    for key, name in (("empty", "Conveyor, empty table"), ("history", f"Conveyor, {label}")):
        side = sides[key]
        rate, p50, p99 = statistics.median(side.rates), percentile(side.claims, 0.5), percentile(side.claims, 0.99)
        rows.append((
            name, f"{rate:,.0f}", ratio(rate, statistics.median(empty.rates)), f"{p50:.2f}", f"{p99:.2f}",
            f"{statistics.median(side.relay):.2f}", "",
        ))
    lines += table(("history size", "jobs/s", "x empty", "claim p50 ms", "claim p99 ms", "relay scan ms", ""), rows)
    history, base = sides["history"], empty
    verdicts = [
        ("throughput within 10% of an empty table", ratio(statistics.median(history.rates), statistics.median(base.rates)),
         statistics.median(history.rates) >= 0.9 * statistics.median(base.rates)),
        ("claim p50 within 10% of an empty table", ratio(percentile(history.claims, 0.5), percentile(base.claims, 0.5)),
         percentile(history.claims, 0.5) <= 1.1 * percentile(base.claims, 0.5)),
    ]
    if results.get("retention"):
        lines += ["", *table(
            ("retention (beside a busy worker)", "rows deleted/s", f"x {args.rate:,}/s", "worker jobs/s", ""),
            [(r.label, f"{r.rate:,.0f}", ratio(r.rate, args.rate), f"{r.jobs / max(r.seconds, 1e-9):,.0f}", "")
             for r in results["retention"]],
        )]
        now = results["retention"][-1]
        verdicts.append((f"retention keeps up with {args.rate:,} jobs/s", f"{now.rate:,.0f} rows/s", now.rate >= args.rate))
    if results.get("hold"):
        parts = results["hold"]
        before = parts[0]
        lines += ["", *table(
            ("vacuum held back", "jobs/s", "x before", "bare Celery/s", "bare x before", "claim p50 ms", "claim p99 ms",
             "relay scan ms", "dead tuples", ""),
            [(p.label, f"{p.rate:,.0f}", ratio(p.rate, before.rate), f"{p.bare:,.0f}", ratio(p.bare, before.bare),
              f"{percentile(p.claims, 0.5):.2f}", f"{percentile(p.claims, 0.99):.2f}", f"{statistics.median(p.relay):.2f}",
              f"{p.dead:,}", "") for p in parts],
        )]
        lines += ["", "  (bare Celery beside it never touches PostgreSQL: its rate is the machine's load over the same window)"]

        def held(p: Part) -> float:  # Conveyor's rate against before, over the machine's (bare Celery's)
            return (p.rate / before.rate) / (p.bare / before.bare) if before.rate and before.bare and p.bare else 0.0

        during, after = parts[1], parts[2]
        verdicts.append(("throughput loss under 10% while vacuum is held back (x before, over bare's)",
                         f"{during.rate / before.rate if before.rate else 0:.2f}x ({held(during):.2f}x)", held(during) >= 0.9))
        verdicts.append(("recovers at once (after within 10% of before, over bare's)",
                         f"{after.rate / before.rate if before.rate else 0:.2f}x ({held(after):.2f}x)", held(after) >= 0.9))
    lines += ["", *table(("target (issue 29)", "measured", ""), [(name, value, "met" if ok else "MISSED") for name, value, ok in verdicts])]
    return "\n".join(lines)


# --- Main -----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"python -m {PROG}", description=__doc__.split("\n\n")[0])
    parser.add_argument("--history", type=int, default=10_000_000, help="finished jobs in the history table (default 10,000,000)")
    parser.add_argument("--pending", type=int, default=1_000_000, help="pending (delayed) jobs in it (default 1,000,000)")
    parser.add_argument("--fill-batch", type=int, default=1_000_000, help="rows per INSERT of the fill (default 1,000,000)")
    parser.add_argument("--jobs", type=int, default=3000, help="jobs per throughput run (default 3000)")
    parser.add_argument("--warmup", type=int, default=100, help="untimed jobs before each run (default 100)")
    parser.add_argument("--claims", type=int, default=300, help="timed claims per round and side (default 300)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--concurrency", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--pool", default="prefork", choices=("prefork", "threads", "solo"))
    parser.add_argument("--backlog", type=int, default=500, help="due rows the feeder keeps waiting (default 500)")
    parser.add_argument("--rate", type=int, default=1000, help="new jobs/s retention must keep up with (default 1000)")
    parser.add_argument("--retention-seconds", type=float, default=60.0, help="seconds of deletes per deleter (default 60; 0 skips)")
    parser.add_argument("--hold", type=float, default=600.0, help="seconds the transaction stays open (default 600; 0 skips)")
    parser.add_argument("--window", type=float, default=60.0, help="seconds measured before and after it (default 60)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds a throughput run may take (default 120 + jobs/10)")
    args = parser.parse_args(argv)
    for name in ("jobs", "rounds", "concurrency", "claims", "fill_batch", "warmup"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("history", "pending", "retention_seconds", "hold"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must not be negative")
    if args.window <= 0:
        parser.error("--window must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def body(procs: Procs) -> str:
        from bench import bare

        bare.configure(bare_config())
        bare.defaults_app.conf.update(bare_defaults_config())
        redis_client().delete(*bare.KEYS)
        results: dict[str, Any] = {"load": load_average()}
        machine = context()
        dbs = Databases()
        try:
            dbs.create()
            dbs.use("history")
            say(f"filling: {args.history:,} finished + {args.pending:,} pending ...")
            results["fill"] = fill(args.history, args.pending, args.fill_batch)
            # One bare Celery worker for the whole run: the base of the rounds, the machine's load
            # beside the held transaction.
            (bare_worker,) = start_bare_workers(procs, args, defaults=True, **{"bare-defaults": bare.QUEUE_DEFAULTS})
            say("history: rounds, empty and history databases interleaved ...")
            # The last round's history worker runs on into the next phases (one worker for both).
            results["history"] = history_phase(procs, args, dbs, bare_worker, keep=bool(args.retention_seconds or args.hold))
            side = "history"
            if args.retention_seconds and args.history:
                say("retention: the cleanup's deletes beside a busy worker ...")
                results["retention"] = retention_phase(args, dbs)
            if args.hold:
                say(f"vacuum held back: a transaction open for {args.hold:g}s beside a busy worker ...")
                results["hold"] = hold_phase(args, dbs, side)
            return report(args, results, machine)
        finally:
            procs.stop(*procs.procs, grace=3.0)  # what is measured is over: no drain needed
            dbs.drop()

    return session(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
