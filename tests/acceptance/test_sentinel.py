"""REDIS_URL in the `sentinel://` form on real servers (issue 15): Debian's redis-server as a
master and a replica, two redis-sentinel processes watching them, all on 127.0.0.1 at free ports
in a temporary folder, started here with subprocess and stopped by their pids.

kombu#582 (project/broker.py): a broker connection lost with a message unacked closes without
raising, on a Redis server of its own killed under it; and a threads-pool worker with a job
running across a failover lives through it (the same process runs the next job).

A real worker (`manage.py start`, WORKER_MODE=worker) with REDIS_URL=sentinel://... runs a job
published through the broker; the master is then SIGKILLed, Sentinel promotes the replica, and a
job published after the failover runs in the same worker (kombu asked the sentinels for the new
master). Django's cache, the readiness check, the metrics' client and the beat lock's client reach
the new master too, and so do a cache and a redis-py client that lived through the failover.
The master and the sentinels ask for passwords (different ones), and the database is not 0.
"""
from __future__ import annotations

import json
import logging
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import pytest
import redis
from kombu import Consumer, Exchange, Producer, Queue

from examples.models import Effect
from jobs.models import Job, Status
from project import connections
from tests.support import MANAGE, ROOT, debian_tool, free_port, wait_for, wait_job

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True, databases="__all__"), pytest.mark.timeout(180)]

MASTER_NAME = "mymaster"
PASSWORD = "m@ster pw/" + secrets.token_hex(4)  # the master's (and after a failover the replica's), escaped in the URL
SENTINEL_PASSWORD = "sentinel-" + secrets.token_hex(4)
DB = 2

# One process of Conveyor's own, as every entry point is: a job published through the broker,
# Django's cache, /health/ready, the metrics' client and the beat lock's (project.services).
PROBE = """
import json, os
from django.core.cache import cache
from django.test import Client
from jobs import Step, new_job
from jobs.engine import store, telemetry
from jobs.engine.publish import Message, publish
from project.services import redis_client
kind = json.loads(os.environ.get("PROBE_JOB") or '{"type": "examples.count", "input": {}}')
[job] = store.insert([new_job(Step(kind["type"], kind["input"]))])
sent = publish([Message(job.pk, job.queue, job.priority, job.type)])
cache.set("sentinel-probe", os.environ["PROBE_TOKEN"], 300)
lock = redis_client().lock("sentinel-probe-lock", timeout=5)
locked = lock.acquire(blocking=False)
lock.release()
ready = Client().get("/health/ready")
print("PROBE", json.dumps({
    "job": job.pk, "sent": sent, "cache": cache.get("sentinel-probe"), "key": cache.make_key("sentinel-probe"),
    "master": list(cache._cache._get_connection_pool(write=True).get_master_address()),
    "ready": [ready.status_code, ready.json()], "telemetry": telemetry.client().ping(), "locked": locked,
}))
"""


