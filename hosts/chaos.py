"""The chaos run: chains and keyed events across hosts while processes, PostgreSQL, the Redis
master, a host's network and the active beat fail; then the ledger is read.

Topology (hosts/harness.py): a data host (PostgreSQL; Redis master, replica and two
sentinels), a server host (`manage.py start`, WORKER_MODE=server: gunicorn), worker host w1
(queue `images`, prefork) and worker host w2 (queue `notifications`, threads), a beat on each
worker host (one leads). Chains `chaos.cpu -> chaos.io -> chaos.cpu` and `chaos.order` events
(keyed, sequence numbers per key) go in over HTTP to the server host, from the root namespace.

Faults, at times printed in the summary: worker processes SIGKILLed at random (a pool process or
a Celery worker's main process on w1 or w2), PostgreSQL restarted once (fast shutdown), the Redis
master SIGKILLed once (Sentinel promotes the replica), w1 cut off the network (its veth down) for
`cut_seconds` while two slow jobs put at the head of its queue run there, past their write
(their leases lapse, w2's recovery loop reaps them, they run again when w1 is back, and w1's late
outcomes are refused by attempt fencing), and the beat that leads SIGKILLed (the standby takes
over).

Beside them, lone jobs of the atomic types (`chaos.atomic` on w1, `chaos.atomic_io` on w2): each
writes its effect, then works with its transaction open; and as many of their non-atomic twins
(`chaos.plain`, `chaos.plain_io`: the same handler). w1's two slow jobs are such twins, one of
each: cut off after their write, reaped and run again, the plain one writes twice, the atomic
one once. Before each kill such a pair is put to run on the host about to lose a process, past
its write: the kill meets it, or misses it (a random process of the host dies).

Then, once every chain and delivery has ended (the drain), the summary counts from the rows:
lost (a chain or delivery not succeeded, a succeeded job without its effects), run twice (an
effect written twice: the same attempt run twice, or an outcome recorded twice), left running,
keyed events out of order; and, allowed and shown: jobs run again after a fault (at least once).
For the atomic jobs: how many had a run repeated after a fault, and their effects written twice,
which must be 0 (exactly once); beside them the same for their non-atomic twins, whose effects
written twice are allowed (at least once) and left out of "run twice".
"""
from __future__ import annotations

import json
import random
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from hosts.harness import HTTP_PORT, Proc, Topology
from hosts.otlp import Received, Receiver

EMAIL = "chaos@example.com"
PASSWORD = "chaos-password-" + str(int(time.time()))
ATOMIC_TYPES = ("chaos.atomic", "chaos.atomic_io")
PLAIN_TYPES = ("chaos.plain", "chaos.plain_io")  # their non-atomic twins
TYPES = ("chaos.cpu", "chaos.io", *ATOMIC_TYPES, *PLAIN_TYPES)
DELIVERY = "deliver:chaos.audit"


@dataclass
class Plan:
    chains: int = 2000
    events: int = 500
    keys: int = 50
    #: Lone jobs of the atomic types, half on each worker host; as many of their non-atomic twins.
    atomic: int = 500
    #: Seconds an atomic job (and its twin) sleeps after its write, its transaction open.
    atomic_sleep: float = 0.1
    kills: int = 8
    cut_seconds: float = 10.0
    #: Seconds between one fault and the next.
    spacing: float = 5.0
    cpu_work: int = 20_000
    io_sleep: float = 0.02
    w1_concurrency: int = 2
    w2_concurrency: int = 8
    drain_timeout: float = 600.0
    seed: int = 15


@dataclass
class Fault:
    name: str
    at: float  # seconds since the load began
    detail: str = ""


@dataclass
class Run:
    plan: Plan
    faults: list[Fault] = field(default_factory=list)
    chain_ids: list[int] = field(default_factory=list)
    #: Lone jobs: the slow ones w1 runs when it is cut off.
    job_ids: list[int] = field(default_factory=list)
    #: Lone jobs of the atomic types (the slow atomic one is in job_ids).
    atomic_ids: list[int] = field(default_factory=list)
    plain_ids: list[int] = field(default_factory=list)
    #: The write-first pairs (plain, atomic) running on a worker host when a kill comes.
    kill_pair_ids: list[int] = field(default_factory=list)
    event_ids: list[int] = field(default_factory=list)
    http_retries: int = 0
    began: float = 0.0
    last_fault_end: float = 0.0
    beat_killed_at: float | None = None

    def now(self) -> float:
        return time.monotonic() - self.began


# --- HTTP, from the root namespace to the server host ------------------------------------------


class Client:
    def __init__(self, base: str, run: Run) -> None:
        self.base, self.run, self.token = base, run, ""
        self.lock = threading.Lock()

    def post(self, path: str, body: dict, timeout: float = 120) -> dict:
        """POST until a 2xx answer (a 5xx or a refused connection while PostgreSQL restarts is retried)."""
        deadline = time.monotonic() + timeout
        delay = 0.1
        while True:
            request = urllib.request.Request(self.base + path, data=json.dumps(body).encode(), method="POST",
                                             headers={"Content-Type": "application/json",
                                                      **({"Authorization": f"Bearer {self.token}"} if self.token else {})})
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    return json.loads(response.read())
            except urllib.error.HTTPError as exc:
                if exc.code < 500 and exc.code != 429:
                    raise RuntimeError(f"POST {path}: {exc.code} {exc.read()[:500]!r}") from None
                error: Exception = exc
            except OSError as exc:
                error = exc
            if time.monotonic() > deadline:
                raise RuntimeError(f"POST {path} kept failing for {timeout}s: {error}")
            with self.lock:
                self.run.http_retries += 1
            time.sleep(delay)
            delay = min(2.0, delay * 2)


def submit(client: Client, run: Run) -> None:
    """Every chain and event over HTTP, 8 at a time; a key's events one after another, in order."""
    plan = run.plan
    steps = [{"type": "chaos.cpu", "input": {"work": plan.cpu_work}}, {"type": "chaos.io", "input": {"sleep": plan.io_sleep}},
             {"type": "chaos.cpu", "input": {"work": plan.cpu_work}}]
    lock = threading.Lock()

    def chain(index: int) -> None:
        paced(index * chain_gap)
        made = client.post("/api/chains", {"steps": steps})
        with lock:
            run.chain_ids.append(made["id"])

    def atomic_job(index: int) -> None:
        paced(index * window / max(1, plan.atomic))
        made = client.post("/api/jobs", {"type": ATOMIC_TYPES[index % 2], "input": {"sleep": plan.atomic_sleep}})
        twin = client.post("/api/jobs", {"type": PLAIN_TYPES[index % 2], "input": {"sleep": plan.atomic_sleep}})
        with lock:
            run.atomic_ids.append(made["id"])
            run.plain_ids.append(twin["id"])

    def key_events(key: int, count: int) -> None:
        for seq in range(1, count + 1):
            paced((seq - 1) * window / count)
            made = client.post("/api/events", {"name": "chaos.order", "key": f"k{key}", "data": {"seq": seq}})
            with lock:
                run.event_ids.append(made["id"])

    # Paced over the faults' window, so that every fault meets work in flight.
    window = plan.spacing * timeline_length(plan) + plan.cut_seconds
    chain_gap = window / max(1, plan.chains)

    def paced(at: float) -> None:
        time.sleep(max(0.0, run.began + at - time.monotonic()))

    per_key = [plan.events // plan.keys + (1 if k < plan.events % plan.keys else 0) for k in range(plan.keys)]
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(key_events, k, n) for k, n in enumerate(per_key) if n]
        futures += [pool.submit(chain, i) for i in range(plan.chains)]
        futures += [pool.submit(atomic_job, i) for i in range(plan.atomic)]
        for future in futures:
            future.result()


# --- Faults ---------------------------------------------------------------------------------------