@dataclass
class SentinelCluster:
    """A Redis master, its replica and two sentinels, each a process of ours (stopped by pid)."""

    folder: Path
    server: str
    sentinel: str
    master_port: int = field(default_factory=free_port)
    replica_port: int = field(default_factory=free_port)
    sentinel_ports: tuple[int, int] = field(default_factory=lambda: (free_port(), free_port()))
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def url(self) -> str:
        first, second = self.sentinel_ports
        return (f"sentinel://:{quote(PASSWORD, safe='')}@127.0.0.1:{first};sentinel://127.0.0.1:{second}/{DB}"
                f"?master_name={MASTER_NAME}&sentinel_password={SENTINEL_PASSWORD}")

    def _spawn(self, name: str, argv: list[str]) -> None:
        with open(self.folder / f"{name}.log", "wb") as out:
            self.procs[name] = subprocess.Popen(argv, cwd=self.folder, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def _redis(self, name: str, port: int, *extra: str) -> None:
        folder = self.folder / name
        folder.mkdir()
        self._spawn(name, [self.server, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder), "--save", "",
                           "--appendonly", "no", "--daemonize", "no", "--requirepass", PASSWORD, "--masterauth", PASSWORD, *extra])

    def start(self) -> None:
        self._redis("master", self.master_port)
        self._redis("replica", self.replica_port, "--replicaof", "127.0.0.1", str(self.master_port))
        for number, port in enumerate(self.sentinel_ports, start=1):
            config = self.folder / f"sentinel-{number}.conf"  # Sentinel rewrites it: a file of its own
            config.write_text("\n".join([
                f"port {port}", "bind 127.0.0.1", "daemonize no", f"dir {self.folder}",
                f"requirepass {SENTINEL_PASSWORD}", f"sentinel sentinel-pass {SENTINEL_PASSWORD}",
                f"sentinel monitor {MASTER_NAME} 127.0.0.1 {self.master_port} 1",
                f'sentinel auth-pass {MASTER_NAME} "{PASSWORD}"',
                f"sentinel down-after-milliseconds {MASTER_NAME} 1000",
                f"sentinel failover-timeout {MASTER_NAME} 5000", "",
            ]))
            self._spawn(f"sentinel-{number}", [self.sentinel, str(config)])

    def alive(self) -> None:
        for name, process in self.procs.items():
            if process.poll() is not None and name != "master":
                raise AssertionError(f"{name} exited with {process.returncode}:\n{self.log(name)}")

    def log(self, name: str) -> str:
        path = self.folder / f"{name}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def node(self, port: int) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=port, password=PASSWORD, db=DB, socket_timeout=2, socket_connect_timeout=2)

    def ask(self, number: int, *command: str) -> object:
        client = redis.Redis(host="127.0.0.1", port=self.sentinel_ports[number], password=SENTINEL_PASSWORD,
                             socket_timeout=2, socket_connect_timeout=2, decode_responses=True)
        try:
            return client.execute_command(*command)
        finally:
            client.close()

    def master_port_said(self) -> set[int | None]:
        """The master's port as each sentinel names it now."""
        said = set()
        for number in range(len(self.sentinel_ports)):
            try:
                address = self.ask(number, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME)
            except (redis.RedisError, OSError):
                address = None
            said.add(int(address[1]) if address else None)
        return said

    def ready(self) -> bool:
        """Every sentinel names the master, sees the replica in sync and knows the other sentinel."""
        self.alive()
        try:
            if self.node(self.replica_port).info("replication").get("master_link_status") != "up":
                return False
            for number in range(len(self.sentinel_ports)):
                replicas = self.ask(number, "SENTINEL", "REPLICAS", MASTER_NAME)
                others = self.ask(number, "SENTINEL", "SENTINELS", MASTER_NAME)
                if not replicas or len(others) != len(self.sentinel_ports) - 1:
                    return False
                if any("disconnected" in r.get("flags", "") or "s_down" in r.get("flags", "") for r in _records(replicas)):
                    return False
        except (redis.RedisError, OSError):
            return False
        return self.master_port_said() == {self.master_port}

    def kill(self, name: str) -> None:
        process = self.procs[name]
        process.send_signal(signal.SIGKILL)
        process.wait(10)

    def stop(self) -> None:
        for process in self.procs.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.procs.values():
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.send_signal(signal.SIGKILL)
                process.wait(10)


def _records(reply: object) -> list[dict]:
    """SENTINEL REPLICAS answers a list of flat [key, value, ...] lists (RESP2), or of dicts."""
    records = []
    for item in reply or []:
        records.append(item if isinstance(item, dict) else dict(zip(item[::2], item[1::2])))
    return records


@pytest.fixture
def sentinels():
    try:
        server = debian_tool("redis-server", "redis-server")
        sentinel = debian_tool("redis-sentinel", "redis-sentinel")
    except AssertionError as exc:  # apt-get ran and failed (no network, no such package)
        pytest.skip(f"redis-server / redis-sentinel cannot be installed here: {' '.join(str(exc).split())[:300]}")
    cluster = SentinelCluster(Path(tempfile.mkdtemp(prefix="cv-sentinel-")), server, sentinel)
    try:
        cluster.start()
        wait_for(cluster.ready, 30, interval=0.2, what="the master, its replica and two sentinels to know each other")
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(cluster.folder, ignore_errors=True)