def worker_processes(proc: Proc) -> list[int]:
    """The Celery processes under a worker start (its main process and pool processes; not the supervisor)."""
    import psutil

    try:
        return [child.pid for child in psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def kill_random_worker(rng: random.Random, proc: Proc) -> str:
    """SIGKILL one of a worker host's Celery processes, chosen at random."""
    import psutil

    candidates = worker_processes(proc)
    if not candidates:
        return f"no worker process on {proc.host} to kill"
    pid = rng.choice(candidates)
    try:
        process = psutil.Process(pid)
        what = "pool process" if process.parent() and process.parent().pid != proc.pid else "worker main process"
        process.kill()
    except psutil.NoSuchProcess:
        return f"pid {pid} on {proc.host} already gone"
    return f"{what} pid {pid} on {proc.host}"


def leading_beat(beats: list[Proc]) -> Proc | None:
    """The live beat whose log says it took the leader lock and has not lost it since."""
    for beat in beats:
        if beat.alive():
            text = beat.log(10**7)
            if text.rfind("now the leader") > text.rfind("lost the leader lock"):
                return beat
    return None


def timeline_names(plan: Plan) -> list[str]:
    """The faults in order: a random kill before each of the others, the remaining kills after."""
    names: list[str] = []
    kills = plan.kills
    for name in ("pg", "redis", "cut", "beat"):
        if kills:
            names.append("kill")
            kills -= 1
        names.append(name)
    return names + ["kill"] * kills


def timeline_length(plan: Plan) -> int:
    return len(timeline_names(plan))


def slow_jobs_running(net: Topology, client: Client, into: list[int], count: int, seconds: float, timeout: float = 30,
                      host: str = "w1") -> int:
    """Put `count` slow jobs (a `seconds` sleep) at the head of a worker host's queue (priority 0)
    and wait until they run there, their write made: the fault that follows (w1's network cut, a
    kill) then catches them mid-run, after it. Twins, in turn: `chaos.plain` (its write committed
    at once: its run repeated after the fault writes again, at least once) and `chaos.atomic`
    (its write in its transaction, still open: written once); `_io` ones on w2. Returns how many
    run; their ids go `into` the list given (the run's `job_ids` for the cut, `kill_pair_ids`)."""
    suffix = "" if host == "w1" else "_io"
    types = [f"chaos.plain{suffix}", f"chaos.atomic{suffix}"]
    ids = [client.post("/api/jobs", {"type": types[i % 2], "input": {"sleep": seconds}, "priority": 0})["id"] for i in range(count)]
    into += ids
    plain = len(ids[::2])
    deadline = time.monotonic() + timeout
    running = 0
    while time.monotonic() < deadline:
        [(running, written)] = query(net, """SELECT count(*) FILTER (WHERE status = 'running'),
                                                    (SELECT count(*) FROM chaos_effect WHERE job_id = ANY(%s) AND effect = 'plain')
                                               FROM jobs_job WHERE id = ANY(%s)""", (ids, ids))
        if running == count and written == plain:
            time.sleep(0.2)  # the atomic ones wrote as soon (a statement each, right after the claim)
            break
        time.sleep(0.1)
    return running


def inject(net: Topology, client: Client, run: Run, workers: list[Proc], beats: list[Proc], log: Callable[[str], None]) -> None:
    """The faults, one every `spacing` seconds; random kills between the others."""
    plan = run.plan
    rng = random.Random(plan.seed)

    def note(name: str, at: float, detail: str) -> None:
        run.faults.append(Fault(name, round(at, 1), detail))
        log(f"chaos: t={at:5.1f}s {name}: {detail}")

    kills = iter(range(plan.kills))

    def kill() -> None:  # the worker hosts in turn, a random process of the host
        worker = workers[next(kills) % len(workers)]
        # a write-first pair running there, past its write, for the kill to meet (or miss)
        running = slow_jobs_running(net, client, run.kill_pair_ids, 2, seconds=1.0, timeout=10, host=worker.host)
        at = run.now()
        note("SIGKILL worker process", at, f"{kill_random_worker(rng, worker)} ({running} of a write-first pair running there)")

    def restart_pg() -> None:
        at = run.now()
        away = net.restart_postgres()
        note("PostgreSQL restarted", at, f"fast shutdown and start, away {away:.1f}s")

    def redis_failover() -> None:
        at = run.now()
        old = net.redis_master_address()
        net.redis_master.kill()
        began = time.monotonic()
        new = old
        while new == old and time.monotonic() - began < 60:
            time.sleep(0.2)
            try:
                new = net.redis_master_address()
            except RuntimeError:
                pass
        note("Redis master SIGKILLed", at, f"{old[0]}:{old[1]} -> Sentinel promoted {new[0]}:{new[1]} in {time.monotonic() - began:.1f}s")

    def cut() -> None:
        # They sleep past the moment the cut comes (finding them running and written takes up to a few
        # seconds on a loaded machine): a run that ended before the cut would never be reaped.
        slow = slow_jobs_running(net, client, run.job_ids, plan.w1_concurrency, seconds=min(5.0, plan.cut_seconds * 0.75))
        at = run.now()
        net.cut("w1")
        time.sleep(plan.cut_seconds)
        net.heal("w1")
        note("w1 cut off the network", at, f"veth {net.hosts['w1'].veth} down for {plan.cut_seconds:.0f}s, "
                                           f"{slow} slow job(s) running there")

    def kill_beat() -> None:
        at = run.now()
        leader = leading_beat(beats)
        if leader is None:
            note("active beat SIGKILLed", at, "no beat leads (nothing killed)")
            return
        leader.kill()
        note("active beat SIGKILLed", at, f"{leader.name} pid {leader.pid}")
        run.beat_killed_at = time.time()

    steps = {"kill": kill, "pg": restart_pg, "redis": redis_failover, "cut": cut, "beat": kill_beat}
    timeline = [steps[name] for name in timeline_names(plan)]
    for step in timeline:
        time.sleep(plan.spacing)
        step()
    run.last_fault_end = run.now()


# --- The ledger -------------------------------------------------------------------------------------


def query(net: Topology, sql: str, params: tuple = ()) -> list[tuple]:
    import psycopg

    with psycopg.connect(net.database_url(), connect_timeout=5) as conn:
        return conn.execute(sql, params).fetchall()


def drained(net: Topology, run: Run) -> bool:
    try:
        [(chains_open,)] = query(net, "SELECT count(*) FROM jobs_chain WHERE id = ANY(%s) AND status = 'running'", (run.chain_ids,))
        [(jobs_open,)] = query(net, "SELECT count(*) FROM jobs_job WHERE type = ANY(%s) AND status IN ('pending', 'running', 'failed')",
                               ([*TYPES, DELIVERY],))
        [(waiting,)] = query(net, "SELECT count(*) FROM subscribers_delivery WHERE event_id = ANY(%s) AND job_id IS NULL",
                             (run.event_ids,))
    except Exception:
        return False
    return chains_open == 0 and jobs_open == 0 and waiting == 0


def standby_ticked(net: Topology, run: Run) -> bool:
    """A beat tick's job made after the leading beat was killed (the standby took over)."""
    if run.beat_killed_at is None:
        return True
    try:
        [(ticks,)] = query(net, "SELECT count(*) FROM jobs_job WHERE type = 'chaos.tick' AND created_at > to_timestamp(%s)",
                           (run.beat_killed_at,))
    except Exception:
        return False
    return ticks > 0


def summarize(net: Topology, run: Run, workers: list[Proc]) -> dict[str, Any]:
    chains = dict(query(net, "SELECT status, count(*) FROM jobs_chain WHERE id = ANY(%s) GROUP BY status", (run.chain_ids,)))
    deliveries = dict(query(net, """SELECT coalesce(j.status, 'no job'), count(*) FROM subscribers_delivery d
                                     LEFT JOIN jobs_job j ON j.id = d.job_id WHERE d.event_id = ANY(%s) GROUP BY 1""",
                            (run.event_ids,)))
    [(steps_ok, no_run, no_done)] = query(net, """
        SELECT count(*),
               count(*) FILTER (WHERE NOT EXISTS (SELECT 1 FROM chaos_effect e WHERE e.job_id = j.id AND e.effect LIKE 'run:%%')),
               count(*) FILTER (WHERE NOT EXISTS (SELECT 1 FROM chaos_effect e WHERE e.job_id = j.id AND e.effect = 'done'
                                                  AND e.key = 'succeeded'))
        FROM jobs_job j WHERE j.chain_id = ANY(%s) AND j.status = 'succeeded'""", (run.chain_ids,))
    [(unseen,)] = query(net, """SELECT count(*) FROM subscribers_delivery d WHERE d.event_id = ANY(%s) AND NOT EXISTS
                                (SELECT 1 FROM chaos_effect e WHERE e.job_id = d.job_id AND e.effect LIKE 'seen:%%')""",
                        (run.event_ids,))
    [(lone_lost,)] = query(net, """SELECT count(*) FROM jobs_job j WHERE j.id = ANY(%s) AND (j.status <> 'succeeded'
                                   OR NOT EXISTS (SELECT 1 FROM chaos_effect e WHERE e.job_id = j.id AND e.effect = 'done'))""",
                           (run.job_ids,))
    slow_attempts = [attempt for (attempt,) in query(net, "SELECT attempt FROM jobs_job WHERE id = ANY(%s) ORDER BY id",
                                                      (run.job_ids,))]
    # The non-atomic twins' `plain` written twice is at least once at work, counted apart below.
    twice = query(net, "SELECT effect, count(*) FROM chaos_effect WHERE times > 1 AND effect <> 'plain' GROUP BY 1")
    atomic = write_first_counts(net, run.atomic_ids + run.job_ids + run.kill_pair_ids, ATOMIC_TYPES, "atomic")
    plain = write_first_counts(net, run.plain_ids + run.job_ids + run.kill_pair_ids, PLAIN_TYPES, "plain")
    [(running,)] = query(net, "SELECT count(*) FROM jobs_job WHERE status = 'running'")
    [(reruns,)] = query(net, """SELECT count(*) FROM (SELECT job_id FROM chaos_effect WHERE effect LIKE 'run:%%' OR effect LIKE 'seen:%%'
                                GROUP BY job_id HAVING count(*) > 1) x""")
    moved = query(net, """SELECT count(*) FROM (SELECT job_id FROM chaos_effect WHERE effect LIKE 'run:%%'
                           GROUP BY job_id HAVING count(DISTINCT host) > 1) x""")[0][0]
    # Keyed order: each key's runs, in the order their effects were written, must never go back.
    out_of_order = query(net, """SELECT count(*) FROM (SELECT seq, lag(seq) OVER (PARTITION BY key ORDER BY id) AS before
                                  FROM chaos_effect WHERE effect LIKE 'seen:%%') x WHERE seq < before""")[0][0]
    [(keys_seen,)] = query(net, "SELECT count(DISTINCT key) FROM chaos_effect WHERE effect LIKE 'seen:%%'")
    beat_killed = run.beat_killed_at
    ticks = query(net, """SELECT count(*), count(*) FILTER (WHERE created_at > to_timestamp(%s)),
                          count(*) FILTER (WHERE status = 'succeeded') FROM jobs_job WHERE type = 'chaos.tick'""",
                  (beat_killed or time.time(),))[0]
    # The runner's words for an outcome fenced off by its attempt ("... lost its lease before
    # completing" or "... before failing": the handler's own late database write may fail too).
    refused = sum(proc.log(10**8).count("lost its lease before") for proc in workers)
    reaped = sum(proc.log(10**8).count("lease expired, now pending") for proc in workers)
    lost = (sum(n for status, n in chains.items() if status != "succeeded") + (len(run.chain_ids) - sum(chains.values()))
            + sum(n for status, n in deliveries.items() if status != "succeeded") + no_run + no_done + unseen + lone_lost
            + atomic["atomic_lost"] + plain["plain_lost"])
    return {
        "chains": len(run.chain_ids), "chain_statuses": chains, "chain_jobs_succeeded": steps_ok, "slow_jobs": len(run.job_ids),
        "slow_job_attempts": slow_attempts,
        "events": len(run.event_ids), "keys": keys_seen, "delivery_statuses": deliveries,
        "lost": lost, "run_twice": sum(n for _, n in twice), "run_twice_by_effect": dict(twice),
        "left_running": running, "out_of_order": out_of_order,
        "rerun_after_fault": reruns, "ran_on_two_hosts": moved, "late_outcomes_refused": refused, "reaped": reaped,
        "beat_ticks": ticks[0], "beat_ticks_after_kill": ticks[1] if beat_killed else None,
        "http_retries": run.http_retries,
        **atomic, **plain,
    }


def traces(spans: list[Received], chain_ids: list[int]) -> dict[str, Any]:
    """The chains as OpenTelemetry saw them (the spans carrying `conveyor.chain.id`): how many
    chains have spans, how many of those are one trace (must be all: the context is in the rows,
    whatever fault a step met), and how many of those traces hold spans from the server host and
    both worker hosts (a span batched in a process that was SIGKILLed, or a host cut off past the
    exporter's retries, is lost: most, not all)."""
    wanted = set(chain_ids)
    by_chain: dict[int, list[Received]] = {}
    for span in spans:
        chain = span.attributes.get("conveyor.chain.id")
        if chain in wanted:
            by_chain.setdefault(chain, []).append(span)
    by_trace: dict[str, set[str]] = {}
    for span in spans:
        by_trace.setdefault(span.trace_id, set()).add(span.host)
    one_trace = [chain for chain, found in by_chain.items() if len({s.trace_id for s in found}) == 1]
    three_hosts = [chain for chain in one_trace if {"server", "w1", "w2"} <= by_trace[by_chain[chain][0].trace_id]]
    return {"spans": len(spans), "hosts": sorted({s.host for s in spans}), "chains_seen": len(by_chain),
            "chains_one_trace": len(one_trace), "chains_on_three_hosts": len(three_hosts),
            "names": sorted({s.name for s in spans if s.name.startswith("conveyor.")})}


def write_first_counts(net: Topology, ids: list[int], types: tuple[str, ...], effect: str) -> dict[str, Any]:
    """The ledger of the jobs that write first (`effect`: "atomic" for the atomic types, "plain"
    for their twins), as `<effect>_...`: their statuses; how many had a run repeated after a fault
    (attempt > 1); their effects written twice (0 for the atomic ones: exactly once); lost
    (succeeded without its effect, or an effect without its success)."""
    statuses = dict(query(net, "SELECT status, count(*) FROM jobs_job WHERE id = ANY(%s) AND type = ANY(%s) GROUP BY 1",
                          (ids, list(types))))
    [(repeated, twice, lost)] = query(net, """
        SELECT count(*) FILTER (WHERE j.attempt > 1),
               count(*) FILTER (WHERE e.times > 1),
               count(*) FILTER (WHERE (j.status = 'succeeded') <> (e.job_id IS NOT NULL))
          FROM jobs_job j LEFT JOIN chaos_effect e ON e.job_id = j.id AND e.effect = %s
         WHERE j.id = ANY(%s) AND j.type = ANY(%s)""", (effect, ids, list(types)))
    return {f"{effect}_jobs": sum(statuses.values()), f"{effect}_statuses": statuses, f"{effect}_repeated": repeated,
            f"{effect}_written_twice": twice, f"{effect}_lost": lost}


# --- The run ------------------------------------------------------------------------------------------


def chaos(plan: Plan, folder: Path, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Build the hosts, run the load and the faults, wait for the drain, read the ledger; tear down."""
    run = Run(plan)
    began = time.monotonic()
    with Topology.up(folder, log=log) as net, Receiver(net.ip(1)) as receiver:
        # Traced: every Conveyor process exports its spans over OTLP to the harness (the bridge's
        # address), each host naming itself; a chain's spans are read from there at the end.
        net.otlp_endpoint = receiver.endpoint
        net.start_data()
        net.release()
        server = net.start_server(wait=False)  # every process starts at once; then each is waited for
        w1 = net.start_worker("w1", "images", "prefork", plan.w1_concurrency)
        w2 = net.start_worker("w2", "notifications", "threads", plan.w2_concurrency)
        beats = [net.start_beat("w1"), net.start_beat("w2")]
        net.manage("server", "user", "--email", EMAIL, env={"CONVEYOR_USER_PASSWORD": PASSWORD})  # while they start
        # an API-only user holds only the permissions behind the scopes it uses (issue 22)
        net.manage("server", "grant", "--email", EMAIL, "--scope", "jobs:read jobs:write events:emit")
        net.wait_server(server)
        for worker in (w1, w2):
            net.wait_ready(worker)
        log(f"chaos: hosts ready in {time.monotonic() - began:.0f}s; {plan.chains} chains, {plan.events} keyed events "
            f"over {plan.keys} keys")
        client = Client(f"http://{net.hosts['server'].ip}:{HTTP_PORT}", run)
        client.token = client.post("/auth/token", {"email": EMAIL, "password": PASSWORD})["access_token"]
        run.began = time.monotonic()
        errors: list[BaseException] = []

        def guarded(target: Callable[[], None]) -> Callable[[], None]:
            def body() -> None:
                try:
                    target()
                except BaseException as exc:
                    errors.append(exc)
            return body

        threads = [threading.Thread(target=guarded(lambda: submit(client, run)), daemon=True),
                   threading.Thread(target=guarded(lambda: inject(net, client, run, [w1, w2], beats, log)), daemon=True)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(plan.drain_timeout + 600)
        if errors:
            raise errors[0]
        submitted = run.now()
        last_fault = run.last_fault_end
        log(f"chaos: load in and faults done at t={submitted:.1f}s (last fault ended at t={last_fault:.1f}s); draining")
        deadline = time.monotonic() + plan.drain_timeout
        while not drained(net, run):
            if time.monotonic() > deadline:
                log(f"chaos: not drained after {plan.drain_timeout:.0f}s")
                break
            time.sleep(0.5)
        drain = run.now() - last_fault
        # The standby beat takes the lock within CONVEYOR_BEAT_LOCK_SECONDS (+1 s) and fires.
        beat_deadline = time.monotonic() + 20
        while not standby_ticked(net, run) and time.monotonic() < beat_deadline:
            time.sleep(0.5)
        summary = summarize(net, run, [w1, w2])
        time.sleep(1.0)  # the processes' batched spans (sent every 200 ms)
        summary["trace"] = traces(receiver.spans(), run.chain_ids)
        summary.update({
            "faults": [asdict(fault) for fault in run.faults], "drain_seconds": round(drain, 1),
            "drained_at": round(last_fault + drain, 1),
            "load_seconds": round(submitted, 1), "total_seconds": round(run.now(), 1), "plan": asdict(plan),
            "server_alive": server.alive(),
        })
    return summary


def report(summary: dict[str, Any]) -> str:
    """The summary as text: what went in, each fault and when, then the counts that must be 0."""
    lines = [
        f"chaos run: {summary['chains']} three-step chains (cpu on w1 -> io on w2 -> cpu on w1), "
        f"{summary['atomic_jobs']} atomic jobs and {summary['plain_jobs']} non-atomic twins, "
        f"{summary['events']} keyed events over {summary['keys']} keys and {summary['slow_jobs']} slow jobs for w1 to be "
        f"running when it is cut off, in over HTTP; all in and every fault done at "
        f"t={summary['load_seconds']}s",
        "faults (t = seconds since the load began):",
        *[f"  t={fault['at']:6.1f}s  {fault['name']}: {fault['detail']}" for fault in summary["faults"]],
        f"chains: {summary['chain_statuses']}; chain jobs succeeded: {summary['chain_jobs_succeeded']}; "
        f"deliveries: {summary['delivery_statuses']}",
        f"lost: {summary['lost']}",
        f"run twice: {summary['run_twice']} (an effect written twice: one attempt run twice, or an outcome recorded twice)"
        + (f" {summary['run_twice_by_effect']}" if summary["run_twice"] else ""),
        f"left running: {summary['left_running']}",
        f"keyed events out of order: {summary['out_of_order']}",
        f"time to drain after the last fault: {summary['drain_seconds']}s (drained at t={summary['drained_at']}s, "
        f"{summary['drained_at'] - summary['load_seconds']:.1f}s after the last chain or event went in)",
        f"(allowed, at least once) jobs run again after a fault: {summary['rerun_after_fault']}; "
        f"leases lapsed and reaped: {summary['reaped']} (the slow jobs' attempts: {summary['slow_job_attempts']}); "
        f"late outcomes refused (attempt fencing): {summary['late_outcomes_refused']}; "
        f"HTTP requests retried: {summary['http_retries']}",
        f"beat: {summary['beat_ticks']} ticks, {summary['beat_ticks_after_kill']} after the leader was killed",
        f"traces (OTLP from every process): {summary['trace']['spans']} spans from {', '.join(summary['trace']['hosts'])}; "
        f"chains with spans: {summary['trace']['chains_seen']}, each one trace: {summary['trace']['chains_one_trace']}, "
        f"holding spans of the server and both worker hosts: {summary['trace']['chains_on_three_hosts']}",
        f"atomic jobs (atomic=True, write then work): {summary['atomic_jobs']} {summary['atomic_statuses']}; "
        f"runs repeated after a fault: {summary['atomic_repeated']}; effects written twice: "
        f"{summary['atomic_written_twice']} (exactly once); lost: {summary['atomic_lost']}",
        f"(allowed, at least once) their non-atomic twins (the same handler): {summary['plain_jobs']} "
        f"{summary['plain_statuses']}; runs repeated after a fault: {summary['plain_repeated']}; effects written twice: "
        f"{summary['plain_written_twice']}; lost: {summary['plain_lost']}",
    ]
    return "\n".join(lines)