def probe(live, url: str, token: str, job: dict | None = None) -> dict:
    """PROBE in a process of its own with REDIS_URL=url (as every entry point reads it); it
    publishes one `job` ({"type", "input"}; examples.count by default)."""
    env = live.env(REDIS_URL=url, PROBE_TOKEN=token, PROBE_JOB=json.dumps(job) if job else "")
    done = subprocess.run([sys.executable, MANAGE, "shell", "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    line = next(line for line in done.stdout.splitlines() if line.startswith("PROBE "))
    return json.loads(line[len("PROBE "):])


def test_a_worker_on_sentinel_runs_jobs_before_and_after_the_master_fails_over(sentinels, live):
    url = sentinels.url()
    # given a long-lived Django cache and redis-py client on the sentinel:// URL (a server's, say)
    from django.core.cache.backends.redis import RedisCache

    settings = connections.cache_settings(url)
    cache = RedisCache(settings["LOCATION"], {"OPTIONS": settings["OPTIONS"]})
    client = connections.redis_client(url, socket_timeout=2, socket_connect_timeout=2)
    cache.set("lived-through", "before", 300)
    assert client.get(cache.make_key("lived-through")) is not None
    assert client.connection_pool.get_master_address() == ("127.0.0.1", sentinels.master_port)

    # and a worker whose REDIS_URL names the sentinels
    worker = live.start("--concurrency", "1", mode="worker", name="sentinel-worker", env={"REDIS_URL": url})

    # when a job is published through the broker, it runs on that worker
    before = probe(live, url, "before")
    assert before["sent"] == 1, before
    assert before["master"] == ["127.0.0.1", sentinels.master_port]
    assert before["cache"] == "before" and before["locked"] is True and before["telemetry"] is True
    assert before["ready"] == [200, {"status": "ok", "postgres": "ok", "redis": "ok"}]
    first = wait_job(before["job"], Status.SUCCEEDED, 30)
    assert first.worker.startswith("sentinel-worker@test"), first.worker
    # and the broker's queues are on the master, in the URL's database
    assert sentinels.node(sentinels.master_port).exists("_kombu.binding.default")

    # when the master dies and the sentinels promote its replica
    sentinels.kill("master")
    killed_at = time.monotonic()
    wait_for(lambda: sentinels.master_port_said() == {sentinels.replica_port}, 40, interval=0.2,
             what="both sentinels to name the replica as the master")
    wait_for(lambda: sentinels.node(sentinels.replica_port).info("replication")["role"] == "master", 10,
             what="the replica to be a master")
    failover = time.monotonic() - killed_at

    # then a job published after the failover runs in the same worker process
    after = probe(live, url, "after")
    assert after["sent"] == 1, after
    assert after["master"] == ["127.0.0.1", sentinels.replica_port]
    second = wait_job(after["job"], Status.SUCCEEDED, 45)
    assert worker.alive(), worker.log()[-4000:]
    assert second.worker == first.worker, (first.worker, second.worker)  # node name and pid
    assert Effect.objects.filter(job_id__in=[first.pk, second.pk]).count() == 2
    # (it lost the broker with the master, and connected again to the master the sentinels named)
    log = worker.log()
    assert "Connection to broker lost" in log and log.count("Connected to sentinel://") >= 2, f"failover {failover:.1f}s\n{log[-6000:]}"

    # and Django's cache, /health/ready, the metrics and the beat lock use the new master
    assert after["cache"] == "after" and after["locked"] is True and after["telemetry"] is True
    assert after["ready"] == [200, {"status": "ok", "postgres": "ok", "redis": "ok"}]
    new_master = sentinels.node(sentinels.replica_port)
    assert new_master.exists(after["key"])

    # and so do the cache and the client that lived through the failover (they asked the sentinels again)
    cache.set("lived-through", "after", 300)
    assert cache.get("lived-through") == "after"
    assert client.set("lived-through-client", "after")
    assert client.connection_pool.get_master_address() == ("127.0.0.1", sentinels.replica_port)
    assert new_master.get("lived-through-client") == b"after"
    assert Job.objects.filter(status=Status.SUCCEEDED, pk__in=[first.pk, second.pk]).count() == 2


def test_a_threads_worker_lives_through_a_failover_with_a_job_running(sentinels, live):
    """kombu#582's path in a threads pool: a job that was running when the master died ends
    after the worker's broker connection was closed, on the old channel. Its ack (and the
    channel's restore of its unacked messages) must not end the worker: the same process runs
    the next job, and nothing restarts it."""
    url = sentinels.url()
    # given a threads-pool worker on the sentinel:// URL, which ran a job
    worker = live.start("--pool", "threads", "--concurrency", "2", mode="worker", name="sentinel-threads",
                        env={"REDIS_URL": url})
    first = wait_job(probe(live, url, "before")["job"], Status.SUCCEEDED, 30)
    # and runs a job across the failover
    sleeper = probe(live, url, "sleeper", {"type": "examples.sleep", "input": {"seconds": 6}})["job"]
    wait_for(lambda: Job.objects.filter(pk=sleeper, status=Status.RUNNING).exists(), 30, what="the sleeper to run")

    # when the master dies and the sentinels promote its replica
    sentinels.kill("master")
    wait_for(lambda: sentinels.master_port_said() == {sentinels.replica_port}, 40, interval=0.2,
             what="both sentinels to name the replica as the master")

    # then the job that was running succeeds, and a job published after the failover runs in the
    # same worker process (its pid is in the row's worker)
    slept = wait_job(sleeper, Status.SUCCEEDED, 45)
    second = wait_job(probe(live, url, "after")["job"], Status.SUCCEEDED, 45)
    # (the supervisor restarted nothing: the worker never crashed)
    log = worker.log()
    assert worker.alive(), log[-4000:]
    assert "Unrecoverable error" not in log and "restarted" not in log, log[-8000:]
    assert "unacked message(s) not restored now (kombu#582)" in log, log[-8000:]  # the path was taken
    assert (slept.worker, second.worker) == (first.worker, first.worker), (first.worker, slept.worker, second.worker)


@pytest.fixture
def lone_redis():
    """A Redis server of our own on 127.0.0.1 (Debian's redis-server), to kill; stopped by its pid."""
    try:
        server = debian_tool("redis-server", "redis-server")
    except AssertionError as exc:
        pytest.skip(f"redis-server cannot be installed here: {' '.join(str(exc).split())[:300]}")
    folder, port = Path(tempfile.mkdtemp(prefix="cv-redis-")), free_port()
    process = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder), "--save", "",
                                "--appendonly", "no", "--daemonize", "no"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2, socket_connect_timeout=2)
    try:
        wait_for(lambda: _pings(client), 20, interval=0.1, what="the Redis server to answer")
        yield port, process
    finally:
        client.close()
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
        process.wait(10)
        shutil.rmtree(folder, ignore_errors=True)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False


def test_a_broker_connection_lost_with_a_message_unacked_closes_and_acks_without_raising(lone_redis, caplog):
    """kombu#582, narrowly: Celery's consumer, when the broker goes away, collects the connection
    (the transport forgets its client) and then closes it; closing the channel restores its unacked
    messages, and kombu built a client from the forgotten one: AttributeError, no connection error,
    so the worker died. The ack of a job that ends afterwards took the same path."""
    from project.celery import app

    port, server = lone_redis
    # given a worker's broker connection (the app's, so the transport the app installs) consuming
    # a queue and a broadcast queue (auto-deleted with its channel, as Celery's remote control's),
    # with one message delivered and not acked (a job running)
    conn = app.connection_for_read(f"redis://127.0.0.1:{port}/0")
    channel = conn.default_channel
    queue = Queue("kombu-582", Exchange("kombu-582"), "kombu-582")
    broadcast = Queue("kombu-582-broadcast", Exchange("kombu-582-broadcast", type="fanout"), auto_delete=True)
    Producer(channel).publish({"job": 1}, exchange=queue.exchange, routing_key="kombu-582", declare=[queue])
    delivered: list = []
    Consumer(channel, [queue, broadcast], callbacks=[lambda body, message: delivered.append(message)], accept=["json"]).consume()
    conn.drain_events(timeout=5)
    assert len(delivered) == 1 and len(channel.qos._delivered) == 1
    try:  # and the consumer polls on (BRPOP and the broadcast's SUBSCRIBE in flight)
        conn.drain_events(timeout=0.2)
    except socket.timeout:
        pass

    # when the server dies, and the consumer does what Celery's does on a lost connection
    # (celery.worker.consumer: on_connection_error_after_connected): collect, then close
    server.send_signal(signal.SIGKILL)
    server.wait(10)
    with caplog.at_level(logging.WARNING, logger="conveyor.broker"):
        conn.collect(socket_timeout=1)
        conn.close()
        # and the job running then ends: its message is acked on the closed channel
        delivered[0].ack()

    # then nothing raised (the channel's first close, in collect, failed deleting the broadcast
    # queue; the second restored nothing), the channel holds nothing, and the log says so
    assert channel.closed and not channel.qos._delivered
    assert any("1 unacked message(s) not restored now (kombu#582)" in r.getMessage() for r in caplog.records), caplog.text
